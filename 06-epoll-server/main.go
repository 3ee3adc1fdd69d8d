//go:build linux

// Command 06-epoll-server is the course's "epoll + thread pool" chapter, written with raw
// system calls: non-blocking sockets, epoll_create1/epoll_ctl/epoll_wait, level- versus
// edge-triggered readiness, EPOLLONESHOT and EPOLLRDHUP, and an echo server (role `server`)
// with a worker pool that stays correct under EMFILE, slow readers, resets and signals.
//
// With no arguments it runs the narrated demo; see docs/06-epoll-server.md.
package main

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"

	"socklab/internal/lab"
	"socklab/internal/sockdiag"
)

var program = lab.Program{
	Name:    "06-epoll-server",
	Summary: "an epoll echo server with a worker pool",
	Doc:     "docs/06-epoll-server.md",
	Parts: []lab.Part{
		{Name: "nonblock", Title: "A. Non-blocking sockets: fcntl(O_NONBLOCK), accept4(SOCK_NONBLOCK), EAGAIN", Run: runNonblock},
		{Name: "triggers", Title: "B. Level-triggered versus edge-triggered on one socket", Run: runTriggers},
		{Name: "oneshot", Title: "C. EPOLLONESHOT: reported once, silent until re-armed", Run: runOneshot},
		{Name: "rdhup", Title: "D. EPOLLRDHUP: the peer half-closed", Run: runRDHUP},
		{Name: "pool", Title: "E. The echo server with a worker pool, several clients", Run: runPool},
		{Name: "backpressure", Title: "F. Backpressure: a client that sends and never reads", Run: runBackpressure},
	},
	Roles: []lab.Role{
		{Name: "server", Summary: "the epoll echo server (-et, -workers N, -work D, -nofile N, -trace)", Run: serverRole},
		{Name: "load", Summary: "load generator: ping-pong over N connections (-conns, -size, -duration, -idle)", Run: loadRole},
		{Name: "stdserver", Summary: "the idiomatic Go echo server (goroutine per connection, io.Copy), for comparison", Run: stdServerRole},
	},
}

func main() { program.Main() }

// loopback is where every demo socket lives; port 0 lets bind pick a free port.
var loopback = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), 0)

func runNonblock(d *lab.Demo) error { _, err := nonblockingSockets(d); return err }
func runTriggers(d *lab.Demo) error { _, err := levelVersusEdge(d); return err }
func runOneshot(d *lab.Demo) error  { _, err := oneshotRearm(d); return err }
func runRDHUP(d *lab.Demo) error    { _, err := rdhupOnHalfClose(d); return err }
func runPool(d *lab.Demo) error     { _, err := workerPool(d, 2, 3); return err }
func runBackpressure(d *lab.Demo) error {
	_, err := slowReader(d, ServerConfig{ChunkSize: 16 << 10})
	return err
}
func closeFDs(d *lab.Demo, fds ...int) { closeNarrated(d.Narrator, fds...) }

func closeNarrated(n *lab.Narrator, fds ...int) {
	for _, fd := range fds {
		if fd >= 0 {
			n.Sys(0, unix.Close(fd), "close(%d)", fd)
		}
	}
}

// --- A. Non-blocking sockets -------------------------------------------------------------

// NonblockResult is what the kernel said in part A.
type NonblockResult struct {
	FlagsBefore, FlagsAfter int   // F_GETFL of the listener before and after F_SETFL
	AcceptErr               error // accept4 with nobody connecting
	AcceptedFlags           int   // F_GETFL of the socket accept4(SOCK_NONBLOCK) returned
	ReadErr                 error // read with nothing to read
}

