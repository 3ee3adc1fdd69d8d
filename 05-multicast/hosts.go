//go:build linux

package main

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"socklab/internal/lab"
	"socklab/internal/netlab"
)

// twoHosts is the lab's namespace (host A) and a second namespace (host B) joined by a veth
// pair with addresses from TEST-NET-1: nothing sent on it can leave the private namespace.
type twoHosts struct {
	B    *netlab.Host
	Link netlab.Link
}

// A is host A's veth address, B's the peer's.
func (h *twoHosts) A() netip.Addr     { return h.Link.LocalAddr.Addr() }
func (h *twoHosts) BAddr() netip.Addr { return h.Link.PeerAddr.Addr() }

// Broadcast is the subnet's directed broadcast address (192.0.2.255).
func (h *twoHosts) Broadcast() netip.Addr {
	p := h.Link.LocalAddr.Masked()
	a := p.Addr().As4()
	for i := p.Bits(); i < 32; i++ {
		a[i/8] |= 0x80 >> (i % 8)
	}
	return netip.AddrFrom4(a)
}

// vethMu serialises users of the veth pair: every pair gets the same addresses, so two at once
// would fight over the same subnet route.
var vethMu sync.Mutex

var (
	hostAPrefix = netip.MustParsePrefix("192.0.2.1/24")
	hostBPrefix = netip.MustParsePrefix("192.0.2.2/24")
)

// newTwoHosts creates host B and the veth pair. Close releases both.
func newTwoHosts(n *lab.Narrator) (*twoHosts, error) {
	vethMu.Lock()
	b, err := netlab.NewHost("B")
	if err != nil {
		vethMu.Unlock()
		return nil, err
	}
	// No duplicate address detection on the new veth, in either namespace: IPv6 link-local
	// addresses would otherwise stay "tentative" (unusable as a source) for a second or two.
	//
	// IGMP's robustness variable 1: each membership change is reported once, not twice at a
	// random interval, so part B can count the reports (RFC 3376 §8.1).
	settings := func() error {
		if err := netlab.SetSysctl("net.ipv6.conf.default.accept_dad", "0"); err != nil {
			return err
		}
		return netlab.SetSysctl("net.ipv4.igmp_qrv", "1")
	}
	err = settings()
	if err == nil {
		err = b.Do(settings)
	}
	if err != nil {
		b.Close()
		vethMu.Unlock()
		return nil, err
	}
	link, err := b.Connect(hostAPrefix, hostBPrefix)
	if err != nil {
		b.Close()
		vethMu.Unlock()
		return nil, err
	}
	if err := waitLinkCarries(b, link); err != nil {
		b.Close()
		vethMu.Unlock()
		return nil, err
	}
	n.Step("host B: a second network namespace, joined to this one by a veth pair")
	n.Say("Host A is this namespace (%s %s), host B a second namespace (%s %s); a veth "+
		"pair is a two-port virtual Ethernet cable.", link.LocalIf, link.LocalAddr, link.PeerIf, link.PeerAddr)
	return &twoHosts{B: b, Link: link}, nil
}

// waitLinkCarries waits until a datagram from A reaches B over the new link. A veth that was
// just set up drops packets until the kernel's link watcher has activated it (a few ms to a
// second later), so the first lesson datagram could otherwise vanish. The probe is a subnet
// broadcast, which needs no ARP, resent every 20 ms for at most 5 s to a socket on B.
func waitLinkCarries(b *netlab.Host, link netlab.Link) error {
	var probe int
	err := b.Do(func() error {
		var err error
		probe, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		return unix.Bind(probe, &unix.SockaddrInet4{})
	})
	if err != nil {
		return fmt.Errorf("link probe: %w", err)
	}
	defer unix.Close(probe)
	sa, err := unix.Getsockname(probe)
	if err != nil {
		return fmt.Errorf("link probe: %w", err)
	}
	h := &twoHosts{Link: link}
	to := &unix.SockaddrInet4{Port: sa.(*unix.SockaddrInet4).Port, Addr: h.Broadcast().As4()}
	s, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("link probe: %w", err)
	}
	defer unix.Close(s)
	if err := unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_BROADCAST, 1); err != nil {
		return fmt.Errorf("link probe: %w", err)
	}
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		if err := unix.Sendto(s, []byte("probe"), 0, to); err != nil {
			return fmt.Errorf("link probe: %w", err)
		}
		if ready, err := waitReadable(probe, 20*time.Millisecond); err != nil || ready {
			return err
		}
	}
	return errors.New("the veth pair carried no datagram within 5 s")
}

