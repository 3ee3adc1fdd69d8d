//go:build linux

package labtest

import (
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"socklab/internal/lab"
)

// Loopback4 is 127.0.0.1 with port 0: bind picks a free ephemeral port, so parallel tests
// never collide.
var Loopback4 = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), 0)

// Listen opens a TCP listener on addr (port 0 = any) with the given backlog and returns its fd
// and bound address. The fd is closed when the test ends.
func Listen(t testing.TB, addr netip.AddrPort, backlog int) (int, netip.AddrPort) {
	t.Helper()
	fd := Socket(t, addr, unix.SOCK_STREAM)
	if err := unix.Bind(fd, lab.SockaddrOf(addr)); err != nil {
		t.Fatalf("bind %v: %v", addr, err)
	}
	if err := unix.Listen(fd, backlog); err != nil {
		t.Fatalf("listen: %v", err)
	}
	return fd, LocalAddr(t, fd)
}

// Socket opens a socket of the address's family; it is closed when the test ends, unless the
// test closed it earlier with CloseNow.
func Socket(t testing.TB, addr netip.AddrPort, typ int) int {
	t.Helper()
	family := unix.AF_INET
	if addr.Addr().Is6() {
		family = unix.AF_INET6
	}
	fd, err := unix.Socket(family, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("socket: %v", err)
	}
	Own(t, fd)
	return fd
}

// Own registers fd to be closed when the test ends, unless the test closed it with CloseNow.
func Own(t testing.TB, fd int) {
	t.Cleanup(func() { closeOwned(t, fd) })
}

// closedSet counts, per test and fd number, the fds a test closed itself with CloseNow, so that
// cleanup never closes a number that another test has since been given.
type closedKey struct {
	t  testing.TB
	fd int
}

var closedSet = newSyncCounter[closedKey]()

func closeOwned(t testing.TB, fd int) {
	if closedSet.take(closedKey{t, fd}) {
		return
	}
	unix.Close(fd)
}

// CloseNow closes an fd registered with Own (or returned by Listen/Dial/Accept) before the test
// ends.
func CloseNow(t testing.TB, fd int) {
	t.Helper()
	closedSet.add(closedKey{t, fd})
	if err := unix.Close(fd); err != nil {
		t.Fatalf("close(%d): %v", fd, err)
	}
}

// Dial connects a blocking TCP socket to addr and returns its fd and local address.
func Dial(t testing.TB, addr netip.AddrPort) (int, netip.AddrPort) {
	t.Helper()
	fd := Socket(t, addr, unix.SOCK_STREAM)
	if err := unix.Connect(fd, lab.SockaddrOf(addr)); err != nil {
		t.Fatalf("connect %v: %v", addr, err)
	}
	return fd, LocalAddr(t, fd)
}

// DialNonblock starts a non-blocking connect and returns at once (EINPROGRESS is expected).
func DialNonblock(t testing.TB, addr netip.AddrPort) (int, netip.AddrPort) {
	t.Helper()
	fd := Socket(t, addr, unix.SOCK_STREAM|unix.SOCK_NONBLOCK)
	if err := unix.Connect(fd, lab.SockaddrOf(addr)); err != nil && err != unix.EINPROGRESS {
		t.Fatalf("connect %v: %v", addr, err)
	}
	return fd, LocalAddr(t, fd)
}

// Accept accepts one connection on a blocking listener, giving up after timeout.
func Accept(t testing.TB, lfd int, timeout time.Duration) (int, netip.AddrPort) {
	t.Helper()
	fds := []unix.PollFd{{Fd: int32(lfd), Events: unix.POLLIN}}
	deadline := time.Now().Add(timeout)
	for {
		n, err := unix.Poll(fds, int(time.Until(deadline).Milliseconds())+1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			t.Fatalf("poll listener: %v", err)
		}
		if n == 0 {
			t.Fatalf("accept: no connection within %v", timeout)
		}
		break
	}
	nfd, sa, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC)
	if err != nil {
		t.Fatalf("accept: %v", err)
	}
	Own(t, nfd)
	return nfd, lab.AddrPortOf(sa)
}

// LocalAddr is getsockname as a netip.AddrPort.
func LocalAddr(t testing.TB, fd int) netip.AddrPort {
	t.Helper()
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatalf("getsockname(%d): %v", fd, err)
	}
	return lab.AddrPortOf(sa)
}