func nonblockingSockets(d *lab.Demo) (NonblockResult, error) {
	var r NonblockResult
	d.Step("A blocking listener, made non-blocking with fcntl")
	lfd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if d.Sys(lfd, err, "socket(AF_INET, SOCK_STREAM|SOCK_CLOEXEC, 0)") != nil {
		return r, err
	}
	defer closeFDs(d, lfd)
	sa := lab.SockaddrOf(loopback)
	if err := d.Sys(0, unix.Bind(lfd, sa), "bind(%d, %s)", lfd, lab.Sockaddr(sa)); err != nil {
		return r, err
	}
	if err := d.Sys(0, unix.Listen(lfd, 8), "listen(%d, 8)", lfd); err != nil {
		return r, err
	}
	bound, _ := unix.Getsockname(lfd)
	addr := lab.AddrPortOf(bound)
	r.FlagsBefore, err = unix.FcntlInt(uintptr(lfd), unix.F_GETFL, 0)
	if d.Sys(r.FlagsBefore, err, "fcntl(%d, F_GETFL)", lfd) != nil {
		return r, err
	}
	d.Result("%s", openFlags(r.FlagsBefore))
	_, err = unix.FcntlInt(uintptr(lfd), unix.F_SETFL, r.FlagsBefore|unix.O_NONBLOCK)
	if d.Sys(0, err, "fcntl(%d, F_SETFL, %s)", lfd, openFlags(r.FlagsBefore|unix.O_NONBLOCK)) != nil {
		return r, err
	}
	r.FlagsAfter, _ = unix.FcntlInt(uintptr(lfd), unix.F_GETFL, 0)
	d.Sys(r.FlagsAfter, nil, "fcntl(%d, F_GETFL)", lfd)
	d.Result("%s", openFlags(r.FlagsAfter))

	d.Step("accept with an empty accept queue: EAGAIN instead of sleeping")
	nfd, _, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC)
	d.Sys(nfd, err, "accept4(%d, ..., SOCK_CLOEXEC)", lfd)
	r.AcceptErr = err
	if err == nil {
		closeFDs(d, nfd)
		return r, errors.New("accept on an empty non-blocking listener succeeded")
	}
	d.Say("A blocking accept() would have put the thread to sleep; an event loop serving many " +
		"sockets must never sleep on one of them, so every fd it watches is non-blocking.")

	d.Step("accept4(SOCK_NONBLOCK): the new socket is non-blocking from birth")
	cfd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if d.Sys(cfd, err, "socket(AF_INET, SOCK_STREAM|SOCK_CLOEXEC, 0)") != nil {
		return r, err
	}
	defer closeFDs(d, cfd)
	if err := d.Sys(0, unix.Connect(cfd, lab.SockaddrOf(addr)), "connect(%d, %s)", cfd, lab.Sockaddr(lab.SockaddrOf(addr))); err != nil {
		return r, err
	}
	sfd, peer, err := unix.Accept4(lfd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
	if d.Sys(sfd, err, "accept4(%d, %s, SOCK_NONBLOCK|SOCK_CLOEXEC)", lfd, lab.Sockaddr(peer)) != nil {
		return r, err
	}
	defer closeFDs(d, sfd)
	r.AcceptedFlags, _ = unix.FcntlInt(uintptr(sfd), unix.F_GETFL, 0)
	d.Sys(r.AcceptedFlags, nil, "fcntl(%d, F_GETFL)", sfd)
	d.Result("%s — one system call saved per connection", openFlags(r.AcceptedFlags))

	d.Step("read with nothing to read: EAGAIN")
	buf := make([]byte, 64)
	n, err := unix.Read(sfd, buf)
	d.Sys(n, err, "read(%d, ..., 64)", sfd)
	r.ReadErr = err
	d.Kernel(sockdiag.Filter{Port: addr.Port()})
	return r, nil
}

// --- B. Level- versus edge-triggered ------------------------------------------------------

// pair is one TCP connection on loopback: the client's fd and the server's non-blocking fd.
type pair struct {
	lfd, cfd, sfd int
	client, srv   netip.AddrPort
}

func (p pair) close(d *lab.Demo) { closeFDs(d, p.cfd, p.sfd, p.lfd) }

