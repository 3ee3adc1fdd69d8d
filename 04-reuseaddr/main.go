//go:build linux

// Command 04-reuseaddr shows why a restarted server gets "Address already in use" (EADDRINUSE,
// 地址已被使用), what TIME_WAIT has to do with it, and what SO_REUSEADDR and SO_REUSEPORT
// (地址复用 / 端口复用) really change — each claim checked against the kernel's own socket
// table (sock_diag), not against a blog post. Read along: docs/04-reuseaddr.md.
//
// Parts, in lesson order:
//
//	failure    A. the failure: a restart right after the server closed a connection
//	matrix     B. SO_REUSEADDR old × new × who closed first, every cell run for real
//	clientside C. the client's TIME_WAIT, new ports per connection, tcp_tw_reuse
//	reuseport  D. SO_REUSEPORT, and a live connection on the port after its listener is gone
//	myths      E. tcp_fin_timeout, tcp_tw_recycle, tcp_max_tw_buckets, "REUSEADDR kills TIME_WAIT"
//	golang     F. why Go servers never see EADDRINUSE: net.Listen sets SO_REUSEADDR
//
// Roles for two terminals: server (-addr, -reuseaddr, -reuseport, -count) and client.
package main

import (
	"fmt"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"

	"socklab/internal/lab"
	"socklab/internal/sockdiag"
)

// program is the chapter's command line: the demo parts and the two roles.
var program = lab.Program{
	Name:    "04-reuseaddr",
	Summary: "TIME_WAIT, \"Address already in use\", SO_REUSEADDR, SO_REUSEPORT",
	Doc:     "docs/04-reuseaddr.md",
	Parts: []lab.Part{
		{Name: "failure", Title: "A. The failure: restarting a server gives EADDRINUSE", Run: partFailure},
		{Name: "matrix", Title: "B. SO_REUSEADDR: old listener × new listener × who closed first", Run: partMatrix},
		{Name: "clientside", Title: "C. The client side: ephemeral ports, TIME_WAIT, tcp_tw_reuse", Run: partClientSide},
		{Name: "reuseport", Title: "D. SO_REUSEPORT, and a live connection on a port without listener", Run: partReusePort},
		{Name: "myths", Title: "E. Myths checked against the kernel", Run: partMyths},
		{Name: "golang", Title: "F. Go's net.Listen sets SO_REUSEADDR on every listener", Run: partGolang},
	},
	Roles: []lab.Role{
		{Name: "server", Summary: "listen on -addr, greet and close each connection first (-reuseaddr, -reuseport)", Run: runServer},
		{Name: "client", Summary: "connect to -addr, read until EOF, close", Run: runClient},
	},
}

func main() { program.Main() }

// loopback0 is 127.0.0.1 port 0: the kernel picks a free port, so runs never collide.
var loopback0 = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), 0)

// waitLimit bounds every wait for a state change on loopback; they take microseconds.
const waitLimit = 5 * time.Second

// ---------------------------------------------------------------------------------------------
// The system calls of the lesson. Each prints itself strace-style.

// listenAttempt is what socket+setsockopt+bind+listen got from the kernel.
type listenAttempt struct {
	FD   int            // the listening socket, or -1 when a call failed
	Addr netip.AddrPort // the bound address (getsockname), valid on success
	Call string         // the call that failed: "socket", "setsockopt", "bind" or "listen"
	Err  error          // its error (an errno), nil on success
}

// OK reports whether the listener is up.
func (a listenAttempt) OK() bool { return a.Err == nil }

// Result is "ok" or "bind: EADDRINUSE", for tables.
func (a listenAttempt) Result() string {
	if a.OK() {
		return "ok"
	}
	if e, ok := a.Err.(unix.Errno); ok {
		return a.Call + ": " + unix.ErrnoName(e)
	}
	return a.Call + ": " + a.Err.Error()
}

