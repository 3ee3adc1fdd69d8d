//go:build linux

package main

import (
	"errors"
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"

	"socklab/internal/lab"
	"socklab/internal/netlab"
	"socklab/internal/sockdiag"
)

// D. SO_REUSEPORT (端口复用): several listeners on one address, the kernel spreading new
// connections among them by a hash of the 4-tuple (socket(7), SO_REUSEPORT, Linux 3.9).

// reusePortReport is what the kernel reported in part D.
type reusePortReport struct {
	Addr netip.AddrPort
	// Queued is each listener's accept-queue length (sock_diag Recv-Q of its LISTEN row)
	// after all clients connected and before any accept().
	Queued [2]int
	// Third is a third listener without SO_REUSEPORT; ThirdReuseAddr one with SO_REUSEADDR
	// only. Both are refused.
	Third, ThirdReuseAddr listenAttempt
	// Survivors counts the accepted connections (of both listeners) that sock_diag still lists
	// as ESTABLISHED after listener 1 was closed; Accepted is how many there were.
	Survivors, Accepted int
	// Echoed is what listener 2's first connection read after listener 1 closed.
	Echoed string
	// Later is listener 2's accept-queue length after more clients connected with listener 1
	// gone; LaterCount is how many connected.
	Later, LaterCount int
}

// inode is the socket inode behind fd, which sock_diag reports for each socket: it tells the
// kernel's LISTEN rows apart.
func inode(fd int) (uint32, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, err
	}
	return uint32(st.Ino), nil
}

// queueLengths returns the accept-queue length of each listener fd, from sock_diag.
func queueLengths(addr netip.AddrPort, fds ...int) ([]int, error) {
	socks, err := sockdiag.Dump(sockdiag.TCP, sockdiag.Filter{Local: addr, States: []sockdiag.State{sockdiag.Listen}})
	if err != nil {
		return nil, err
	}
	out := make([]int, len(fds))
	for i, fd := range fds {
		ino, err := inode(fd)
		if err != nil {
			return nil, err
		}
		for _, s := range socks {
			if s.Inode == ino {
				out[i] = int(s.RecvQ)
			}
		}
	}
	return out, nil
}

// awaitQueued waits until the listeners' queues hold want connections in total.
func awaitQueued(addr netip.AddrPort, want int, fds ...int) ([]int, error) {
	var q []int
	var err error
	if lab.Poll(waitLimit, func() bool {
		q, err = queueLengths(addr, fds...)
		sum := 0
		for _, v := range q {
			sum += v
		}
		return err == nil && sum == want
	}) {
		return q, nil
	}
	return q, fmt.Errorf("accept queues of %v: %v, want %d in total (err %v)", addr, q, want, err)
}