// connectedPair makes a connection whose server end is non-blocking.
func connectedPair(d *lab.Demo) (pair, error) {
	p := pair{lfd: -1, cfd: -1, sfd: -1}
	var err error
	p.lfd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if d.Sys(p.lfd, err, "socket(AF_INET, SOCK_STREAM|SOCK_CLOEXEC, 0)") != nil {
		return p, err
	}
	sa := lab.SockaddrOf(loopback)
	if err := d.Sys(0, unix.Bind(p.lfd, sa), "bind(%d, %s)", p.lfd, lab.Sockaddr(sa)); err != nil {
		p.close(d)
		return p, err
	}
	if err := d.Sys(0, unix.Listen(p.lfd, 8), "listen(%d, 8)", p.lfd); err != nil {
		p.close(d)
		return p, err
	}
	bound, _ := unix.Getsockname(p.lfd)
	p.srv = lab.AddrPortOf(bound)
	p.cfd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if d.Sys(p.cfd, err, "socket(AF_INET, SOCK_STREAM|SOCK_CLOEXEC, 0)") != nil {
		p.close(d)
		return p, err
	}
	err = unix.Connect(p.cfd, lab.SockaddrOf(p.srv))
	if d.Sys(0, err, "connect(%d, %s)", p.cfd, lab.Sockaddr(lab.SockaddrOf(p.srv))) != nil {
		p.close(d)
		return p, err
	}
	local, _ := unix.Getsockname(p.cfd)
	p.client = lab.AddrPortOf(local)
	p.sfd, _, err = unix.Accept4(p.lfd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
	if d.Sys(p.sfd, err, "accept4(%d, %s, SOCK_NONBLOCK|SOCK_CLOEXEC)", p.lfd, lab.Sockaddr(lab.SockaddrOf(p.client))) != nil {
		p.close(d)
		return p, err
	}
	return p, nil
}

// wait calls epoll_wait once (retrying EINTR), narrates what it returned and returns the
// event masks, in order.
func wait(d *lab.Demo, epfd int, timeoutMS int, why string) ([]uint32, error) {
	events := make([]unix.EpollEvent, 8)
	var n int
	var err error
	for range 100 {
		if n, err = unix.EpollWait(epfd, events, timeoutMS); err != unix.EINTR {
			break
		}
	}
	if err != nil {
		d.Sys(n, err, "epoll_wait(%d, ..., 8, %d)", epfd, timeoutMS)
		return nil, err
	}
	d.Sys(n, nil, "epoll_wait(%d, %s, 8, %d)%s", epfd, EventsString(events[:n]), timeoutMS, why)
	masks := make([]uint32, n)
	for i, ev := range events[:n] {
		masks[i] = ev.Events
	}
	return masks, nil
}

// waitRecvQ waits until the kernel reports at least n unread bytes on the socket from local
// to remote, so a following "nothing is reported" is not a race with data still in flight.
func waitRecvQ(local, remote netip.AddrPort, n uint32) error {
	var s sockdiag.Socket
	var err error
	queued := lab.Poll(5*time.Second, func() bool {
		var found bool
		s, found, err = sockdiag.Find(local, remote)
		return err != nil || (found && s.RecvQ >= n)
	})
	switch {
	case err != nil:
		return err
	case !queued:
		return fmt.Errorf("%v never had %d bytes queued (last: %v)", local, n, s)
	}
	return nil
}

// TriggerResult counts the events each epoll_wait returned, level- and edge-triggered.
type TriggerResult struct {
	// Level: three waits with 12 bytes unread, then one after reading 5.
	Level []int
	// Edge: the same waits, then one after 3 more bytes arrive, then one more.
	Edge []int
}

func levelVersusEdge(d *lab.Demo) (TriggerResult, error) {
	var r TriggerResult
	d.Step("One connection; two epoll instances watch its server end")
	p, err := connectedPair(d)
	if err != nil {
		return r, err
	}
	defer p.close(d)
	lt, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if d.Sys(lt, err, "epoll_create1(EPOLL_CLOEXEC)  (level-triggered)") != nil {
		return r, err
	}
	defer closeFDs(d, lt)
	et, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if d.Sys(et, err, "epoll_create1(EPOLL_CLOEXEC)  (edge-triggered)") != nil {
		return r, err
	}
	defer closeFDs(d, et)
	for _, e := range []struct {
		epfd   int
		events uint32
	}{{lt, unix.EPOLLIN}, {et, unix.EPOLLIN | unix.EPOLLET}} {
		ev := unix.EpollEvent{Events: e.events, Fd: int32(p.sfd)}
		err := unix.EpollCtl(e.epfd, unix.EPOLL_CTL_ADD, p.sfd, &ev)
		if d.Sys(0, err, "epoll_ctl(%d, EPOLL_CTL_ADD, %d, {%s})", e.epfd, p.sfd, EventString(e.events)) != nil {
			return r, err
		}
	}

	d.Step("The client sends 12 bytes; nobody reads them")
	msg := []byte("hello, epoll")
	n, err := unix.Write(p.cfd, msg)
	if d.Sys(n, err, "write(%d, %q, %d)", p.cfd, msg, len(msg)) != nil {
		return r, err
	}
	if err := waitRecvQ(p.srv, p.client, uint32(len(msg))); err != nil {
		return r, err
	}
	d.Kernel(sockdiag.Tuple(p.srv, p.client))
	count := func(epfd int, timeout int, why string) (int, error) {
		masks, err := wait(d, epfd, timeout, why)
		return len(masks), err
	}
	for i := range 3 {
		c, err := count(lt, 0, fmt.Sprintf("  LT, wait %d", i+1))
		if err != nil {
			return r, err
		}
		r.Level = append(r.Level, c)
	}
	for i := range 3 {
		c, err := count(et, 0, fmt.Sprintf("  ET, wait %d", i+1))
		if err != nil {
			return r, err
		}
		r.Edge = append(r.Edge, c)
	}
	d.Say("Level-triggered reports the fd while the condition holds (data is unread); " +
		"edge-triggered reports a change once: the data's arrival.")

	d.Step("Read 5 of the 12 bytes: LT still reports, ET stays silent")
	buf := make([]byte, 5)
	n, err = unix.Read(p.sfd, buf)
	if d.Sys(n, err, "read(%d, %q, 5)", p.sfd, buf[:max(n, 0)]) != nil {
		return r, err
	}
	c, err := count(lt, 0, "  LT: 7 bytes still unread")
	if err != nil {
		return r, err
	}
	r.Level = append(r.Level, c)
	c, err = count(et, 0, "  ET: a partial read re-arms nothing")
	if err != nil {
		return r, err
	}
	r.Edge = append(r.Edge, c)
	d.Say("This is why an edge-triggered server must read until EAGAIN: the 7 bytes left " +
		"would otherwise wait until the client happens to send more.")

	d.Step("3 more bytes arrive: a new edge")
	n, err = unix.Write(p.cfd, []byte("!!!"))
	if d.Sys(n, err, `write(%d, "!!!", 3)`, p.cfd) != nil {
		return r, err
	}
	for _, why := range []string{"  ET: new data is an edge", "  ET: and only one"} {
		timeout := 0
		if len(r.Edge) == 4 {
			timeout = 5000 // wait for the arrival itself
		}
		c, err := count(et, timeout, why)
		if err != nil {
			return r, err
		}
		r.Edge = append(r.Edge, c)
	}
	return r, nil
}

// --- C. EPOLLONESHOT ---------------------------------------------------------------------

// OneshotResult counts events around a one-shot entry.
type OneshotResult struct {
	First     int // data arrives: reported
	Disarmed  int // more data arrives: not reported
	Rearmed   int // after EPOLL_CTL_MOD: reported (the data is still there)
	AfterMore int // and disarmed again
}

func oneshotRearm(d *lab.Demo) (OneshotResult, error) {
	var r OneshotResult
	d.Step("Watch a connection with EPOLLIN|EPOLLONESHOT")
	p, err := connectedPair(d)
	if err != nil {
		return r, err
	}
	defer p.close(d)
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if d.Sys(epfd, err, "epoll_create1(EPOLL_CLOEXEC)") != nil {
		return r, err
	}
	defer closeFDs(d, epfd)
	interest := uint32(unix.EPOLLIN | unix.EPOLLONESHOT)
	ev := unix.EpollEvent{Events: interest, Fd: int32(p.sfd)}
	err = unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, p.sfd, &ev)
	if d.Sys(0, err, "epoll_ctl(%d, EPOLL_CTL_ADD, %d, {%s})", epfd, p.sfd, EventString(interest)) != nil {
		return r, err
	}

	d.Step("Data arrives: reported once, then the entry is disarmed")
	n, err := unix.Write(p.cfd, []byte("job 1"))
	if d.Sys(n, err, `write(%d, "job 1", 5)`, p.cfd) != nil {
		return r, err
	}
	masks, err := wait(d, epfd, 5000, "  a worker would take fd now")
	if err != nil {
		return r, err
	}
	r.First = len(masks)
	n, err = unix.Write(p.cfd, []byte("job 2"))
	if d.Sys(n, err, `write(%d, "job 2", 5)`, p.cfd) != nil {
		return r, err
	}
	if err := waitRecvQ(p.srv, p.client, 10); err != nil {
		return r, err
	}
	d.Kernel(sockdiag.Tuple(p.srv, p.client))
	masks, err = wait(d, epfd, 0, "  10 bytes unread, yet silent: disarmed")
	if err != nil {
		return r, err
	}
	r.Disarmed = len(masks)
	d.Say("While the entry is disarmed no other thread can be handed this fd: that is what " +
		"keeps two workers off one connection.")

	d.Step("Done: EPOLL_CTL_MOD re-arms, and the kernel checks readiness at once")
	err = unix.EpollCtl(epfd, unix.EPOLL_CTL_MOD, p.sfd, &ev)
	if d.Sys(0, err, "epoll_ctl(%d, EPOLL_CTL_MOD, %d, {%s})", epfd, p.sfd, EventString(interest)) != nil {
		return r, err
	}
	masks, err = wait(d, epfd, 0, "  the unread data is reported again")
	if err != nil {
		return r, err
	}
	r.Rearmed = len(masks)
	masks, err = wait(d, epfd, 0, "  and the entry is disarmed again")
	if err != nil {
		return r, err
	}
	r.AfterMore = len(masks)
	return r, nil
}