// openListener is the classic server start: socket(), the options (setsockopt(7) SO_REUSEADDR
// and SO_REUSEPORT, see socket(7)), bind() to addr, listen(). Options are set before bind
// because bind is where the kernel decides whether the port is free.
func openListener(n *lab.Narrator, addr netip.AddrPort, reuseAddr, reusePort bool) listenAttempt {
	family, famName := unix.AF_INET, "AF_INET"
	if addr.Addr().Is6() {
		family, famName = unix.AF_INET6, "AF_INET6"
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if n.Sys(fd, err, "socket(%s, SOCK_STREAM, 0)", famName) != nil {
		return listenAttempt{FD: -1, Call: "socket", Err: err}
	}
	fail := func(call string, err error) listenAttempt {
		unix.Close(fd)
		return listenAttempt{FD: -1, Call: call, Err: err}
	}
	if reuseAddr {
		err = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
		if n.Sys(0, err, "setsockopt(%d, SOL_SOCKET, SO_REUSEADDR, [1], 4)", fd) != nil {
			return fail("setsockopt", err)
		}
	}
	if reusePort {
		err = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		if n.Sys(0, err, "setsockopt(%d, SOL_SOCKET, SO_REUSEPORT, [1], 4)", fd) != nil {
			return fail("setsockopt", err)
		}
	}
	sa := lab.SockaddrOf(addr)
	err = unix.Bind(fd, sa)
	if n.Sys(0, err, "bind(%d, %s)", fd, lab.Sockaddr(sa)) != nil {
		return fail("bind", err)
	}
	err = unix.Listen(fd, 128)
	if n.Sys(0, err, "listen(%d, 128)", fd) != nil {
		return fail("listen", err)
	}
	bound, err := unix.Getsockname(fd)
	if err != nil {
		return fail("getsockname", err)
	}
	if addr.Port() == 0 { // which port did the kernel pick?
		n.Sys(0, nil, "getsockname(%d, %s)", fd, lab.Sockaddr(bound))
	}
	return listenAttempt{FD: fd, Addr: lab.AddrPortOf(bound)}
}

// conn is one TCP connection seen from both ends, both held by this process.
type conn struct {
	Client, Server int            // file descriptors
	ClientAddr     netip.AddrPort // the client's (ephemeral) endpoint
	ServerAddr     netip.AddrPort // the server's endpoint: the listening address
}

// connectAndAccept opens a client connection to the listener lfd at addr and accepts it.
func connectAndAccept(n *lab.Narrator, lfd int, addr netip.AddrPort) (conn, error) {
	cfd, local, err := dial(n, addr)
	if err != nil {
		return conn{}, err
	}
	sfd, _, err := acceptOne(n, lfd)
	if err != nil {
		unix.Close(cfd)
		return conn{}, err
	}
	return conn{Client: cfd, Server: sfd, ClientAddr: local, ServerAddr: addr}, nil
}

// dial is socket() + connect() for a client; the kernel picks the client's ephemeral port.
func dial(n *lab.Narrator, addr netip.AddrPort) (int, netip.AddrPort, error) {
	family, famName := unix.AF_INET, "AF_INET"
	if addr.Addr().Is6() {
		family, famName = unix.AF_INET6, "AF_INET6"
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if n.Sys(fd, err, "socket(%s, SOCK_STREAM, 0)", famName) != nil {
		return -1, netip.AddrPort{}, fmt.Errorf("socket: %w", err)
	}
	sa := lab.SockaddrOf(addr)
	err = unix.Connect(fd, sa)
	if n.Sys(0, err, "connect(%d, %s)", fd, lab.Sockaddr(sa)) != nil {
		unix.Close(fd)
		return -1, netip.AddrPort{}, fmt.Errorf("connect %v: %w", addr, err)
	}
	local, err := unix.Getsockname(fd)
	if err != nil {
		unix.Close(fd)
		return -1, netip.AddrPort{}, fmt.Errorf("getsockname: %w", err)
	}
	n.Detail("the kernel gave the client the ephemeral port %d", lab.AddrPortOf(local).Port())
	return fd, lab.AddrPortOf(local), nil
}

// acceptOne waits (poll, bounded) for a connection on the listener and accepts it.
func acceptOne(n *lab.Narrator, lfd int) (int, netip.AddrPort, error) {
	if err := waitReadable(lfd, waitLimit); err != nil {
		return -1, netip.AddrPort{}, fmt.Errorf("accept: %w", err)
	}
	fd, peer, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC)
	if n.Sys(fd, err, "accept4(%d, ...)", lfd) != nil {
		return -1, netip.AddrPort{}, fmt.Errorf("accept: %w", err)
	}
	n.Result("%s", lab.Sockaddr(peer))
	return fd, lab.AddrPortOf(peer), nil
}

// closeFD is close(2), narrated.
func closeFD(n *lab.Narrator, fd int) error {
	return n.Sys(0, unix.Close(fd), "close(%d)", fd)
}

// closeBoth closes a connection the way a real exchange ends: one side closes first (the
// active closer, 主动关闭方), the other sees EOF and closes too. It returns the TIME_WAIT the
// kernel keeps — always on the side that closed first.
func closeBoth(n *lab.Narrator, c conn, serverFirst bool) (sockdiag.Socket, error) {
	first, second := c.Client, c.Server
	firstLocal, firstRemote := c.ClientAddr, c.ServerAddr
	if serverFirst {
		first, second = c.Server, c.Client
		firstLocal, firstRemote = c.ServerAddr, c.ClientAddr
	}
	closeFD(n, first)
	// The other end has the FIN once the kernel shows it in CLOSE_WAIT.
	if _, err := awaitState(firstRemote, firstLocal, sockdiag.CloseWait); err != nil {
		unix.Close(second)
		return sockdiag.Socket{}, err
	}
	closeFD(n, second)
	return awaitState(firstLocal, firstRemote, sockdiag.TimeWait)
}

// ---------------------------------------------------------------------------------------------
// A. The failure.

// failureReport is what part A observed.
type failureReport struct {
	TimeWait sockdiag.Socket // the TIME_WAIT on the server's port, as sock_diag listed it
	Restart  listenAttempt   // the restart without SO_REUSEADDR (closed again before return)
}

// stepFailure runs a server that accepts one client, closes the connection first and exits;
// then starts it again on the same port. No socket sets SO_REUSEADDR.
func stepFailure(n *lab.Narrator) (failureReport, error) {
	var rep failureReport
	n.Step("a server listens, a client connects, the server closes first")
	old := openListener(n, loopback0, false, false)
	if !old.OK() {
		return rep, fmt.Errorf("%s: %w", old.Call, old.Err)
	}
	c, err := connectAndAccept(n, old.FD, old.Addr)
	if err != nil {
		unix.Close(old.FD)
		return rep, err
	}
	tw, err := closeBoth(n, c, true)
	if err != nil {
		unix.Close(old.FD)
		return rep, err
	}
	n.Step("the server exits: its listener is closed too")
	closeFD(n, old.FD)
	n.Kernel(sockdiag.Filter{Port: old.Addr.Port()})
	rep.TimeWait = tw
	n.Say("The connection that the server closed first sits in TIME_WAIT on the server's "+
		"own port %d, with %.1f s left on its timer (2MSL, 60 s on Linux). No process holds it "+
		"(no fd); the kernel keeps it to absorb late segments of the old connection.",
		old.Addr.Port(), tw.Expires.Seconds())

	n.Step("the server restarts on the same port at once")
	rep.Restart = openListener(n, old.Addr, false, false)
	if rep.Restart.OK() {
		closeFD(n, rep.Restart.FD)
	} else {
		n.Say("bind() refuses: \"Address already in use\". The port is held by a socket with no "+
			"owner, which is why `lsof -i :%d` shows nothing while `ss -tan state time-wait` does.",
			old.Addr.Port())
	}
	return rep, nil
}

func partFailure(d *lab.Demo) error {
	_, err := stepFailure(d.Narrator)
	return err
}