// Close deletes the veth pair and host B.
func (h *twoHosts) Close() {
	h.B.Close()
	vethMu.Unlock()
}

// onB runs fn on host B's thread: sockets it creates belong to B's namespace (and may then be
// used from any thread).
func (h *twoHosts) onB(fn func() error) error { return h.B.Do(fn) }

// ---------------------------------------------------------------------------------------------
// C. Two hosts: TTL and loop.

// loopbackLoopReport: on loopback, what one member received with loop off, and with TTL 0.
type loopbackLoopReport struct {
	LoopOff, TTLZero round
}

// stepLoopbackLoop shows that neither IP_MULTICAST_LOOP=0 nor TTL 0 stops delivery on
// loopback: the loopback device is the host itself.
func stepLoopbackLoop(n *lab.Narrator, l lesson) (loopbackLoopReport, error) {
	var rep loopbackLoopReport
	n.Step("on loopback: a sender with IP_MULTICAST_LOOP=0, then one with TTL 0")
	set := newSocketSet()
	defer set.closeAll()
	fd, err := openReceiver(n, receiverOptions{Port: l.Port, Group: l.Group, Iface: loopbackAddr, RecvTTL: true})
	if err != nil {
		return rep, err
	}
	set.add("member", fd)
	payload := nulTerminated(defaultMessage)
	for _, c := range []struct {
		ttl  int
		loop bool
		into *round
	}{{1, false, &rep.LoopOff}, {0, true, &rep.TTLZero}} {
		s, err := openSender(n, senderOptions{Iface: loopbackAddr, TTL: c.ttl, Loop: c.loop})
		if err != nil {
			return rep, err
		}
		*c.into, err = sendAndCollect(n, fmt.Sprintf("ttl %d loop %v", c.ttl, c.loop), s, payload, l.To(), set)
		unix.Close(s)
		if err != nil {
			return rep, err
		}
	}
	n.Say("Delivered both times. The 'loop' copy is made by the kernel's multicast output " +
		"routine (ip_mc_output), which also enforces TTL 0; a route through a loopback device " +
		"skips it (net/ipv4/route.c uses it only when the device is not IFF_LOOPBACK): the " +
		"datagram itself goes round through lo and arrives once. To see loop and TTL at work, " +
		"we need a second host.")
	return rep, nil
}

// hostsReport is what each host's member received in each round of part C.
type hostsReport struct {
	Rounds []round // sockets "A" (member on host A) and "B" (member on host B)
	Sender uint16  // the sender's ephemeral port
}

// stepTTLAndLoop: one member on each host; host A sends with TTL 1, TTL 0, loop off; then A's
// member leaves and A sends with TTL 0 again.
func stepTTLAndLoop(n *lab.Narrator, h *twoHosts, l lesson) (hostsReport, error) {
	var rep hostsReport
	n.Step("a member of %s on each host; the sender on A pins %s", l.Group, h.A())
	set := newSocketSet()
	defer set.closeAll()
	fd, err := openReceiver(n, receiverOptions{Port: l.Port, Group: l.Group, Iface: h.A(), RecvTTL: true})
	if err != nil {
		return rep, err
	}
	set.add("A", fd)
	err = h.onB(func() error {
		fd, err := openReceiver(n, receiverOptions{Port: l.Port, Group: l.Group, Iface: h.BAddr(), RecvTTL: true})
		if err == nil {
			set.add("B", fd)
		}
		return err
	})
	if err != nil {
		return rep, err
	}
	payload := nulTerminated(defaultMessage)
	send := func(title string, ttl int, loop bool) error {
		s, err := openSender(n, senderOptions{Iface: h.A(), TTL: ttl, Loop: loop})
		if err != nil {
			return err
		}
		defer unix.Close(s)
		r, err := sendAndCollect(n, title, s, payload, l.To(), set)
		r.Users = usersNow(h.Link.LocalIf, l.Group)
		rep.Rounds = append(rep.Rounds, r)
		rep.Sender = localPort(s)
		return err
	}

	n.Step("TTL 1, loop on (the defaults)")
	if err := send("ttl 1", 1, true); err != nil {
		return rep, err
	}
	n.Say("Both hosts' members receive, from %s (the pinned interface's address). A's copy is "+
		"the loop copy; B's crossed the cable with TTL 1, as IP_RECVTTL shows.", h.A())

	n.Step("TTL 0, loop on")
	if err := send("ttl 0", 0, true); err != nil {
		return rep, err
	}
	n.Say("TTL 0 stays on the sending host: A's member gets its loop copy, B gets nothing.")

	n.Step("TTL 1, IP_MULTICAST_LOOP=0")
	if err := send("loop off", 1, false); err != nil {
		return rep, err
	}
	n.Say("Loop off: the sending host's own member gets nothing; B still receives.")

	n.Step("A's member leaves; TTL 0 again")
	if err := leaveGroup(n, set.fds["A"], l.Group, h.A()); err != nil {
		return rep, err
	}
	if err := send("ttl 0, no member on A", 0, true); err != nil {
		return rep, err
	}
	n.Say("Surprise: with no member on the sending host's interface, a TTL 0 datagram " +
		"crosses the cable and B receives it — with TTL 0. The TTL 0 check lives in " +
		"ip_mc_output, the same routine that makes the loop copy, and the kernel only routes " +
		"through it when the host itself is a member. TTL 0 is not a safety net: pin the " +
		"interface.")
	return rep, nil
}