// --- D. EPOLLRDHUP -----------------------------------------------------------------------

// RDHUPResult holds the event masks around a half-close.
type RDHUPResult struct {
	AfterPeerShutdown uint32 // the client did shutdown(SHUT_WR)
	ReadAfter         int    // read() then returns 0
	AfterBothShut     uint32 // the server shut its side too
	ServerState       sockdiag.State
}

func rdhupOnHalfClose(d *lab.Demo) (RDHUPResult, error) {
	var r RDHUPResult
	d.Step("Watch a connection with EPOLLIN|EPOLLRDHUP")
	p, err := connectedPair(d)
	if err != nil {
		return r, err
	}
	defer p.close(d)
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if d.Sys(epfd, err, "epoll_create1(EPOLL_CLOEXEC)") != nil {
		return r, err
	}
	defer closeFDs(d, epfd)
	interest := uint32(unix.EPOLLIN | unix.EPOLLRDHUP)
	ev := unix.EpollEvent{Events: interest, Fd: int32(p.sfd)}
	err = unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, p.sfd, &ev)
	if d.Sys(0, err, "epoll_ctl(%d, EPOLL_CTL_ADD, %d, {%s})", epfd, p.sfd, EventString(interest)) != nil {
		return r, err
	}

	d.Step("The client half-closes: shutdown(SHUT_WR) sends FIN")
	if err := d.Sys(0, unix.Shutdown(p.cfd, unix.SHUT_WR), "shutdown(%d, SHUT_WR)", p.cfd); err != nil {
		return r, err
	}
	masks, err := wait(d, epfd, 5000, "")
	if err != nil {
		return r, err
	}
	if len(masks) == 1 {
		r.AfterPeerShutdown = masks[0]
	}
	d.Say("EPOLLRDHUP says the peer will send nothing more, without a read() to find out. " +
		"The client can still read: an echo server finishes writing, then closes.")
	buf := make([]byte, 16)
	r.ReadAfter, err = unix.Read(p.sfd, buf)
	d.Sys(r.ReadAfter, err, "read(%d, ..., 16)", p.sfd)
	d.Kernel(sockdiag.Filter{Ports: []uint16{p.client.Port()}})

	d.Step("The server shuts its side too: both directions are closed, EPOLLHUP joins")
	if err := d.Sys(0, unix.Shutdown(p.sfd, unix.SHUT_WR), "shutdown(%d, SHUT_WR)", p.sfd); err != nil {
		return r, err
	}
	masks, err = wait(d, epfd, 5000, "")
	if err != nil {
		return r, err
	}
	if len(masks) == 1 {
		r.AfterBothShut = masks[0]
	}
	// EPOLLHUP comes with the shutdown itself; the server end passes from LAST_ACK to CLOSE
	// only when the client's ACK of its FIN arrives. On loopback that has usually happened
	// already; ask the kernel until it has, with a deadline, rather than assume it.
	lab.Poll(5*time.Second, func() bool {
		r.ServerState, _ = sockdiag.StateOf(p.sfd)
		return r.ServerState == sockdiag.Close
	})
	d.Say("TCP_INFO on fd %d: %v (sock_diag lists no CLOSE sockets; the client's end waits in TIME_WAIT)", p.sfd, r.ServerState)
	d.Kernel(sockdiag.Filter{Ports: []uint16{p.client.Port()}})
	return r, nil
}

