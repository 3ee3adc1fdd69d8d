//go:build linux

package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"socklab/internal/lab"
	"socklab/internal/labtest"
)

// Bad input is a usage error: exit 2, one line naming the flag with a hint, then the usage.
func TestBadArgumentsExitTwo(t *testing.T) {
	t.Parallel()
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"recv", "-group", "10.0.0.1"}, "not a multicast address"},
		{[]string{"send", "-group", "192.0.2.1"}, "not a multicast address"},
		{[]string{"recv", "-group", "ff02::1"}, "not an IPv4 address"},
		{[]string{"send", "-group", "all-hosts"}, "not an IPv4 address"},
		{[]string{"recv", "-group", "239.1.1.1:5000"}, "-group 239.1.1.1 -port 5000"},
		{[]string{"recv", "-port", "0"}, "out of range"},
		{[]string{"send", "-port", "70000"}, "out of range"},
		{[]string{"recv", "-iface", "nosuch0"}, "no such interface"},
		{[]string{"send", "-iface", "192.0.2.99"}, "no local interface has this address"},
		{[]string{"send", "-ttl", "256"}, "-ttl 256"},
		{[]string{"send", "-count", "0"}, "-count 0"},
		{[]string{"recv", "-port", "x"}, "invalid value"},
	}
	for _, c := range cases {
		stdout, stderr, code := labtest.RunProgram(t, nil, c.args...)
		assert.Equal(t, 2, code, "%v", c.args)
		assert.Empty(t, stdout, "%v: nothing is sent or joined", c.args)
		first, _, _ := strings.Cut(stderr, "\n")
		assert.Contains(t, first, c.want, "%v", c.args)
		assert.Contains(t, stderr, "usage:", "%v", c.args)
	}
}

// recvLines are the "recv: ..." lines of a receiver's output, in order.
func recvLines(out string) []string {
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "recv: ") {
			lines = append(lines, l)
		}
	}
	return lines
}

var recvLineRE = regexp.MustCompile(`^recv: (.*) from 127\.0\.0\.1:(\d+)$`)

// The two roles talk on loopback: the receiver prints each payload (up to its NUL) with the
// sender's address, then leaves the group; the kernel's list shows it joined, then not.
func TestRolesTalkOnLoopback(t *testing.T) {
	t.Parallel()
	group, port := "239.5.1.1", "15101"
	recv := startRole(t, "recv", "-group", group, "-port", port, "-count", "3")
	waitMembers(t, netip.MustParseAddr(group), 1)
	_, stderr, code := labtest.RunProgram(t, nil, "send", "-group", group, "-port", port, "-count", "3", "-interval", "10ms", "-msg", "hello group")
	require.Equal(t, 0, code, stderr)
	out := recv.wait(t)
	lines := recvLines(out)
	require.Len(t, lines, 3, out)
	for _, l := range lines {
		assert.Regexp(t, recvLineRE, l)
		assert.Equal(t, "hello group", recvLineRE.FindStringSubmatch(l)[1])
	}
	// The result may sit on the next line when the call is long (lab.Narrator.Sys).
	assert.Regexp(t, `IP_DROP_MEMBERSHIP, \{239\.5\.1\.1, 127\.0\.0\.1\}, 8\)\s+= 0\n`, out)
	waitMembers(t, netip.MustParseAddr(group), 0)
}

// SIGINT makes the receiver leave the group and exit 0.
func TestRecvLeavesOnSIGINT(t *testing.T) {
	t.Parallel()
	group := "239.5.1.2"
	recv := startRole(t, "recv", "-group", group, "-port", "15102", "-count", "0")
	waitMembers(t, netip.MustParseAddr(group), 1)
	require.NoError(t, recv.cmd.Process.Signal(os.Interrupt))
	out := recv.wait(t)
	assert.Contains(t, out, "interrupted: leaving the group")
	// The result may sit on the next line when the call is long (lab.Narrator.Sys).
	assert.Regexp(t, `IP_DROP_MEMBERSHIP, \{239\.5\.1\.2, 127\.0\.0\.1\}, 8\)\s+= 0\n`, out)
	waitMembers(t, netip.MustParseAddr(group), 0)
}

// -iface accepts a name or an address; both mean loopback here and join on it.
func TestIfaceByNameOrAddress(t *testing.T) {
	t.Parallel()
	for i, iface := range []string{"lo", "127.0.0.1"} {
		group := fmt.Sprintf("239.5.1.%d", 10+i)
		recv := startRole(t, "recv", "-group", group, "-port", "15103", "-iface", iface, "-count", "0")
		waitMembers(t, netip.MustParseAddr(group), 1)
		require.NoError(t, recv.cmd.Process.Signal(os.Interrupt))
		out := recv.wait(t)
		assert.Contains(t, out, "joined "+group+" on lo (127.0.0.1)")
	}
}

// runningRole is a role running in a child process of the test, in the test's namespace.
type runningRole struct {
	cmd    *exec.Cmd
	out    *bytes.Buffer
	errOut *bytes.Buffer
	cancel context.CancelFunc
}

