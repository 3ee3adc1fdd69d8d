//go:build linux

package main

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"socklab/internal/lab"
	"socklab/internal/netlab"
	"socklab/internal/sockdiag"
)

// shortWait bounds waits for things that happen within a millisecond on loopback (a
// handshake, a table update); it is generous so that a loaded machine never flakes.
const shortWait = 3 * time.Second

// retransmitWait bounds waits for SYN and SYN-ACK retransmissions (1 s, then 2 s, ...).
const retransmitWait = 15 * time.Second

// queueLab is a listener that never calls accept() by itself, and the clients that tried to
// connect to it.
type queueLab struct {
	n        *lab.Narrator
	lfd      int
	Addr     netip.AddrPort
	Backlog  int
	Clients  []queueClient
	accepted []int
}

// queueClient is one client socket of a queueLab.
type queueClient struct {
	FD   int
	Addr netip.AddrPort
}

// openListener is socket → bind → listen(backlog) on addr, and nothing else.
func openListener(n *lab.Narrator, addr netip.AddrPort, backlog int) (*queueLab, error) {
	family, fam := familyName(addr.Addr())
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err := n.Sys(fd, err, "socket(%s, SOCK_STREAM, 0)", fam); err != nil {
		return nil, err
	}
	q := &queueLab{n: n, lfd: fd, Backlog: backlog}
	sa := lab.SockaddrOf(addr)
	if err := n.Sys(0, unix.Bind(fd, sa), "bind(%d, %s)", fd, lab.Sockaddr(sa)); err != nil {
		q.Close()
		return nil, err
	}
	if err := n.Sys(0, unix.Listen(fd, backlog), "listen(%d, %d)", fd, backlog); err != nil {
		q.Close()
		return nil, err
	}
	got, err := unix.Getsockname(fd)
	if err != nil {
		q.Close()
		return nil, err
	}
	q.Addr = lab.AddrPortOf(got)
	return q, nil
}

// Close closes the listener, every client and every accepted socket.
func (q *queueLab) Close() {
	for _, c := range q.Clients {
		unix.Close(c.FD)
	}
	for _, fd := range q.accepted {
		unix.Close(fd)
	}
	if q.lfd >= 0 {
		unix.Close(q.lfd)
	}
	q.lfd, q.Clients, q.accepted = -1, nil, nil
}

// listener is the kernel's row for this listener: Recv-Q is the accept queue's length, Send-Q
// its maximum.
func (q *queueLab) listener() (sockdiag.Socket, error) {
	s, found, err := listenerRow(q.Addr)
	if err == nil && !found {
		err = fmt.Errorf("listener %v is not in the kernel table", q.Addr)
	}
	return s, err
}

// connect starts count non-blocking clients, one after another. Each is followed until the
// kernel has decided its fate: admitted (ESTABLISHED), or waiting (SYN_SENT while the accept
// queue is full — a full queue cannot shrink without accept(), so its SYN is surely dropped).
// One at a time, so that no two handshakes race for the last slot.
func (q *queueLab) connect(count int, narrate bool) error {
	family, fam := familyName(q.Addr.Addr())
	for range count {
		fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		if narrate {
			q.n.Sys(fd, nil, "socket(%s, SOCK_STREAM|SOCK_NONBLOCK, 0)", fam)
		}
		err = unix.Connect(fd, lab.SockaddrOf(q.Addr))
		if narrate {
			q.n.Sys(0, err, "connect(%d, %s)", fd, lab.Sockaddr(lab.SockaddrOf(q.Addr)))
		}
		if err != nil && err != unix.EINPROGRESS {
			unix.Close(fd)
			return err
		}
		sa, err := unix.Getsockname(fd)
		if err != nil {
			unix.Close(fd)
			return err
		}
		c := queueClient{FD: fd, Addr: lab.AddrPortOf(sa)}
		q.Clients = append(q.Clients, c)
		var last string
		decided := lab.Poll(shortWait, func() bool {
			s, st, err := findState(c.Addr, q.Addr)
			if err != nil {
				return false
			}
			last = s.String()
			if st == sockdiag.Established {
				return true
			}
			l, err := q.listener()
			return err == nil && st == sockdiag.SynSent && l.RecvQ > l.SendQ
		})
		if !decided {
			return fmt.Errorf("client %v: neither admitted nor waiting after %v (kernel: %s)", c.Addr, shortWait, last)
		}
	}
	return nil
}

