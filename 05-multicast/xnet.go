//go:build linux

package main

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"

	"socklab/internal/lab"
)

// What golang.org/x/net/ipv4 does on Linux, spelled as its system calls (x/net v0.62.0,
// ipv4/sys_linux.go): PacketConn.JoinGroup(ifi, group) is setsockopt(MCAST_JOIN_GROUP) with a
// struct group_req naming the interface by index, and SetMulticastInterface(ifi) is
// setsockopt(IP_MULTICAST_IF) with a struct ip_mreqn carrying only the index. The classic C
// code passes interface *addresses* instead. The difference shows in the source address.

// groupReq builds struct group_req {u32 gr_interface; struct sockaddr_storage gr_group} (136
// bytes on 64-bit Linux: the storage is 8-byte aligned) for an IPv4 group; x/sys has no type
// for it.
func groupReq(ifindex int, group netip.Addr) []byte {
	const sizeofSockaddrStorage = 128 // struct __kernel_sockaddr_storage
	b := make([]byte, 8+sizeofSockaddrStorage)
	binary.NativeEndian.PutUint32(b[0:], uint32(ifindex))
	binary.NativeEndian.PutUint16(b[8:], unix.AF_INET) // sin_family, host order
	a := group.As4()
	copy(b[12:], a[:]) // sin_port 0 at b[10:12]; sin_addr follows
	return b
}

// joinGroupByIndex is MCAST_JOIN_GROUP (RFC 3678), the protocol-independent join x/net uses.
func joinGroupByIndex(n *lab.Narrator, fd int, ifc *net.Interface, group netip.Addr) error {
	req := groupReq(ifc.Index, group)
	err := unix.SetsockoptString(fd, unix.IPPROTO_IP, unix.MCAST_JOIN_GROUP, string(req))
	if n.Sys(0, err, "setsockopt(%d, IPPROTO_IP, MCAST_JOIN_GROUP, {if %d=%s, %s}, %d)", fd, ifc.Index, ifc.Name, group, len(req)) != nil {
		return fmt.Errorf("MCAST_JOIN_GROUP: %w", err)
	}
	return nil
}

// pinByIndex is IP_MULTICAST_IF with a struct ip_mreqn holding only the interface index, as
// x/net's SetMulticastInterface sets it.
func pinByIndex(n *lab.Narrator, fd int, ifc *net.Interface) error {
	m := &unix.IPMreqn{Ifindex: int32(ifc.Index)}
	err := unix.SetsockoptIPMreqn(fd, unix.IPPROTO_IP, unix.IP_MULTICAST_IF, m)
	if n.Sys(0, err, "setsockopt(%d, IPPROTO_IP, IP_MULTICAST_IF, {imr_ifindex=%d}, %d)", fd, ifc.Index, unsafe.Sizeof(*m)) != nil {
		return fmt.Errorf("%w (%s: %w)", ErrNotPinned, ifc.Name, err)
	}
	return nil
}

// xnetReport is the source address host B saw for each way of pinning host A's interface.
type xnetReport struct {
	Users         int // members on B's veth after the by-index join
	ByAddress     netip.AddrPort
	ByIndex       netip.AddrPort
	BoundByIndex  netip.AddrPort // pinned by index, socket bound to the secondary address
	Primary       netip.Addr     // A's primary address on the veth
	Secondary     netip.Addr     // the second address given to A's veth for this step
	DeliveredBoth bool
}

// secondaryA is a second address for host A's veth, in the same subnet.
var secondaryA = netip.MustParsePrefix("192.0.2.3/24")

// stepXNet: B joins by index (MCAST_JOIN_GROUP); A's veth gets a second address; A sends once
// pinned by that address (classic) and once pinned by index (x/net).
func stepXNet(n *lab.Narrator, h *twoHosts, l lesson) (xnetReport, error) {
	rep := xnetReport{Primary: h.A(), Secondary: secondaryA.Addr()}
	n.Step("host B joins %s the x/net way: MCAST_JOIN_GROUP, interface by index", l.Group)
	set := newSocketSet()
	defer set.closeAll()
	err := h.onB(func() error {
		ifc, err := net.InterfaceByName(h.Link.PeerIf)
		if err != nil {
			return err
		}
		fd, err := openReceiver(n, receiverOptions{Port: l.Port})
		if err != nil {
			return err
		}
		set.add("B", fd)
		if err := joinGroupByIndex(n, fd, ifc, l.Group); err != nil {
			return err
		}
		rep.Users = usersNow(h.Link.PeerIf, l.Group)
		return nil
	})
	if err != nil {
		return rep, err
	}
	n.Say("The same membership as IP_ADD_MEMBERSHIP (%s on %s, users %d in B's "+
		"/proc/net/igmp); only the way of naming the interface differs.", l.Group, h.Link.PeerIf, rep.Users)

	n.Step("host A's veth gets a second address, %s", secondaryA)
	if out, err := exec.Command("ip", "addr", "add", secondaryA.String(), "dev", h.Link.LocalIf).CombinedOutput(); err != nil {
		return rep, fmt.Errorf("ip addr add %s: %v: %s", secondaryA, err, strings.TrimSpace(string(out)))
	}
	n.Say("`ip addr add %s dev %s`: a secondary address (the first one in a subnet is the "+
		"primary).", secondaryA, h.Link.LocalIf)

	payload := nulTerminated(defaultMessage)
	n.Step("send pinned by address (classic), then by index (x/net)")
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
	byIndex, err := openUDP(n)
	if err != nil {
		return rep, err
	}
	defer unix.Close(byIndex)
	if err := pinByIndex(n, byIndex, ifc); err != nil {
		return rep, err
	}
	r2, err := sendAndCollect(n, "pinned by index", byIndex, payload, l.To(), set)
	if err != nil {
		return rep, err
	}
	n.Say("Pinned by address, the datagram leaves from %s, the address we named. Pinned by "+
		"index, the kernel chooses the source itself: %s, the interface's primary address "+
		"(inet_select_addr).", addrOf(r1), addrOf(r2))

	n.Step("pinned by index, but the socket bound to %s first", rep.Secondary)
	bound, err := openUDP(n)
	if err != nil {
		return rep, err
	}
	defer unix.Close(bound)
	if err := bindAddr(n, bound, netip.AddrPortFrom(rep.Secondary, 0)); err != nil {
		return rep, err
	}
	if err := pinByIndex(n, bound, ifc); err != nil {
		return rep, err
	}
	r3, err := sendAndCollect(n, "bound, pinned by index", bound, payload, l.To(), set)
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

// addrOf is the source address of B's datagram in a round, or "nothing".
func addrOf(r round) string {
	if r.Count("B") == 0 {
		return "nothing arrived"
	}
	return r.Got["B"][0].From.Addr().String()
}

func partXNet(d *lab.Demo) error {
	if !d.NeedPrivate("x/net-style pinning between two hosts") {
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