func startRole(t *testing.T, args ...string) *runningRole {
	t.Helper()
	return startCmd(t, labtest.ProgramCommand(args...))
}

func startCmd(t *testing.T, cmd *exec.Cmd) *runningRole {
	t.Helper()
	r := &runningRole{cmd: cmd, out: &bytes.Buffer{}, errOut: &bytes.Buffer{}}
	cmd.Stdout, cmd.Stderr = r.out, r.errOut
	require.NoError(t, cmd.Start())
	done := make(chan struct{})
	var cancelOnce bool
	r.cancel = func() {
		if !cancelOnce {
			cancelOnce = true
			close(done)
		}
	}
	// A receiver that never gets its datagrams must not outlive the test.
	go func() {
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
		}
	}()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
		r.cancel()
	})
	return r
}

// wait waits for the child to exit (at most 15 s), requires status 0 and returns its stdout.
func (r *runningRole) wait(t *testing.T) string {
	t.Helper()
	err := r.cmd.Wait()
	r.cancel()
	require.NoError(t, err, "stdout: %s\nstderr: %s", r.out, r.errOut)
	return r.out.String()
}

// hexBytes parses the C receiver's "bytes N: 42 52 ..." line back into bytes.
func hexBytes(t *testing.T, line string) []byte {
	t.Helper()
	_, list, ok := strings.Cut(line, ":")
	require.True(t, ok, line)
	b, err := hex.DecodeString(strings.ReplaceAll(strings.TrimSpace(list), " ", ""))
	require.NoError(t, err, line)
	return b
}

// The Go roles and the course's C pair interoperate byte for byte, in both directions: the
// same payload bytes (text and its NUL) and the same "recv:" lines.
func TestInteropWithClassicC(t *testing.T) {
	t.Parallel()
	cRecv := labtest.CompileC(t, "mcast_recv")
	cSend := labtest.CompileC(t, "mcast_send")

	t.Run("GoSenderCReceiver", func(t *testing.T) {
		group, port := "239.5.2.1", "15201"
		recv := startCmd(t, exec.Command(cRecv, group, port, "2"))
		waitMembers(t, netip.MustParseAddr(group), 1)
		_, stderr, code := labtest.RunProgram(t, nil, "send", "-group", group, "-port", port, "-count", "2", "-interval", "10ms")
		require.Equal(t, 0, code, stderr)
		out := recv.wait(t)
		lines := recvLines(out)
		require.Len(t, lines, 2, out)
		for _, l := range lines {
			assert.Regexp(t, recvLineRE, l)
			assert.Equal(t, defaultMessage, recvLineRE.FindStringSubmatch(l)[1])
		}
		byteLines := strings.Split(strings.TrimSpace(recv.errOut.String()), "\n")
		require.Len(t, byteLines, 2, recv.errOut.String())
		for _, l := range byteLines {
			assert.Equal(t, classicBytes, hexBytes(t, l), "the C receiver got exactly the classic bytes")
		}
		waitMembers(t, netip.MustParseAddr(group), 0)
	})

	t.Run("CSenderGoReceiver", func(t *testing.T) {
		group, port := "239.5.2.2", "15202"
		goRecv := startRole(t, "recv", "-group", group, "-port", port, "-count", "2")
		// A second Go member, made by the chapter's own receiver code, keeps the raw bytes.
		l := testLesson(group, 15202)
		fd, err := openReceiver(lab.Quiet(), receiverOptions{Port: l.Port, Group: l.Group, Iface: loopbackAddr})
		require.NoError(t, err)
		labtest.Own(t, fd)
		waitMembers(t, l.Group, 2)
		out, err := exec.Command(cSend, group, port, "2", "10").CombinedOutput()
		require.NoError(t, err, "%s", out)
		lines := recvLines(goRecv.wait(t))
		require.Len(t, lines, 2)
		for _, line := range lines {
			assert.Equal(t, defaultMessage, recvLineRE.FindStringSubmatch(line)[1], line)
		}
		got, err := collect(lab.Quiet(), []int{fd}, quietLimit)
		require.NoError(t, err)
		require.Len(t, got[fd], 2)
		for _, d := range got[fd] {
			assert.Equal(t, classicBytes, d.Payload, "the Go receiver got exactly the C sender's bytes")
			assert.Equal(t, loopbackAddr, d.From.Addr())
		}
	})

	t.Run("SameLinesFromBothReceivers", func(t *testing.T) {
		group, port := "239.5.2.3", "15203"
		c := startCmd(t, exec.Command(cRecv, group, port, "1"))
		g := startRole(t, "recv", "-group", group, "-port", port, "-count", "1")
		waitMembers(t, netip.MustParseAddr(group), 2)
		out, err := exec.Command(cSend, group, port, "1", "0").CombinedOutput()
		require.NoError(t, err, "%s", out)
		assert.Equal(t, recvLines(c.wait(t)), recvLines(g.wait(t)), "identical recv: lines")
	})
}