// clientView is one client as the kernel sees both of its ends.
type clientView struct {
	Addr        netip.AddrPort
	Client      sockdiag.Socket // the client's own socket
	ServerState sockdiag.State  // the server's socket for this client, 0 if none
	ServerHasFD bool
}

// queueView is the kernel's picture of a queueLab at one moment.
type queueView struct {
	AcceptQueueLen, AcceptQueueMax uint32
	Clients                        []clientView
}

// count is the number of clients whose own socket is in state st.
func (v queueView) count(st sockdiag.State) int {
	k := 0
	for _, c := range v.Clients {
		if c.Client.State == st {
			k++
		}
	}
	return k
}

func (q *queueLab) snapshot() (queueView, error) {
	var v queueView
	l, err := q.listener()
	if err != nil {
		return v, err
	}
	v.AcceptQueueLen, v.AcceptQueueMax = l.RecvQ, l.SendQ
	for _, c := range q.Clients {
		cv := clientView{Addr: c.Addr}
		cs, found, err := sockdiag.Find(c.Addr, q.Addr)
		if err != nil {
			return v, err
		}
		if found {
			cv.Client = cs
		}
		ss, found, err := sockdiag.Find(q.Addr, c.Addr)
		if err != nil {
			return v, err
		}
		if found {
			cv.ServerState, cv.ServerHasFD = ss.State, ss.HasFD()
		}
		v.Clients = append(v.Clients, cv)
	}
	return v, nil
}

// firstWaiter is the index of the first client in SYN_SENT, or -1.
func (v queueView) firstWaiter() int {
	for i, c := range v.Clients {
		if c.Client.State == sockdiag.SynSent {
			return i
		}
	}
	return -1
}

// fillQueue is the whole experiment of one backlog: listen(fd, backlog), never accept, and
// connect clients one by one; it returns the lab (still open) and the kernel's view.
func fillQueue(n *lab.Narrator, backlog, clients int, narrate bool) (*queueLab, queueView, error) {
	q, err := openListener(n, netip.AddrPortFrom(loopback4, 0), backlog)
	if err != nil {
		return nil, queueView{}, err
	}
	if err := q.connect(clients, narrate); err != nil {
		q.Close()
		return nil, queueView{}, err
	}
	v, err := q.snapshot()
	if err != nil {
		q.Close()
		return nil, queueView{}, err
	}
	return q, v, nil
}

// synRetransmits is what the kernel says about a client whose SYNs are being dropped.
type synRetransmits struct {
	Diag sockdiag.Socket // sock_diag: state, timer, time left, retransmits
	Info *unix.TCPInfo   // TCP_INFO: tcpi_retransmits, tcpi_backoff, tcpi_rto (µs)
}

// waitSynRetransmits waits until client i has retransmitted its SYN at least atLeast times.
func (q *queueLab) waitSynRetransmits(i, atLeast int, timeout time.Duration) (synRetransmits, error) {
	var r synRetransmits
	c := q.Clients[i]
	ok := lab.Poll(timeout, func() bool {
		s, found, err := sockdiag.Find(c.Addr, q.Addr)
		if err != nil || !found {
			return false
		}
		r.Diag = s
		return s.State == sockdiag.SynSent && int(s.Retransmits) >= atLeast
	})
	if !ok {
		return r, fmt.Errorf("client %v: no %d SYN retransmissions within %v (kernel: %v)", c.Addr, atLeast, timeout, r.Diag)
	}
	info, err := sockdiag.TCPInfo(c.FD)
	r.Info = info
	return r, err
}

// acceptOne takes one connection out of the accept queue.
func (q *queueLab) acceptOne() (int, netip.AddrPort, error) {
	fd, sa, err := unix.Accept4(q.lfd, unix.SOCK_CLOEXEC)
	q.n.Sys(fd, err, "accept(%d, ...)", q.lfd)
	if err != nil {
		return -1, netip.AddrPort{}, err
	}
	q.accepted = append(q.accepted, fd)
	peer := lab.AddrPortOf(sa)
	q.n.Result("peer %v", peer)
	return fd, peer, nil
}