// --- E. The worker pool ------------------------------------------------------------------

// PoolResult is what the clients of part E received.
type PoolResult struct {
	Sent, Echoed [][]byte
	Overlaps     int64
}

func workerPool(d *lab.Demo, workers, clients int) (PoolResult, error) {
	var r PoolResult
	const work = 20 * time.Millisecond
	d.Step("Start the server: %d workers, EPOLLONESHOT, %v of CPU work per message", workers, work)
	s, err := Listen(ServerConfig{Addr: loopback, Workers: workers, Backlog: 16, Work: work}, d.Narrator)
	if err != nil {
		return r, err
	}
	s.trace = d.Narrator
	served := make(chan error, 1)
	go func() { served <- s.Serve() }()
	stop := func() error { return stopServer(s, served) }

	d.Step("%d clients connect and each sends one line", clients)
	fds := make([]int, 0, clients)
	defer func() { closeNarrated(d.Narrator, fds...) }()
	for i := range clients {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			_ = stop()
			return r, err
		}
		fds = append(fds, fd)
		if err := unix.Connect(fd, lab.SockaddrOf(s.Addr)); err != nil {
			_ = stop()
			return r, err
		}
		// Wait until the server accepted it, so the trace reads in order.
		local, _ := unix.Getsockname(fd)
		if err := waitAccepted(s.Addr, lab.AddrPortOf(local)); err != nil {
			_ = stop()
			return r, err
		}
		d.Say("client %d connected from %v", i+1, lab.AddrPortOf(local))
	}
	d.Say("While a worker is busy with one message, the loop hands the next ready fd to the " +
		"other worker; the third waits for whichever finishes first.")
	for i, fd := range fds {
		msg := []byte(fmt.Sprintf("hello from client %d", i+1))
		r.Sent = append(r.Sent, msg)
		if _, err := unix.Write(fd, msg); err != nil {
			_ = stop()
			return r, err
		}
	}
	for i, fd := range fds {
		got, err := readFull(fd, len(r.Sent[i]), 5*time.Second)
		r.Echoed = append(r.Echoed, got)
		if err != nil {
			_ = stop()
			return r, err
		}
	}
	for i := range fds {
		d.Say("client %d got back %q", i+1, r.Echoed[i])
	}
	d.Kernel(sockdiag.Filter{Port: s.Addr.Port()})

	d.Step("Shut down: write the eventfd, epoll_wait wakes, every fd is closed")
	err = stop()
	d.Say("the clients close theirs:")
	r.Overlaps = s.Stats.Overlaps.Load()
	return r, err
}

