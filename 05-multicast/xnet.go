//go:build linux

package main

import (
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"

	"socklab/internal/lab"
)

// Part F does the join and the send with golang.org/x/net/ipv4, the package Go programs
// usually multicast with, beside the classic calls of parts A-E. On Linux (x/net v0.62.0,
// ipv4/sys_linux.go) PacketConn.JoinGroup(ifi, group) is setsockopt(MCAST_JOIN_GROUP) with a
// struct group_req naming the interface by *index* (RFC 3678), and
// SetMulticastInterface(ifi) is setsockopt(IP_MULTICAST_IF) with a struct ip_mreqn carrying
// only the index. The classic C code passes interface *addresses* instead. The difference
// shows in the source address the kernel puts on the datagram (docs/05-multicast.md, "The
// x/net/ipv4 way").

// xnetConn is one UDP socket opened with net.ListenPacket and driven through an
// ipv4.PacketConn; fd is its descriptor, used only to ask the kernel what the x/net calls set
// (getsockopt) and to poll it like the other sockets of the lesson.
type xnetConn struct {
	conn *net.UDPConn
	p    *ipv4.PacketConn
	fd   int
}

// listenXNet is net.ListenPacket("udp4", addr) wrapped in ipv4.NewPacketConn.
func listenXNet(n *lab.Narrator, addr netip.AddrPort) (*xnetConn, error) {
	c, err := net.ListenPacket("udp4", addr.String())
	if err != nil {
		n.Result("net.ListenPacket(\"udp4\", %q) = %v", addr, err)
		return nil, fmt.Errorf("listen %v: %w", addr, err)
	}
	uc := c.(*net.UDPConn)
	x := &xnetConn{conn: uc, p: ipv4.NewPacketConn(uc), fd: -1}
	sc, err := uc.SyscallConn()
	if err == nil {
		err = sc.Control(func(fd uintptr) { x.fd = int(fd) })
	}
	if err != nil {
		uc.Close()
		return nil, fmt.Errorf("descriptor of %v: %w", addr, err)
	}
	n.Result("c, _ := net.ListenPacket(\"udp4\", %q)  (fd %d, %v)", addr, x.fd, uc.LocalAddr())
	n.Result("p := ipv4.NewPacketConn(c)")
	return x, nil
}

// Close closes the socket (and with it any membership it holds).
func (x *xnetConn) Close() { x.conn.Close() }

// goCall narrates one x/net call and the system call it makes underneath.
func goCall(n *lab.Narrator, err error, call, underneath string) error {
	if err != nil {
		n.Result("%s = %v", call, err)
		return fmt.Errorf("%s: %w", call, err)
	}
	n.Result("%s = nil", call)
	n.Result("   via %s", underneath)
	return nil
}

// xnetReport is what the kernel reported in part F: B's membership, the options the x/net
// setters left on A's socket, and the source address B saw for each way of pinning A's
// interface.
type xnetReport struct {
	Users         int // members on B's veth after JoinGroup (/proc/net/igmp)
	TTL, Loop     int // getsockopt IP_MULTICAST_TTL and IP_MULTICAST_LOOP after the x/net setters
	IfaceAddr     netip.Addr
	ByAddress     netip.AddrPort // classic: IP_MULTICAST_IF with the secondary address
	ByIndex       netip.AddrPort // x/net: SetMulticastInterface (by index)
	BoundByIndex  netip.AddrPort // x/net, socket bound to the secondary address
	Primary       netip.Addr     // A's primary address on the veth
	Secondary     netip.Addr     // the second address given to A's veth for this step
	DeliveredBoth bool           // B received all three datagrams
}

// secondaryA is a second address for host A's veth, in the same subnet.
var secondaryA = netip.MustParsePrefix("192.0.2.3/24")