// waiterAdmission is how a waiting client got in once a slot was free.
type waiterAdmission struct {
	Index        int
	After        time.Duration // from the call until the kernel showed it ESTABLISHED
	TotalRetrans uint32        // TCP_INFO tcpi_total_retrans: SYNs it had to resend
}

// waitAdmission waits until one of the clients that were in SYN_SENT becomes ESTABLISHED.
func (q *queueLab) waitAdmission(waiting []int, timeout time.Duration) (waiterAdmission, error) {
	w := waiterAdmission{Index: -1}
	start := time.Now()
	lab.Poll(timeout, func() bool {
		for _, i := range waiting {
			// Both ends: a client can be ESTABLISHED while its final ACK overflowed the queue
			// again, leaving the server's end in SYN_RECV (see tcp_abort_on_overflow).
			_, ss, err := findState(q.Addr, q.Clients[i].Addr)
			if st, cerr := sockdiag.StateOf(q.Clients[i].FD); err == nil && cerr == nil && st == sockdiag.Established && ss == sockdiag.Established {
				w.Index = i
				return true
			}
		}
		return false
	})
	w.After = time.Since(start)
	if w.Index < 0 {
		return w, fmt.Errorf("no waiting client got in within %v", timeout)
	}
	info, err := sockdiag.TCPInfo(q.Clients[w.Index].FD)
	if err != nil {
		return w, err
	}
	w.TotalRetrans = info.Total_retrans
	return w, nil
}

