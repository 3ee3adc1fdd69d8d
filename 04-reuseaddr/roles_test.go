//go:build linux

package main

import (
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"socklab/internal/labtest"
	"socklab/internal/sockdiag"
)

// addrWatcher is the server child's stdout: it keeps the output and hands over the address
// from the "listening on" line once.
type addrWatcher struct {
	mu    sync.Mutex
	out   strings.Builder
	found chan netip.AddrPort
	sent  bool
}

func (w *addrWatcher) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.out.Write(p)
	if !w.sent {
		for _, line := range strings.Split(w.out.String(), "\n") {
			if rest, ok := strings.CutPrefix(line, "listening on "); ok && strings.Contains(rest, " ") {
				if ap, err := netip.ParseAddrPort(strings.Fields(rest)[0]); err == nil {
					w.found <- ap // buffered, sent once
					w.sent = true
				}
			}
		}
	}
	return len(p), nil
}

// startServer runs the server role in a child process and returns the address it reports
// and a function that waits for its exit status. A server still running when the test ends
// is killed.
func startServer(t *testing.T, args ...string) (netip.AddrPort, func() int) {
	t.Helper()
	cmd := labtest.ProgramCommand(append([]string{"server"}, args...)...)
	w := &addrWatcher{found: make(chan netip.AddrPort, 1)}
	var errb strings.Builder
	cmd.Stdout, cmd.Stderr = w, &errb
	require.NoError(t, cmd.Start())
	var once sync.Once
	code := -1
	exited := make(chan struct{})
	wait := func() int {
		once.Do(func() {
			_ = cmd.Wait()
			code = cmd.ProcessState.ExitCode()
			close(exited)
		})
		<-exited
		return code
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill() // harmless when it has exited
		wait()
	})
	go wait() // ends when the child does; the cleanup above makes sure it does
	select {
	case addr := <-w.found:
		return addr, wait
	case <-exited:
		t.Fatalf("server exited with %d before listening; stderr: %s", code, errb.String())
	case <-time.After(10 * time.Second):
		t.Fatal("server did not report its address within 10 s")
	}
	return netip.AddrPort{}, wait
}

// listeners counts the LISTEN sockets the kernel has on addr.
func listeners(t *testing.T, addr netip.AddrPort) int {
	socks, err := sockdiag.Dump(sockdiag.TCP, sockdiag.Filter{Local: addr, States: []sockdiag.State{sockdiag.Listen}})
	require.NoError(t, err)
	return len(socks)
}

// Roles: the server closes first and exits; the client sees the greeting; a restart of the
// server without -reuseaddr exits 1 with EADDRINUSE and the hint, while the TIME_WAIT the
// kernel lists on the server's address is why.
func TestServerRoleRestartFailsWithoutReuseAddr(t *testing.T) {
	t.Parallel()
	addr, wait := startServer(t, "-addr", "127.0.0.1:0")
	out, _, code := labtest.RunProgram(t, nil, "client", "-addr", addr.String())
	require.Equal(t, 0, code)
	assert.Contains(t, out, fmt.Sprintf("received %d bytes", len(greeting)))
	require.Equal(t, 0, wait())
	tws, err := sockdiag.Dump(sockdiag.TCP, sockdiag.Filter{Local: addr, States: []sockdiag.State{sockdiag.TimeWait}})
	require.NoError(t, err)
	require.Len(t, tws, 1, "the server's TIME_WAIT")

	_, errOut, code := labtest.RunProgram(t, nil, "server", "-addr", addr.String())
	assert.Equal(t, 1, code)
	assert.Contains(t, errOut, "address already in use")
	assert.Contains(t, errOut, "docs/04-reuseaddr.md")
	assert.Len(t, strings.Split(strings.TrimSpace(errOut), "\n"), 1, "one line")
}

// Roles: with -reuseaddr on both runs the restart listens at once, next to the TIME_WAIT.
func TestServerRoleRestartsWithReuseAddr(t *testing.T) {
	t.Parallel()
	addr, wait := startServer(t, "-addr", "127.0.0.1:0", "-reuseaddr")
	_, _, code := labtest.RunProgram(t, nil, "client", "-addr", addr.String())
	require.Equal(t, 0, code)
	require.Equal(t, 0, wait())

	again, wait2 := startServer(t, "-addr", addr.String(), "-reuseaddr", "-count", "2")
	assert.Equal(t, addr, again)
	out, _, code := labtest.RunProgram(t, nil, "client", "-addr", addr.String(), "-count", "2")
	assert.Equal(t, 0, code)
	assert.Equal(t, 2, strings.Count(out, fmt.Sprintf("received %d bytes", len(greeting))))
	assert.Equal(t, 0, wait2())
	tws, err := sockdiag.Dump(sockdiag.TCP, sockdiag.Filter{Local: addr, States: []sockdiag.State{sockdiag.TimeWait}})
	require.NoError(t, err)
	assert.Len(t, tws, 3, "three server-side TIME_WAITs share the port")
}

// Roles: two servers with -reuseport share one address; each serves one client and exits.
func TestServerRoleReusePort(t *testing.T) {
	t.Parallel()
	addr, wait1 := startServer(t, "-addr", "127.0.0.1:0", "-reuseport", "-count", "1")
	_, wait2 := startServer(t, "-addr", addr.String(), "-reuseport", "-count", "1")
	require.Equal(t, 2, listeners(t, addr), "two listeners on %v", addr)
	for left := 1; left >= 0; left-- {
		_, _, code := labtest.RunProgram(t, nil, "client", "-addr", addr.String())
		require.Equal(t, 0, code)
		// The server that served it exits; wait for its listener to go before the next
		// client, which then can only reach the other one.
		labtest.WaitFor(t, 5*time.Second, "a server to exit", func() (bool, string) {
			n := listeners(t, addr)
			return n == left, fmt.Sprintf("%d listeners", n)
		})
	}
	assert.Equal(t, 0, wait1())
	assert.Equal(t, 0, wait2())
}

// Roles: a client with nothing listening exits 1 with the ECONNREFUSED hint.
func TestClientRoleRefused(t *testing.T) {
	t.Parallel()
	fd, addr := labtest.Listen(t, labtest.Loopback4, 1)
	labtest.CloseNow(t, fd) // the port is now free: nothing listens there
	_, errOut, code := labtest.RunProgram(t, nil, "client", "-addr", addr.String())
	assert.Equal(t, 1, code)
	assert.Contains(t, errOut, "nothing listens there")
}

// Roles: usage errors exit 2 with one line and the usage.
func TestRolesUsageErrors(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"server", "-addr", "localhost:9000"},
		{"server", "-addr", "127.0.0.1:99999"},
		{"server", "-count", "-1"},
		{"server", "stray"},
		{"server", "-bogus"},
		{"client", "-addr", "127.0.0.1"},
		{"client", "-addr", "127.0.0.1:0"},
		{"client", "-count", "0"},
		{"nosuchpart"},
	} {
		t.Run(strings.Join(args, "_"), func(t *testing.T) {
			t.Parallel()
			_, errOut, code := labtest.RunProgram(t, nil, args...)
			assert.Equal(t, 2, code, errOut)
			assert.Contains(t, errOut, "usage:")
			assert.True(t, strings.HasPrefix(errOut, "04-reuseaddr: "), errOut)
		})
	}
}
