//go:build linux

package main

import (
	"fmt"
	"net/netip"
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

// pollUntil asks cond again and again (1 ms, backing off to 20 ms) until it is true or timeout
// passes. The kernel decides when the condition holds; the pause only spaces the questions.
func pollUntil(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	pause := time.Millisecond
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(pause)
		pause = min(pause*2, 20*time.Millisecond)
	}
}

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
		decided := pollUntil(shortWait, func() bool {
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
	ok := pollUntil(timeout, func() bool {
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
	pollUntil(timeout, func() bool {
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
	n.Say("connect() would block all this time. The timer column shows when the next SYN "+
		"goes out; after net.ipv4.tcp_syn_retries (here %s) unanswered SYNs connect() fails "+
		"with ETIMEDOUT.", sysctlOr("net.ipv4.tcp_syn_retries", "?"))

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