func runBacklog(d *lab.Demo) error {
	n := d.Narrator
	const backlog, clients = 2, 5
	d.Step("listen(fd, %d) and never accept(); %d clients connect one by one", backlog, clients)
	overflowsBefore, _ := sockdiag.Counter("TcpExt", "ListenOverflows")
	q, v, err := fillQueue(n, backlog, clients, true)
	if err != nil {
		return err
	}
	defer q.Close()
	overflows, _ := sockdiag.Counter("TcpExt", "ListenOverflows")
	n.Kernel(sockdiag.Filter{Port: q.Addr.Port()})
	n.Say("%d clients are ESTABLISHED — on both ends — and nobody called accept(): the "+
		"server's sockets (no fd yet) wait in the accept queue (全连接队列). The LISTEN row "+
		"shows its length in Recv-Q (%d) and its maximum, the backlog, in Send-Q (%d). The queue "+
		"holds backlog+1. The other %d clients are in SYN_SENT: their SYNs were dropped "+
		"silently, not refused (TcpExt ListenOverflows rose by %d).",
		v.count(sockdiag.Established), v.AcceptQueueLen, v.AcceptQueueMax, v.count(sockdiag.SynSent), overflows-overflowsBefore)

	d.Step("The same for other backlogs")
	for _, b := range []int{0, 1, 4, 8} {
		q2, v2, err := fillQueue(lab.Quiet(), b, b+3, false)
		if err != nil {
			return err
		}
		q2.Close()
		n.Result("listen(fd, %d): %d ESTABLISHED, %d SYN_SENT; accept queue %d/%d",
			b, v2.count(sockdiag.Established), v2.count(sockdiag.SynSent), v2.AcceptQueueLen, v2.AcceptQueueMax)
	}

	d.Step("A waiting client retransmits its SYN")
	wi := v.firstWaiter()
	r, err := q.waitSynRetransmits(wi, 2, retransmitWait)
	if err != nil {
		return err
	}
	n.Kernel(sockdiag.Tuple(q.Clients[wi].Addr, q.Addr))
	n.Result("TCP_INFO(%d): %v, retransmits %d, backoff %d, rto %v",
		q.Clients[wi].FD, sockdiag.State(r.Info.State), r.Info.Retransmits, r.Info.Backoff, time.Duration(r.Info.Rto)*time.Microsecond)
	retries := sysctlOr("net.ipv4.tcp_syn_retries", "?")
	if r, err := strconv.Atoi(retries); err == nil {
		retries = fmt.Sprintf("%d, a budget of %v", r, synBudget(r))
	}
	n.Say("connect() would block all this time. The timer column shows when the next SYN "+
		"goes out; once the time allowed by net.ipv4.tcp_syn_retries (here %s) has passed, "+
		"connect() fails with ETIMEDOUT (steps 8 and 9, in a namespace).", retries)

	d.Step("accept() frees a slot: a waiting client gets in at its next retransmission")
	var waiting []int
	for i, c := range v.Clients {
		if c.Client.State == sockdiag.SynSent {
			waiting = append(waiting, i)
		}
	}
	if _, _, err := q.acceptOne(); err != nil {
		return err
	}
	w, err := q.waitAdmission(waiting, retransmitWait)
	if err != nil {
		return err
	}
	n.Result("%v in %.1fs after accept(), %d SYN retransmissions in all",
		q.Clients[w.Index].Addr, w.After.Seconds(), w.TotalRetrans)
	n.Kernel(sockdiag.Filter{Port: q.Addr.Port()})
	n.Say("When two waiters' SYNs reach the free slot together, both get a SYN-ACK, but only " +
		"the first final ACK finds room: the other client is ESTABLISHED while the server " +
		"still holds SYN_RECV for it (steps 6 and 7 explain).")

	if d.NeedPrivate("somaxconn caps the backlog") {
		if _, err := somaxconnCaps(n, 2, 100); err != nil {
			return err
		}
	}
	if d.NeedPrivate("tcp_abort_on_overflow") {
		for _, abort := range []bool{false, true} {
			if _, err := overflowAtFinalACK(n, abort); err != nil {
				return err
			}
		}
	}
	if d.NeedPrivate("tcp_syn_retries") {
		// Without, then with, the linear timeouts this kernel uses by default.
		for _, linear := range []int{0, 4} {
			_, err := synRetriesGiveUp(n, 1, linear)
			if errors.Is(err, errNoLinearTimeouts) {
				n.Skip("tcp_syn_linear_timeouts=4", err.Error())
				continue
			}
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// sysctlOr reads a sysctl for narration, or returns def.
func sysctlOr(name, def string) string {
	v, err := netlab.Sysctl(name)
	if err != nil {
		return def
	}
	return v
}

// inFreshHost runs fn in a new network namespace of its own, so that the sysctls it sets
// concern only fn's sockets (and never the host, nor other labs running at the same time).
func inFreshHost(n *lab.Narrator, name string, fn func() error) error {
	h, err := netlab.NewHost(name)
	if err != nil {
		return err
	}
	defer h.Close()
	n.Say("(in a fresh network namespace, so the sysctl changes only there)")
	return h.Do(fn)
}

// setSysctl writes a namespace sysctl and prints it as sysctl(8) would.
func setSysctl(n *lab.Narrator, name, value string) error {
	err := netlab.SetSysctl(name, value)
	n.Sys(0, err, "sysctl -w %s=%s", name, value)
	return err
}

// somaxconnCaps sets net.core.somaxconn and listens with a larger backlog.
func somaxconnCaps(n *lab.Narrator, somaxconn, backlog int) (queueView, error) {
	n.Step("net.core.somaxconn caps the backlog")
	var v queueView
	err := inFreshHost(n, "somaxconn", func() error {
		if err := setSysctl(n, "net.core.somaxconn", fmt.Sprint(somaxconn)); err != nil {
			return err
		}
		q, view, err := fillQueue(n, backlog, somaxconn+3, false)
		if err != nil {
			return err
		}
		defer q.Close()
		v = view
		n.Kernel(sockdiag.Filter{Port: q.Addr.Port(), States: []sockdiag.State{sockdiag.Listen}})
		n.Result("%d ESTABLISHED, %d SYN_SENT", v.count(sockdiag.Established), v.count(sockdiag.SynSent))
		n.Say("listen(fd, %d) asked for %d, the kernel granted min(%d, somaxconn=%d) = %d (Send-Q), "+
			"and admitted %d.", backlog, backlog, backlog, somaxconn, v.AcceptQueueMax, v.AcceptQueueLen)
		return nil
	})
	return v, err
}

// synBudget is the time net.ipv4.tcp_syn_retries (or TCP_SYNCNT) allows a connect() on this
// kernel, from its first SYN: the time `retries` retransmissions would take if the timeout,
// 1 s at first (TCP_TIMEOUT_INIT), doubled each time up to TCP_RTO_MAX (120 s) —
// tcp_model_timeout() in net/ipv4/tcp_timer.c. With 1 it is 1 + 2 = 3 s; with 6, 127 s.
func synBudget(retries int) time.Duration {
	const rtoInit, rtoMax = time.Second, 120 * time.Second
	const doublings = 6 // ilog2(TCP_RTO_MAX / TCP_TIMEOUT_INIT)
	budget := time.Duration((2<<min(retries, doublings))-1) * rtoInit
	if retries > doublings {
		budget += time.Duration(retries-doublings) * rtoMax
	}
	return budget
}

// synGiveUp is when this kernel retransmits SYNs that are never answered and when it makes
// connect() give up, from the first SYN, as tcp_write_timeout() and tcp_retransmit_timer() in
// net/ipv4/tcp_timer.c decide it. The timeout starts at 1 s; the first `linear`
// (net.ipv4.tcp_syn_linear_timeouts) retransmissions keep it at 1 s, later ones double it.
// When the timer fires the kernel gives up instead of retransmitting once synBudget(retries)
// has passed, or once retries + linear SYNs were retransmitted. So tcp_syn_retries is a time
// budget, and the number of retransmissions equals it only when linear is 0.
func synGiveUp(retries, linear int) (retransmits []time.Duration, giveUp time.Duration) {
	const rtoInit, rtoMax = time.Second, 120 * time.Second // TCP_TIMEOUT_INIT, TCP_RTO_MAX
	budget := synBudget(retries)
	rto, t := rtoInit, time.Duration(0)
	for range retries + linear + 1 {
		t += rto
		if len(retransmits) >= retries+linear || t >= budget {
			break
		}
		retransmits = append(retransmits, t)
		if len(retransmits) > linear {
			rto = min(2*rto, rtoMax)
		}
	}
	return retransmits, t
}

// errNoLinearTimeouts says that this kernel has no net.ipv4.tcp_syn_linear_timeouts (it
// appeared in Linux 6.x; before, SYN timeouts always doubled).
var errNoLinearTimeouts = errors.New("this kernel has no net.ipv4.tcp_syn_linear_timeouts")

// synRetriesFacts is what the kernel reported about a connect() whose SYNs were all dropped,
// in a namespace where net.ipv4.tcp_syn_retries was Retries.
type synRetriesFacts struct {
	Retries, Linear    int
	Listener, Client   netip.AddrPort
	WaitingState       sockdiag.State  // sock_diag, right after connect()
	Retransmitted      []time.Duration // when TCP_INFO's tcpi_total_retrans rose, from connect()
	GaveUpAfter        time.Duration   // from connect() until TCP_INFO said CLOSE
	Err                error           // SO_ERROR once it gave up
	TotalRetrans       uint32          // TCP_INFO tcpi_total_retrans after giving up
	SynRetrans         int64           // TcpExt TCPSynRetrans of the namespace, delta
	ListedAfterGivenUp bool            // sock_diag still had the 4-tuple after the failure
}

// synRetriesGiveUp sets net.ipv4.tcp_syn_retries (and tcp_syn_linear_timeouts) in a fresh
// namespace, fills a listen(fd, 0) queue so that the listener drops every further SYN, and
// follows one more client from connect() until its kernel gives up.
func synRetriesGiveUp(n *lab.Narrator, retries, linear int) (synRetriesFacts, error) {
	f := synRetriesFacts{Retries: retries, Linear: linear}
	n.Step("tcp_syn_retries=%d, tcp_syn_linear_timeouts=%d: connect() gives up", retries, linear)
	err := inFreshHost(n, "synretries", func() error {
		if _, err := netlab.Sysctl("net.ipv4.tcp_syn_linear_timeouts"); err != nil {
			if linear != 0 {
				return errNoLinearTimeouts
			}
			n.Say("(no tcp_syn_linear_timeouts on this kernel: SYN timeouts always double)")
		} else if err := setSysctl(n, "net.ipv4.tcp_syn_linear_timeouts", fmt.Sprint(linear)); err != nil {
			return err
		}
		if err := setSysctl(n, "net.ipv4.tcp_syn_retries", fmt.Sprint(retries)); err != nil {
			return err
		}
		q, _, err := fillQueue(n, 0, 1, true)
		if err != nil {
			return err
		}
		defer q.Close()
		f.Listener = q.Addr
		n.Say("The accept queue of listen(fd, 0) is full with one connection: the listener's " +
			"kernel now drops every SYN, so nothing ever answers the next client.")
		before, err := sockdiag.Counter("TcpExt", "TCPSynRetrans")
		if err != nil {
			return err
		}

		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err := n.Sys(fd, err, "socket(AF_INET, SOCK_STREAM|SOCK_NONBLOCK, 0)"); err != nil {
			return err
		}
		defer unix.Close(fd)
		start := time.Now()
		err = unix.Connect(fd, lab.SockaddrOf(q.Addr))
		n.Sys(0, err, "connect(%d, %s)", fd, lab.Sockaddr(lab.SockaddrOf(q.Addr)))
		if err != unix.EINPROGRESS {
			return fmt.Errorf("connect: want EINPROGRESS, got %v", err)
		}
		sa, err := unix.Getsockname(fd)
		if err != nil {
			return err
		}
		f.Client = lab.AddrPortOf(sa)
		if _, f.WaitingState, err = findState(f.Client, q.Addr); err != nil {
			return err
		}
		n.Kernel(sockdiag.Tuple(f.Client, q.Addr))

		// Watch the kernel until it gives up: every rise of tcpi_total_retrans is one more SYN.
		var last string
		closed := lab.Poll(retransmitWait, func() bool {
			info, err := sockdiag.TCPInfo(fd)
			if err != nil {
				return false
			}
			last = fmt.Sprintf("%v, %d retransmissions", sockdiag.State(info.State), info.Total_retrans)
			for len(f.Retransmitted) < int(info.Total_retrans) {
				f.Retransmitted = append(f.Retransmitted, time.Since(start))
				n.Result("%4.1fs  SYN retransmitted (tcpi_total_retrans %d)", time.Since(start).Seconds(), info.Total_retrans)
			}
			return sockdiag.State(info.State) == sockdiag.Close
		})
		f.GaveUpAfter = time.Since(start)
		if !closed {
			return fmt.Errorf("client %v still trying after %v (kernel: %s)", f.Client, retransmitWait, last)
		}
		n.Result("%4.1fs  state CLOSE: the kernel gave up", f.GaveUpAfter.Seconds())

		soErr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
		if soErr != 0 {
			f.Err = unix.Errno(soErr)
		}
		if err := n.Sys(0, err, "getsockopt(%d, SOL_SOCKET, SO_ERROR, [%s])", fd, unix.ErrnoName(unix.Errno(soErr))); err != nil {
			return err
		}
		info, err := sockdiag.TCPInfo(fd)
		if err != nil {
			return err
		}
		f.TotalRetrans = info.Total_retrans
		after, err := sockdiag.Counter("TcpExt", "TCPSynRetrans")
		if err != nil {
			return err
		}
		f.SynRetrans = after - before
		n.Result("TCP_INFO(%d): %v, tcpi_total_retrans %d; TcpExt TCPSynRetrans +%d",
			fd, sockdiag.State(info.State), f.TotalRetrans, f.SynRetrans)
		_, found, err := sockdiag.Find(f.Client, q.Addr)
		if err != nil {
			return err
		}
		f.ListedAfterGivenUp = found
		n.Kernel(sockdiag.Tuple(f.Client, q.Addr))
		model, _ := synGiveUp(retries, linear)
		budget := synBudget(retries).Seconds()
		n.Say("ETIMEDOUT after the first SYN and %d retransmission(s); the socket has left "+
			"the kernel's table (the fd stays until close()). tcp_syn_retries=%d is a time "+
			"budget, %.0f s from the first SYN: what %d retransmission(s) take when the "+
			"timeout doubles from 1 s. TCP_SYNCNT sets it for one socket (part E).",
			f.TotalRetrans, retries, budget, retries)
		if linear == 0 {
			n.Say("With tcp_syn_linear_timeouts=0 the timeout doubles from the start, so "+
				"the budget holds exactly %d retransmission(s).", len(model))
		} else {
			n.Say("With tcp_syn_linear_timeouts=%d the first %d timeouts stay at 1 s, so "+
				"%d retransmissions fit into the same %.0f s.", linear, linear, len(model), budget)
		}
		return nil
	})
	return f, err
}
