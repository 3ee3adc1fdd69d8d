//go:build linux

package main

import (
	"bufio"
	"io"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"socklab/internal/labtest"
	"socklab/internal/sockdiag"
)

var (
	listeningRE = regexp.MustCompile(`listening on (\S+),`)
	clientRE    = regexp.MustCompile(`getsockname\(\d+\) = \{AF_INET, (\S+)\}`)
)

// startServer runs the server role with args (plus -count 1 -addr 127.0.0.1:0) in a child
// process, and returns its address once it listens, and a function that waits for it to
// exit and returns its output and status.
func startServer(t *testing.T, args ...string) (netip.AddrPort, func() (string, int)) {
	t.Helper()
	cmd := labtest.ProgramCommand(append([]string{"server", "-count", "1", "-addr", "127.0.0.1:0"}, args...)...)
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	// A bound on the whole exchange: a server that never exits is killed, and the test fails.
	killer := time.AfterFunc(20*time.Second, func() { _ = cmd.Process.Kill() })
	rd := bufio.NewReader(out)
	var seen strings.Builder
	var addr netip.AddrPort
	for range 50 { // the line comes after a handful of narrated calls
		line, err := rd.ReadString('\n')
		seen.WriteString(line)
		if m := listeningRE.FindStringSubmatch(line); m != nil {
			addr, err = netip.ParseAddrPort(m[1])
			require.NoError(t, err)
			break
		}
		if err != nil {
			break
		}
	}
	wait := func() (string, int) {
		rest, _ := io.ReadAll(rd)
		err := cmd.Wait()
		killer.Stop()
		code := 0
		if err != nil {
			code = cmd.ProcessState.ExitCode()
		}
		return seen.String() + string(rest), code
	}
	if !addr.IsValid() {
		out, code := wait()
		t.Fatalf("the server never said where it listens (exit %d):\n%s", code, out)
	}
	return addr, wait
}

// The two-terminal lab: `server -sort` can only answer after the client's FIN; the client
// half-closes at end of input, prints the answer, exits 0, and holds the TIME_WAIT.
func TestClientHalfClosesAndSortServerAnswersAfterFIN(t *testing.T) {
	t.Parallel()
	srv, wait := startServer(t, "-sort")
	out, errOut, code := labtest.RunProgram(t, strings.NewReader("pear\napple\nfig\n"), "client", "-addr", srv.String())
	assert.Equal(t, 0, code, "client stderr: %s", errOut)
	assert.Equal(t, "apple\nfig\npear\n", out, "the reply, and only the reply, on stdout")
	assert.Contains(t, errOut, "SHUT_WR) = 0", "the client half-closed at end of input")

	srvOut, srvCode := wait()
	assert.Equal(t, 0, srvCode, srvOut)
	assert.Regexp(t, `read\(\d+, "", 4096\) = 0`, srvOut, "the server saw the client's FIN")
	assert.Less(t, strings.Index(srvOut, `"", 4096) = 0`), strings.Index(srvOut, `"apple\nfig\npear\n"`),
		"and answered only after it")

	m := clientRE.FindStringSubmatch(errOut)
	require.NotNil(t, m, "the client prints its address: %s", errOut)
	client := netip.MustParseAddrPort(m[1])
	tw := labtest.WaitState(t, client, srv, sockdiag.TimeWait, 5*time.Second)
	assert.False(t, tw.HasFD(), "the client's TIME_WAIT outlives its process: %v", tw)
	labtest.WaitGone(t, srv, client, 5*time.Second) // the server closed second: nothing left
}

func TestEchoServerEchoesUntilClientFIN(t *testing.T) {
	t.Parallel()
	srv, wait := startServer(t)
	out, errOut, code := labtest.RunProgram(t, strings.NewReader("hello\nworld\n"), "client", "-addr", srv.String())
	assert.Equal(t, 0, code, "client stderr: %s", errOut)
	assert.Equal(t, "hello\nworld\n", out)
	srvOut, srvCode := wait()
	assert.Equal(t, 0, srvCode, srvOut)
	assert.Contains(t, srvOut, "the client's FIN")
}

func TestRolesRejectBadUsageWithExit2(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"client", "-addr", "localhost:9000"},
		{"client", "-addr", "127.0.0.1"},
		{"client", "-addr", "127.0.0.1:0"},
		{"client", "-nope"},
		{"client", "extra"},
		{"server", "-count", "-1"},
		{"server", "-addr", "127.0.0.1:99999"},
		{"server", "-sort", "extra"},
	} {
		_, errOut, code := labtest.RunProgram(t, nil, args...)
		assert.Equal(t, 2, code, "%v: %s", args, errOut)
		assert.Contains(t, errOut, "usage:", "%v", args)
		assert.NotContains(t, errOut, "panic", "%v", args)
	}
}

func TestClientWithoutServerFailsWithOneLineAndHint(t *testing.T) {
	t.Parallel()
	// A bound socket that does not listen: its port is ours, and connecting to it is refused.
	fd := labtest.Socket(t, labtest.Loopback4, unix.SOCK_STREAM)
	require.NoError(t, unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}))
	addr := labtest.LocalAddr(t, fd)
	_, errOut, code := labtest.RunProgram(t, nil, "client", "-addr", addr.String())
	assert.Equal(t, 1, code)
	var lines []string
	for _, l := range strings.Split(errOut, "\n") {
		if l != "" && !strings.HasPrefix(l, "  ") { // narrated system calls are indented
			lines = append(lines, l)
		}
	}
	require.Len(t, lines, 1, errOut)
	assert.Contains(t, lines[0], "connection refused")
	assert.Contains(t, lines[0], "hint: nothing listens there")
}