// receiverLoopReport: with the receiver's own IP_MULTICAST_LOOP off, what it still got.
type receiverLoopReport struct {
	Got round
}

// stepReceiverLoop: the classic receiver sets IP_MULTICAST_LOOP, but the option is read only
// on the sending socket. A member on host A with loop=0 still gets the loop copy of a sender
// whose loop is on.
func stepReceiverLoop(n *lab.Narrator, h *twoHosts, l lesson) (receiverLoopReport, error) {
	var rep receiverLoopReport
	n.Step("IP_MULTICAST_LOOP=0 on a receiver, loop on at the sender")
	set := newSocketSet()
	defer set.closeAll()
	fd, err := openReceiver(n, receiverOptions{Port: l.Port, Group: l.Group, Iface: h.A()})
	if err != nil {
		return rep, err
	}
	set.add("A", fd)
	if err := setInt(n, fd, unix.IPPROTO_IP, unix.IP_MULTICAST_LOOP, 0, "IPPROTO_IP", "IP_MULTICAST_LOOP"); err != nil {
		return rep, err
	}
	s, err := openSender(n, senderOptions{Iface: h.A(), TTL: 1, Loop: true})
	if err != nil {
		return rep, err
	}
	defer unix.Close(s)
	rep.Got, err = sendAndCollect(n, "receiver loop off", s, nulTerminated(defaultMessage), l.To(), set)
	n.Say("Received anyway: IP_MULTICAST_LOOP belongs to the sender (ip(7)); the classic " +
		"receiver setting it changes nothing.")
	return rep, err
}

func partHosts(d *lab.Demo) error {
	if _, err := stepLoopbackLoop(d.Narrator, classic); err != nil {
		return err
	}
	if !d.NeedPrivate("two hosts on a veth pair (TTL, loop)") {
		return nil
	}
	h, err := newTwoHosts(d.Narrator)
	if err != nil {
		return err
	}
	defer h.Close()
	if _, err := stepTTLAndLoop(d.Narrator, h, classic); err != nil {
		return err
	}
	_, err = stepReceiverLoop(d.Narrator, h, classic)
	return err
}

// ---------------------------------------------------------------------------------------------
// D. Broadcast.

// broadcastReport: the error of a broadcast sent without SO_BROADCAST, and what each bound
// socket received once the option was set.
type broadcastReport struct {
	WithoutOption error
	Got           round
	Sender        uint16
}

// openBroadcastSender is socket + SO_BROADCAST (socket(7)); loop is switched off to show it
// does not apply to broadcast.
func openBroadcastSender(n *lab.Narrator, setBroadcast bool) (int, error) {
	fd, err := openUDP(n)
	if err != nil {
		return -1, err
	}
	if setBroadcast {
		if err := setInt(n, fd, unix.SOL_SOCKET, unix.SO_BROADCAST, 1, "SOL_SOCKET", "SO_BROADCAST"); err != nil {
			unix.Close(fd)
			return -1, err
		}
	}
	return fd, nil
}

