//go:build linux

package main

import (
	"bufio"
	"bytes"
	"io"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"socklab/internal/labtest"
	"socklab/internal/sockdiag"
)

// Bad input is a usage error: one line naming the problem, the usage, exit status 2.
func TestUsageErrorsExitTwo(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"server", "-addr", "127.0.0.1:70000"}, "out of range"},
		{[]string{"client", "-addr", "localhost:9000"}, "not an IP address"},
		{[]string{"server", "-addr", "127.0.0.1"}, "missing port"},
		{[]string{"server", "-backlog", "-1"}, "-backlog -1"},
		{[]string{"client", "-n", "0"}, "-n 0"},
		{[]string{"client", "-addr", "127.0.0.1:0"}, "give the server's port"},
		{[]string{"nosuchpart"}, `unknown part or role "nosuchpart"`},
		{[]string{"backlog", "-bogus"}, "flag provided but not defined"},
	} {
		var out, errb bytes.Buffer
		code := program.Run(tc.args, &out, &errb)
		assert.Equal(t, 2, code, "%v", tc.args)
		assert.Contains(t, errb.String(), tc.want, "%v", tc.args)
		assert.Contains(t, errb.String(), "usage:", "%v", tc.args)
	}
	// The same through a real process and its exit status.
	_, stderr, code := labtest.RunProgram(t, nil, "server", "-backlog", "-3")
	assert.Equal(t, 2, code)
	assert.Contains(t, stderr, "-backlog -3")
}

// A client with nothing to connect to fails with exit status 1, one line and a hint.
func TestClientRoleRefusedExitsOne(t *testing.T) {
	t.Parallel()
	fd := labtest.Socket(t, loopbackAny, unix.SOCK_STREAM)
	require.NoError(t, unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}})) // bound, not listening
	addr := labtest.LocalAddr(t, fd)
	_, stderr, code := labtest.RunProgram(t, nil, "client", "-addr", addr.String(), "-hold", "0")
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, "connection refused")
	assert.Contains(t, stderr, "hint: nothing listens there")
	assert.Equal(t, 1, strings.Count(strings.TrimSpace(stderr), "\n")+1, "one line")
}

// startServer runs the server role in a child process and returns its address once it
// listens; the child is interrupted, and must exit 0, when the test ends.
func startServer(t *testing.T, args ...string) (netip.AddrPort, *bytes.Buffer) {
	t.Helper()
	cmd := labtest.ProgramCommand(append([]string{"server", "-addr", "127.0.0.1:0"}, args...)...)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	cmd.Stderr = os.Stderr
	require.NoError(t, cmd.Start())
	lines := make(chan string, 100)
	var rest bytes.Buffer
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			default:
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGINT)
		<-done
		err := cmd.Wait()
		assert.NoError(t, err, "server exits 0 on Ctrl-C")
	})
	deadline := time.After(10 * time.Second)
	for {
		select {
		case line := <-lines:
			rest.WriteString(line + "\n")
			if after, ok := strings.CutPrefix(line, "listening on "); ok {
				addr, err := netip.ParseAddrPort(strings.Fields(after)[0])
				require.NoError(t, err)
				return addr, &rest
			}
		case <-deadline:
			t.Fatalf("server did not start; output so far:\n%s", rest.String())
		}
	}
}

// server -backlog 3 -accept=false: the kernel shows the backlog as the listener's Send-Q and
// admits 4 clients without accept().
func TestServerRoleListensWithBacklogAndNeverAccepts(t *testing.T) {
	t.Parallel()
	addr, _ := startServer(t, "-backlog", "3", "-accept=false")
	l, found, err := sockdiag.Find(addr, netip.AddrPortFrom(netip.IPv4Unspecified(), 0))
	require.NoError(t, err)
	require.True(t, found)
	assert.Equal(t, sockdiag.Listen, l.State)
	assert.EqualValues(t, 3, l.SendQ)
	for range 5 {
		labtest.DialNonblock(t, addr)
	}
	labtest.WaitFor(t, shortWait, "accept queue full at 4", func() (bool, string) {
		l, _, err := sockdiag.Find(addr, netip.AddrPortFrom(netip.IPv4Unspecified(), 0))
		return err == nil && l.RecvQ == 4, l.String()
	})
}

// server (accepting): it accepts, reads what the client sent and closes, so the client sees
// the server's FIN (read() = 0).
func TestServerRoleAcceptsReadsAndCloses(t *testing.T) {
	t.Parallel()
	addr, _ := startServer(t)
	fd, local := labtest.Dial(t, addr)
	_, err := unix.Write(fd, []byte("hi there"))
	require.NoError(t, err)
	labtest.WaitState(t, local, addr, sockdiag.CloseWait, shortWait)
	n, err := unix.Read(fd, make([]byte, 16))
	require.NoError(t, err)
	assert.Zero(t, n, "EOF: the server closed")
}

// client -n 4 against listen(fd, 1): two get in, two wait in SYN_SENT, and the listener's
// accept queue holds the two.
func TestClientRoleReportsAdmittedAndWaiting(t *testing.T) {
	t.Parallel()
	_, laddr := labtest.Listen(t, loopbackAny, 1)
	stdout, stderr, code := labtest.RunProgram(t, nil, "client", "-addr", laddr.String(), "-n", "4", "-hold", "0")
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, stdout, "2 ESTABLISHED, 2 SYN_SENT")
	l, found, err := sockdiag.Find(laddr, netip.AddrPortFrom(netip.IPv4Unspecified(), 0))
	require.NoError(t, err)
	require.True(t, found)
	assert.EqualValues(t, 2, l.RecvQ, "the two admitted connections are still queued")
}