// stopTimeout bounds how long stopServer waits for Serve to return after the wake-up.
const stopTimeout = 10 * time.Second

// stopServer wakes s and waits for its Serve, which delivers its result on served, to return.
// The wait is bounded: a loop that does not wake up is a bug to report, not to hang on.
func stopServer(s *Server, served <-chan error) error {
	if err := s.Wake(); err != nil {
		return fmt.Errorf("waking the server: %w", err)
	}
	select {
	case err := <-served:
		return err
	case <-time.After(stopTimeout):
		return fmt.Errorf("the server's Serve did not return within %v of the eventfd wake-up", stopTimeout)
	}
}

// waitAccepted waits until the kernel shows the server end of a connection held by an fd
// (inode != 0), which happens only once accept() has taken it from the accept queue.
func waitAccepted(srv, client netip.AddrPort) error {
	var err error
	accepted := lab.Poll(5*time.Second, func() bool {
		var s sockdiag.Socket
		var found bool
		s, found, err = sockdiag.Find(srv, client)
		return err != nil || (found && s.HasFD())
	})
	switch {
	case err != nil:
		return err
	case !accepted:
		return fmt.Errorf("server never accepted %v", client)
	}
	return nil
}

// readFull reads exactly n bytes from a blocking fd, giving up after timeout.
func readFull(fd, n int, timeout time.Duration) ([]byte, error) {
	buf := make([]byte, n)
	got := 0
	deadline := time.Now().Add(timeout)
	for got < n {
		left := time.Until(deadline)
		if left <= 0 {
			return buf[:got], fmt.Errorf("read: only %d of %d bytes within %v", got, n, timeout)
		}
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		if _, err := unix.Poll(pfd, int(left.Milliseconds())+1); err != nil && err != unix.EINTR {
			return buf[:got], err
		}
		if pfd[0].Revents == 0 {
			continue
		}
		m, err := unix.Read(fd, buf[got:])
		if err == unix.EINTR || err == unix.EAGAIN {
			continue
		}
		if err != nil {
			return buf[:got], err
		}
		if m == 0 {
			return buf[:got], fmt.Errorf("read: EOF after %d of %d bytes", got, n)
		}
		got += m
	}
	return buf, nil
}