// stepReusePort opens two SO_REUSEPORT listeners on one address, tries a third without the
// option, connects clients clients, and closes listener 1 while its and listener 2's
// connections live on.
func stepReusePort(n *lab.Narrator, clients int) (rep reusePortReport, err error) {
	var fds []int // every fd opened, closed on return
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	n.Step("two listeners on one address, both with SO_REUSEPORT")
	l1 := openListener(n, loopback0, false, true)
	if !l1.OK() {
		return rep, fmt.Errorf("%s: %w", l1.Call, l1.Err)
	}
	fds = append(fds, l1.FD)
	rep.Addr = l1.Addr
	l2 := openListener(n, l1.Addr, false, true)
	if !l2.OK() {
		return rep, fmt.Errorf("second listener: %s: %w", l2.Call, l2.Err)
	}
	fds = append(fds, l2.FD)

	n.Step("a third listener without SO_REUSEPORT is refused, even with SO_REUSEADDR")
	rep.Third = openListener(n, l1.Addr, false, false)
	rep.ThirdReuseAddr = openListener(n, l1.Addr, true, false)
	for _, a := range []listenAttempt{rep.Third, rep.ThirdReuseAddr} {
		if a.OK() {
			fds = append(fds, a.FD)
		}
	}

	n.Step("%d clients connect; nobody calls accept() yet", clients)
	var clientFDs []int
	for range clients {
		fd, _, err := dial(lab.Quiet(), l1.Addr)
		if err != nil {
			return rep, err
		}
		fds = append(fds, fd)
		clientFDs = append(clientFDs, fd)
	}
	q, err := awaitQueued(l1.Addr, clients, l1.FD, l2.FD)
	if err != nil {
		return rep, err
	}
	rep.Queued = [2]int{q[0], q[1]}
	n.Kernel(sockdiag.Filter{Local: l1.Addr, States: []sockdiag.State{sockdiag.Listen}})
	n.Say("Recv-Q of a LISTEN row is its accept queue: the kernel put %d connections in "+
		"listener %d's queue and %d in listener %d's, choosing by a hash of each 4-tuple.",
		q[0], l1.FD, q[1], l2.FD)

	n.Step("each listener accepts its own; then listener %d is closed", l1.FD)
	type accepted struct {
		fd   int
		peer netip.AddrPort
	}
	var of [2][]accepted
	for i, l := range []int{l1.FD, l2.FD} {
		for range q[i] {
			fd, peer, err := acceptOne(lab.Quiet(), l)
			if err != nil {
				return rep, err
			}
			fds = append(fds, fd)
			of[i] = append(of[i], accepted{fd, peer})
		}
	}
	n.Sys(len(of[0]), nil, "accept4(%d, ...) × %d", l1.FD, len(of[0]))
	n.Sys(len(of[1]), nil, "accept4(%d, ...) × %d", l2.FD, len(of[1]))
	closeFD(n, l1.FD)
	fds = fds[1:] // l1 was fds[0]
	for _, list := range of {
		for _, a := range list {
			rep.Accepted++
			if s, found, err := sockdiag.Find(l1.Addr, a.peer); err == nil && found && s.State == sockdiag.Established {
				rep.Survivors++
			}
		}
	}
	n.Say("sock_diag still lists %d of the %d accepted connections as ESTABLISHED: a "+
		"listener's close() touches only its queue, never connections already accepted.",
		rep.Survivors, rep.Accepted)
	if len(of[1]) == 0 {
		return rep, errors.New("listener 2 got no connection to test")
	}
	// The client of listener 2's first connection is found by its port among clientFDs.
	peer := of[1][0]
	client := -1
	for _, fd := range clientFDs {
		if sa, err := unix.Getsockname(fd); err == nil && lab.AddrPortOf(sa) == peer.peer {
			client = fd
		}
	}
	if client < 0 {
		return rep, errors.New("client of listener 2's first connection not found")
	}
	_, err = unix.Write(client, []byte("still here"))
	n.Sys(10, err, "write(%d, \"still here\", 10)", client)
	if err != nil {
		return rep, err
	}
	buf := make([]byte, 64)
	if err := waitReadable(peer.fd, waitLimit); err != nil {
		return rep, err
	}
	nr, err := unix.Read(peer.fd, buf)
	n.Sys(nr, err, "read(%d, ...)", peer.fd)
	if err != nil {
		return rep, err
	}
	rep.Echoed = string(buf[:nr])

	rep.LaterCount = clients / 10
	n.Step("%d more clients: all go to the listener that is left", rep.LaterCount)
	for range rep.LaterCount {
		fd, _, err := dial(lab.Quiet(), l1.Addr)
		if err != nil {
			return rep, err
		}
		fds = append(fds, fd)
	}
	later, err := awaitQueued(l1.Addr, rep.LaterCount, l2.FD)
	if err != nil {
		return rep, err
	}
	rep.Later = later[0]
	n.Kernel(sockdiag.Filter{Local: l1.Addr, States: []sockdiag.State{sockdiag.Listen}})
	return rep, nil
}

// stepLiveConnection leaves an ESTABLISHED connection on the port after its listener is gone
// (the listener had oldReuse), then tries a new listener with or without SO_REUSEADDR.
func stepLiveConnection(n *lab.Narrator, oldReuse, newReuse bool) (sockdiag.Socket, listenAttempt, error) {
	l := openListener(n, loopback0, oldReuse, false)
	if !l.OK() {
		return sockdiag.Socket{}, l, fmt.Errorf("%s: %w", l.Call, l.Err)
	}
	c, err := connectAndAccept(n, l.FD, l.Addr)
	if err != nil {
		unix.Close(l.FD)
		return sockdiag.Socket{}, l, err
	}
	defer func() { unix.Close(c.Client); unix.Close(c.Server) }()
	closeFD(n, l.FD)
	live, err := awaitState(c.ServerAddr, c.ClientAddr, sockdiag.Established)
	if err != nil {
		return live, l, err
	}
	// Only the connection's two ESTABLISHED ends: a TIME_WAIT left by an earlier step whose
	// peer happened to use this port number would match the port too, and is not the lesson.
	n.Kernel(sockdiag.Filter{Port: l.Addr.Port(), States: []sockdiag.State{sockdiag.Established}})
	again := openListener(n, l.Addr, newReuse, false)
	if again.OK() {
		closeFD(n, again.FD)
	}
	return live, again, nil
}