// stepXNet: B joins with ipv4.PacketConn.JoinGroup; A's veth gets a second address; A sends
// once the classic way, pinned by that address, and twice with x/net (pinned by index, then
// also bound to the second address).
func stepXNet(n *lab.Narrator, h *twoHosts, l lesson) (xnetReport, error) {
	rep := xnetReport{Primary: h.A(), Secondary: secondaryA.Addr()}
	n.Step("host B joins %s with x/net: JoinGroup names the interface by index", l.Group)
	set := newSocketSet()
	defer set.closeAll()
	var recv *xnetConn
	err := h.onB(func() error {
		ifc, err := net.InterfaceByName(h.Link.PeerIf)
		if err != nil {
			return err
		}
		// On B's thread, so the socket belongs to B's namespace.
		if recv, err = listenXNet(n, netip.AddrPortFrom(netip.IPv4Unspecified(), l.Port)); err != nil {
			return err
		}
		err = recv.p.JoinGroup(ifc, &net.UDPAddr{IP: net.IP(l.Group.AsSlice())})
		if goCall(n, err, fmt.Sprintf("p.JoinGroup(%s, %s)", ifc.Name, l.Group),
			fmt.Sprintf("setsockopt(%d, IPPROTO_IP, MCAST_JOIN_GROUP, {if %d, %s})", recv.fd, ifc.Index, l.Group)) != nil {
			return err
		}
		rep.Users = usersNow(h.Link.PeerIf, l.Group)
		return nil
	})
	if recv != nil {
		defer recv.Close()
	}
	if err != nil {
		return rep, err
	}
	// The lesson's other sockets are polled and read with raw calls: a second descriptor for
	// the same socket (closed by set.closeAll; recv.Close closes the first).
	dup, err := unix.FcntlInt(uintptr(recv.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return rep, fmt.Errorf("fcntl(F_DUPFD_CLOEXEC): %w", err)
	}
	set.add("B", dup)
	n.Say("The same membership as IP_ADD_MEMBERSHIP (%s on %s, users %d in B's "+
		"/proc/net/igmp); only the way of naming the interface differs.", l.Group, h.Link.PeerIf, rep.Users)

	n.Step("host A's veth gets a second address, %s", secondaryA)
	if out, err := exec.Command("ip", "addr", "add", secondaryA.String(), "dev", h.Link.LocalIf).CombinedOutput(); err != nil {
		return rep, fmt.Errorf("ip addr add %s: %v: %s", secondaryA, err, strings.TrimSpace(string(out)))
	}
	n.Say("`ip addr add %s dev %s`: a secondary address (the first one in a subnet is the "+
		"primary).", secondaryA, h.Link.LocalIf)

	payload := nulTerminated(defaultMessage)
	n.Step("classic: pinned by address %s", rep.Secondary)
	byAddr, err := openSender(n, senderOptions{Iface: rep.Secondary, TTL: 1, Loop: true})
	if err != nil {
		return rep, err
	}
	defer unix.Close(byAddr)
	r1, err := sendAndCollect(n, "pinned by address", byAddr, payload, l.To(), set)
	if err != nil {
		return rep, err
	}

	ifc, err := net.InterfaceByName(h.Link.LocalIf)
	if err != nil {
		return rep, err
	}
	n.Step("x/net: pin %s by index, TTL 1, loop off", ifc.Name)
	byIndex, err := xnetSender(n, netip.AddrPortFrom(netip.IPv4Unspecified(), 0), ifc)
	if err != nil {
		return rep, err
	}
	defer byIndex.Close()
	// The kernel's view of what the setters did: TTL 1, loop off, and no interface address
	// stored (ip_mreqn with only an index; ip(7), IP_MULTICAST_IF).
	if rep.TTL, err = unix.GetsockoptInt(byIndex.fd, unix.IPPROTO_IP, unix.IP_MULTICAST_TTL); err != nil {
		return rep, fmt.Errorf("getsockopt IP_MULTICAST_TTL: %w", err)
	}
	n.Sys(0, nil, "getsockopt(%d, IPPROTO_IP, IP_MULTICAST_TTL, [%d], [4])", byIndex.fd, rep.TTL)
	if rep.Loop, err = unix.GetsockoptInt(byIndex.fd, unix.IPPROTO_IP, unix.IP_MULTICAST_LOOP); err != nil {
		return rep, fmt.Errorf("getsockopt IP_MULTICAST_LOOP: %w", err)
	}
	n.Sys(0, nil, "getsockopt(%d, IPPROTO_IP, IP_MULTICAST_LOOP, [%d], [4])", byIndex.fd, rep.Loop)
	a, err := unix.GetsockoptInet4Addr(byIndex.fd, unix.IPPROTO_IP, unix.IP_MULTICAST_IF)
	if err != nil {
		return rep, fmt.Errorf("getsockopt IP_MULTICAST_IF: %w", err)
	}
	rep.IfaceAddr = netip.AddrFrom4(a)
	n.Sys(0, nil, "getsockopt(%d, IPPROTO_IP, IP_MULTICAST_IF, [%s], [4])", byIndex.fd, rep.IfaceAddr)
	r2, err := xnetSendAndCollect(n, "pinned by index", byIndex, payload, l.To(), set)
	if err != nil {
		return rep, err
	}
	n.Say("Pinned by address, the datagram leaves from %s, the address we named. Pinned by "+
		"index, the kernel stored no address (IP_MULTICAST_IF reads back %s) and chooses the "+
		"source itself: %s, the interface's primary address (inet_select_addr).",
		addrOf(r1), rep.IfaceAddr, addrOf(r2))

	n.Step("x/net again, but the socket bound to %s first", rep.Secondary)
	bound, err := xnetSender(n, netip.AddrPortFrom(rep.Secondary, 0), ifc)
	if err != nil {
		return rep, err
	}
	defer bound.Close()
	r3, err := xnetSendAndCollect(n, "bound, pinned by index", bound, payload, l.To(), set)
	if err != nil {
		return rep, err
	}
	if r1.Count("B") == 1 && r2.Count("B") == 1 && r3.Count("B") == 1 {
		rep.DeliveredBoth = true
		rep.ByAddress, rep.ByIndex = r1.Got["B"][0].From, r2.Got["B"][0].From
		rep.BoundByIndex = r3.Got["B"][0].From
	}
	n.Say("A bound socket keeps its address: %s. x/net/ipv4 pins by index, so when the "+
		"source address matters (a receiver filtering on it, a source-specific join), bind "+
		"the sending socket to that address.", addrOf(r3))
	return rep, nil
}

// xnetSender is the x/net sender: a UDP socket bound to local, its outgoing interface set by
// index, TTL 1, loop off (host A has no member of the group: no local copy is wanted).
func xnetSender(n *lab.Narrator, local netip.AddrPort, ifc *net.Interface) (*xnetConn, error) {
	x, err := listenXNet(n, local)
	if err != nil {
		return nil, err
	}
	err = x.p.SetMulticastInterface(ifc)
	if goCall(n, err, fmt.Sprintf("p.SetMulticastInterface(%s)", ifc.Name),
		fmt.Sprintf("setsockopt(%d, IPPROTO_IP, IP_MULTICAST_IF, {ifindex %d})", x.fd, ifc.Index)) != nil {
		x.Close()
		// Refuse to send unpinned, as every sender of this chapter does.
		return nil, fmt.Errorf("%w (%s: %w)", ErrNotPinned, ifc.Name, err)
	}
	err = x.p.SetMulticastTTL(1)
	if goCall(n, err, "p.SetMulticastTTL(1)", fmt.Sprintf("setsockopt(%d, IPPROTO_IP, IP_MULTICAST_TTL, [1], 4)", x.fd)) != nil {
		x.Close()
		return nil, err
	}
	err = x.p.SetMulticastLoopback(false)
	if goCall(n, err, "p.SetMulticastLoopback(false)", fmt.Sprintf("setsockopt(%d, IPPROTO_IP, IP_MULTICAST_LOOP, [0], 4)", x.fd)) != nil {
		x.Close()
		return nil, err
	}
	return x, nil
}

// xnetSendAndCollect sends one datagram with ipv4.PacketConn.WriteTo and gathers what every
// socket of the set received.
func xnetSendAndCollect(n *lab.Narrator, title string, x *xnetConn, payload []byte, to netip.AddrPort, set *socketSet) (round, error) {
	sent, err := x.p.WriteTo(payload, nil, net.UDPAddrFromAddrPort(to))
	if err != nil {
		n.Result("p.WriteTo(%s, nil, %s) = %v", quote(payload), to, err)
		return round{Title: title, Got: map[string][]datagram{}}, fmt.Errorf("send to %v: %w", to, err)
	}
	n.Result("p.WriteTo(%s, nil, %s) = %d", quote(payload), to, sent)
	n.Result("   via sendto(%d, ...)", x.fd)
	return gather(n, title, set)
}

// addrOf is the source address of B's datagram in a round, or "nothing".
func addrOf(r round) string {
	if r.Count("B") == 0 {
		return "nothing arrived"
	}
	return r.Got["B"][0].From.Addr().String()
}

func partXNet(d *lab.Demo) error {
	if !d.NeedPrivate("x/net/ipv4 join and send between two hosts") {
		return nil
	}
	h, err := newTwoHosts(d.Narrator)
	if err != nil {
		return err
	}
	defer h.Close()
	_, err = stepXNet(d.Narrator, h, classic)
	return err
}