// --- F. Backpressure ---------------------------------------------------------------------

// Queues is what sock_diag says about both ends of one connection.
type Queues struct{ ClientSendQ, ClientRecvQ, ServerSendQ, ServerRecvQ uint32 }

// BackpressureResult is what part F measured: bytes the client managed to send, the kernel's
// queues once everything stopped moving, and what the server process holds, computed from those.
type BackpressureResult struct {
	Sent   int
	Queues Queues
	Held   int // sent − every queue between the two processes
	Chunk  int // the server's bound
	Other  string
}

// held is what the server process holds of sent bytes, from the kernel's queues alone: what
// it took from its socket (sent − client Send-Q − server Recv-Q) minus what it wrote and the
// client has not read (server Send-Q + client Recv-Q).
func (q Queues) held(sent int) int {
	read := sent - int(q.ClientSendQ) - int(q.ServerRecvQ)
	written := int(q.ServerSendQ) + int(q.ClientRecvQ)
	return read - written
}

// settledSend is what sendUntilSettled saw.
type settledSend struct {
	sent, calls int
	lastErr     error  // the last send call's error (EAGAIN)
	queues      Queues // the kernel's queues once they stayed still
}

// sendUntilSettled sends 32 KiB at a time on the connected non-blocking fd, never reading,
// until send() returns EAGAIN and the kernel's queues between client and server stay still.
// Byte i of what it sends is stream(i), or 0 when stream is nil.
func sendUntilSettled(fd int, client, server netip.AddrPort, stream func(i int) byte) (settledSend, error) {
	var r settledSend
	chunk := make([]byte, 32<<10)
	const limit = 256 << 20 // far beyond every buffer together: an unbounded server would reach it
	// Settled means: send() returns EAGAIN and the four queues have not changed for 600 ms,
	// longer than a delayed ACK (at most 200 ms) — until then a segment may sit in the
	// receiver's queue and, not yet acknowledged, in the sender's too.
	var lastChange time.Time
	deadline := time.Now().Add(20 * time.Second)
	for lastChange.IsZero() || time.Since(lastChange) < 600*time.Millisecond {
		if time.Now().After(deadline) || r.sent >= limit {
			return r, fmt.Errorf("the client could still send after %d bytes: no backpressure", r.sent)
		}
		for r.sent < limit {
			if stream != nil {
				for i := range chunk {
					chunk[i] = stream(r.sent + i)
				}
			}
			n, err := unix.SendmsgN(fd, chunk, nil, nil, unix.MSG_NOSIGNAL)
			r.calls++
			if err != nil {
				r.lastErr = err
				break
			}
			r.sent += n
			lastChange = time.Time{}
		}
		q, found, err := queuesOf(client, server)
		if err != nil {
			return r, err
		}
		if !found || q != r.queues || lastChange.IsZero() {
			r.queues, lastChange = q, time.Now()
		}
		time.Sleep(10 * time.Millisecond) // a poll interval: the kernel's queues decide
	}
	return r, nil
}