// stepBroadcastLoopback sends to 127.255.255.255 (lo's broadcast address) without and with
// SO_BROADCAST, to sockets bound to 0.0.0.0, to the broadcast address and to 127.0.0.1.
func stepBroadcastLoopback(n *lab.Narrator, port uint16) (broadcastReport, error) {
	var rep broadcastReport
	bcast := netip.AddrPortFrom(netip.MustParseAddr("127.255.255.255"), port)
	n.Step("sendto(%s) without SO_BROADCAST", bcast)
	s, err := openBroadcastSender(n, false)
	if err != nil {
		return rep, err
	}
	defer unix.Close(s)
	rep.WithoutOption = sendDatagram(n, s, nulTerminated(defaultMessage), bcast)
	n.Say("EACCES: the kernel refuses a broadcast destination unless the socket said it " +
		"means it (udp_sendmsg checks SOCK_BROADCAST). No such guard exists for multicast.")

	n.Step("three sockets on port %d: bound to 0.0.0.0, 127.255.255.255, 127.0.0.1", port)
	set := newSocketSet()
	defer set.closeAll()
	for _, a := range []string{"0.0.0.0", "127.255.255.255", "127.0.0.1"} {
		fd, err := openReceiver(n, receiverOptions{Bind: netip.MustParseAddr(a), Port: port})
		if err != nil {
			return rep, err
		}
		set.add(a, fd)
	}
	if err := setInt(n, s, unix.SOL_SOCKET, unix.SO_BROADCAST, 1, "SOL_SOCKET", "SO_BROADCAST"); err != nil {
		return rep, err
	}
	rep.Got, err = sendAndCollect(n, "broadcast on lo", s, nulTerminated(defaultMessage), bcast, set)
	rep.Sender = localPort(s)
	n.Say("A broadcast is delivered to sockets bound to the wildcard or to the broadcast " +
		"address itself; a socket bound to a unicast address only gets datagrams sent to " +
		"that address.")
	return rep, err
}

// vethBroadcastReport: what each socket on either host got from a subnet broadcast.
type vethBroadcastReport struct {
	Got    round
	Sender uint16
}

// stepBroadcastVeth: host A sends to the subnet broadcast 192.0.2.255 with SO_BROADCAST and
// IP_MULTICAST_LOOP=0; sockets on both hosts listen.
func stepBroadcastVeth(n *lab.Narrator, h *twoHosts, port uint16) (vethBroadcastReport, error) {
	var rep vethBroadcastReport
	to := netip.AddrPortFrom(h.Broadcast(), port)
	n.Step("host A broadcasts to %s; sockets listen on both hosts", to)
	set := newSocketSet()
	defer set.closeAll()
	fd, err := openReceiver(n, receiverOptions{Port: port})
	if err != nil {
		return rep, err
	}
	set.add("A 0.0.0.0", fd)
	err = h.onB(func() error {
		for _, a := range []netip.Addr{netip.IPv4Unspecified(), h.BAddr(), h.Broadcast()} {
			fd, err := openReceiver(n, receiverOptions{Bind: a, Port: port})
			if err != nil {
				return err
			}
			set.add("B "+a.String(), fd)
		}
		return nil
	})
	if err != nil {
		return rep, err
	}
	s, err := openBroadcastSender(n, true)
	if err != nil {
		return rep, err
	}
	defer unix.Close(s)
	if err := setInt(n, s, unix.IPPROTO_IP, unix.IP_MULTICAST_LOOP, 0, "IPPROTO_IP", "IP_MULTICAST_LOOP"); err != nil {
		return rep, err
	}
	rep.Got, err = sendAndCollect(n, "subnet broadcast", s, nulTerminated(defaultMessage), to, set)
	rep.Sender = localPort(s)
	n.Say("Every host on the link gets a broadcast, the sender's own included — even with "+
		"IP_MULTICAST_LOOP=0, which applies to multicast only. B's socket bound to %s does "+
		"not: the datagram was not sent to that address. Unlike a group, a broadcast needs no "+
		"join and cannot be declined: every host on the link pays for it.", h.BAddr())
	return rep, err
}

func partBroadcast(d *lab.Demo) error {
	if _, err := stepBroadcastLoopback(d.Narrator, classic.Port); err != nil {
		return err
	}
	if !d.NeedPrivate("subnet broadcast between two hosts") {
		return nil
	}
	h, err := newTwoHosts(d.Narrator)
	if err != nil {
		return err
	}
	defer h.Close()
	_, err = stepBroadcastVeth(d.Narrator, h, classic.Port)
	return err
}