func partReusePort(d *lab.Demo) error {
	rep, err := stepReusePort(d.Narrator, 100)
	if err != nil {
		return err
	}
	d.Say("Listener 2's connection still carries data (%q), and the %d later clients all "+
		"queued on listener 2 (Recv-Q %d).", rep.Echoed, rep.LaterCount, rep.Later)

	d.Step("a live connection on the port, its listener (SO_REUSEADDR) gone")
	_, plain, err := stepLiveConnection(d.Narrator, true, false)
	if err != nil {
		return err
	}
	d.Say("Without SO_REUSEADDR the new listener gets %s: the ESTABLISHED socket holds the port.",
		plain.Result())
	_, withRA, err := stepLiveConnection(lab.Quiet(), true, true)
	if err != nil {
		return err
	}
	d.Say("Run again with SO_REUSEADDR on the new listener too: %s. Both sockets carry the "+
		"option and the old one is not listening, so the kernel lets them share the port.",
		withRA.Result())

	if _, err := stepQueuedOnClose(d.Narrator, 20, false); err != nil {
		return err
	}
	if d.NeedPrivate("tcp_migrate_req=1 (a sysctl)") {
		if _, err := stepQueuedOnClose(d.Narrator, 20, true); err != nil {
			return err
		}
	}
	return nil
}

// queuedOnCloseReport is what happened to connections still waiting in a closed listener's
// accept queue.
type queuedOnCloseReport struct {
	Migrate    string // net.ipv4.tcp_migrate_req during the experiment
	Queued     [2]int // accept-queue lengths before listener 1 closed
	Reset      int    // clients the kernel then showed in CLOSE (TCP_INFO): reset
	Listener2  int    // listener 2's queue length afterwards
	Clients    int
	Unaccepted int // connections listener 1 never accepted (= Queued[0])
}

// stepQueuedOnClose connects clients to two SO_REUSEPORT listeners, accepts nothing, and closes
// listener 1. With net.ipv4.tcp_migrate_req=0 (the default) the connections in its queue are
// reset; with 1 (Linux 5.14) the kernel moves them to listener 2. migrate selects the value;
// setting it needs the private namespace.
func stepQueuedOnClose(n *lab.Narrator, clients int, migrate bool) (rep queuedOnCloseReport, err error) {
	rep.Clients = clients
	var fds []int
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	if migrate {
		restore, err := netlab.SetSysctls("net.ipv4.tcp_migrate_req", "1")
		if err != nil {
			return rep, err
		}
		defer restore()
	}
	if rep.Migrate, err = netlab.Sysctl("net.ipv4.tcp_migrate_req"); err != nil {
		return rep, err
	}
	n.Step("clients waiting in a closing listener's queue (tcp_migrate_req=%s)", rep.Migrate)
	l1 := openListener(lab.Quiet(), loopback0, false, true)
	if !l1.OK() {
		return rep, fmt.Errorf("%s: %w", l1.Call, l1.Err)
	}
	fds = append(fds, l1.FD)
	l2 := openListener(lab.Quiet(), l1.Addr, false, true)
	if !l2.OK() {
		return rep, fmt.Errorf("%s: %w", l2.Call, l2.Err)
	}
	fds = append(fds, l2.FD)
	var clientFDs []int
	for range clients {
		fd, _, err := dial(lab.Quiet(), l1.Addr)
		if err != nil {
			return rep, err
		}
		fds = append(fds, fd)
		clientFDs = append(clientFDs, fd)
	}
	q, err := awaitQueued(l1.Addr, clients, l1.FD, l2.FD)
	if err != nil {
		return rep, err
	}
	rep.Queued = [2]int{q[0], q[1]}
	rep.Unaccepted = q[0]
	n.Say("%d clients connected; %d wait in listener %d's queue, %d in listener %d's. "+
		"Nobody has called accept().", clients, q[0], l1.FD, q[1], l2.FD)
	closeFD(n, l1.FD)
	fds = fds[1:]
	// Wait until every client is either reset (TCP_INFO: CLOSE) or queued on listener 2.
	lab.Poll(waitLimit, func() bool {
		rep.Reset = 0
		for _, fd := range clientFDs {
			if st, err := sockdiag.StateOf(fd); err == nil && st == sockdiag.Close {
				rep.Reset++
			}
		}
		q2, err := queueLengths(l1.Addr, l2.FD)
		if err != nil {
			return false
		}
		rep.Listener2 = q2[0]
		return rep.Reset+rep.Listener2 == clients
	})
	n.Kernel(sockdiag.Filter{Local: l1.Addr, States: []sockdiag.State{sockdiag.Listen}})
	n.Say("The kernel reset %d clients (their sockets are CLOSE) and listener 2 now holds %d.",
		rep.Reset, rep.Listener2)
	return rep, nil
}