func slowReader(d *lab.Demo, cfg ServerConfig) (r BackpressureResult, err error) {
	r = BackpressureResult{Chunk: cfg.ChunkSize}
	d.Step("Start a server that reads at most %d bytes of a connection at a time", cfg.ChunkSize)
	d.Say("mode: %s", cfg.Mode())
	cfg.Addr = loopback
	s, err := Listen(cfg, lab.Quiet())
	if err != nil {
		return r, err
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve() }()
	defer func() {
		if serr := stopServer(s, served); err == nil {
			err = serr
		}
	}()
	d.Result("listening on %s", s.Addr)

	d.Step("A client with small buffers sends 32 KiB at a time and never reads")
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if d.Sys(fd, err, "socket(AF_INET, SOCK_STREAM|SOCK_CLOEXEC, 0)") != nil {
		return r, err
	}
	defer closeFDs(d, fd)
	// Small client buffers only make the demo quicker; the server keeps the kernel defaults.
	for _, opt := range []struct {
		name string
		opt  int
	}{{"SO_RCVBUF", unix.SO_RCVBUF}, {"SO_SNDBUF", unix.SO_SNDBUF}} {
		err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, opt.opt, 64<<10)
		if d.Sys(0, err, "setsockopt(%d, SOL_SOCKET, %s, [65536])", fd, opt.name) != nil {
			return r, err
		}
	}
	err = unix.Connect(fd, lab.SockaddrOf(s.Addr))
	if d.Sys(0, err, "connect(%d, %s)", fd, lab.Sockaddr(lab.SockaddrOf(s.Addr))) != nil {
		return r, err
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		return r, err
	}
	local, _ := unix.Getsockname(fd)
	client := lab.AddrPortOf(local)

	settled, err := sendUntilSettled(fd, client, s.Addr, nil)
	r.Sent, r.Queues = settled.sent, settled.queues
	if err != nil {
		return r, err
	}
	d.Sys(-1, settled.lastErr, "sendmsg(%d, ..., 32768, MSG_NOSIGNAL)", fd)
	d.Say("after %d calls and %d bytes, and the queues stay still:", settled.calls, r.Sent)
	d.Kernel(sockdiag.Filter{Ports: []uint16{client.Port()}})
	q := r.Queues
	r.Held = q.held(r.Sent)
	d.Say("The server stopped reading this client once one chunk of its echo was stuck: the data "+
		"waits in the kernel (server Recv-Q %d, Send-Q %d; client Recv-Q %d, Send-Q %d), and the "+
		"server process holds sent − all four = %d bytes, at most one chunk (%d).",
		q.ServerRecvQ, q.ServerSendQ, q.ClientRecvQ, q.ClientSendQ, r.Held, cfg.ChunkSize)

	d.Step("Meanwhile another client is served as usual")
	other, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return r, err
	}
	defer closeFDs(d, other)
	if err := unix.Connect(other, lab.SockaddrOf(s.Addr)); err != nil {
		return r, err
	}
	if _, err := unix.Write(other, []byte("still served")); err != nil {
		return r, err
	}
	got, err := readFull(other, len("still served"), 10*time.Second)
	r.Other = string(got)
	if err != nil {
		return r, err
	}
	d.Say("the other client got back %q", r.Other)
	return r, nil
}

// queuesOf asks sock_diag for both ends of one connection.
func queuesOf(client, server netip.AddrPort) (q Queues, found bool, err error) {
	c, okc, err := sockdiag.Find(client, server)
	if err != nil {
		return q, false, err
	}
	s, oks, err := sockdiag.Find(server, client)
	if err != nil || !okc || !oks {
		return q, false, err
	}
	return Queues{c.SendQ, c.RecvQ, s.SendQ, s.RecvQ}, true, nil
}
