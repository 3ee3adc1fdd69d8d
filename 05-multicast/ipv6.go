//go:build linux

package main

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"socklab/internal/lab"
)

// ipv6Group is a transient (T flag, ff1x), link-local-scope (xxx2) group: ff12::/16 datagrams
// never leave the link, whatever the hop limit (RFC 4291 §2.7).
var ipv6Group = netip.MustParseAddr("ff12::8888")

// ipv6Report is what part E observed: B's member got the datagram, from A's link-local address.
type ipv6Report struct {
	Got      round
	Users    int            // members of the group on B's veth, from /proc/net/igmp6
	LinkA    netip.Addr     // host A's link-local address on the veth
	Sender   netip.AddrPort // as the receiver saw it
	IfindexA int
}

// stepIPv6 joins ff12::8888 on host B's veth (IPV6_JOIN_GROUP, by interface index) and sends
// to it from host A with IPV6_MULTICAST_IF set to A's veth index and a hop limit of 1.
func stepIPv6(n *lab.Narrator, h *twoHosts, port uint16) (ipv6Report, error) {
	var rep ipv6Report
	n.Step("host B joins %s on its veth with IPV6_JOIN_GROUP", ipv6Group)
	set := newSocketSet()
	defer set.closeAll()
	err := h.onB(func() error {
		ifc, err := net.InterfaceByName(h.Link.PeerIf)
		if err != nil {
			return err
		}
		// IPv6 configures a link only once the kernel has seen its carrier: until the
		// link-local address exists, arriving datagrams count as Ip6InNoRoutes and vanish.
		if _, err := waitLinkLocal(ifc); err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if n.Sys(fd, err, "socket(AF_INET6, SOCK_DGRAM, 0)") != nil {
			return fmt.Errorf("socket: %w", err)
		}
		set.add("B", fd)
		if err := setInt(n, fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1, "SOL_SOCKET", "SO_REUSEADDR"); err != nil {
			return err
		}
		if err := bindAddr(n, fd, netip.AddrPortFrom(netip.IPv6Unspecified(), port)); err != nil {
			return err
		}
		// struct ipv6_mreq names the interface by index only: IPv6 has no "interface address"
		// form (ipv6(7)).
		m := &unix.IPv6Mreq{Multiaddr: ipv6Group.As16(), Interface: uint32(ifc.Index)}
		err = unix.SetsockoptIPv6Mreq(fd, unix.IPPROTO_IPV6, unix.IPV6_JOIN_GROUP, m)
		if n.Sys(0, err, "setsockopt(%d, IPPROTO_IPV6, IPV6_JOIN_GROUP, {%s, if %d=%s}, 20)", fd, ipv6Group, ifc.Index, ifc.Name) != nil {
			return fmt.Errorf("IPV6_JOIN_GROUP: %w", err)
		}
		list, err := readIGMP6()
		if err != nil {
			return err
		}
		rep.Users = usersOf(list, h.Link.PeerIf, ipv6Group)
		n.Say("Host B's membership list (/proc/net/igmp6) has %s on %s, users %d; "+
			"on the link, the kernel announces it with MLD, IPv6's IGMP.", ipv6Group, ifc.Name, rep.Users)
		return nil
	})
	if err != nil {
		return rep, err
	}

	n.Step("host A sends with IPV6_MULTICAST_IF = its veth's index, hop limit 1")
	ifc, err := net.InterfaceByName(h.Link.LocalIf)
	if err != nil {
		return rep, err
	}
	rep.IfindexA = ifc.Index
	// The kernel picks the source for a link-local group among A's link-local addresses;
	// until the veth has one, sendto fails with EADDRNOTAVAIL.
	if rep.LinkA, err = waitLinkLocal(ifc); err != nil {
		return rep, err
	}
	s, err := unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if n.Sys(s, err, "socket(AF_INET6, SOCK_DGRAM, 0)") != nil {
		return rep, fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(s)
	err = unix.SetsockoptInt(s, unix.IPPROTO_IPV6, unix.IPV6_MULTICAST_IF, ifc.Index)
	if n.Sys(0, err, "setsockopt(%d, IPPROTO_IPV6, IPV6_MULTICAST_IF, [%d], 4)", s, ifc.Index) != nil {
		return rep, fmt.Errorf("%w (%s: %w)", ErrNotPinned, ifc.Name, err)
	}
	if err := setInt(n, s, unix.IPPROTO_IPV6, unix.IPV6_MULTICAST_HOPS, 1, "IPPROTO_IPV6", "IPV6_MULTICAST_HOPS"); err != nil {
		return rep, err
	}
	rep.Got, err = sendAndCollect(n, "ipv6", s, nulTerminated(defaultMessage), netip.AddrPortFrom(ipv6Group, port), set)
	if err != nil {
		return rep, err
	}
	for _, d := range rep.Got.Got["B"] {
		rep.Sender = d.From
	}
	n.Say("B received it from %s, host A's link-local address: with the interface chosen by "+
		"index, the kernel picks the source address itself (RFC 6724), here the one address "+
		"whose scope matches a link-local group.", rep.Sender.Addr())
	return rep, nil
}

// waitLinkLocal waits (at most 5 s) until the interface has its IPv6 link-local address, and
// returns it.
func waitLinkLocal(ifc *net.Interface) (netip.Addr, error) {
	var found netip.Addr
	var err error
	lab.Poll(5*time.Second, func() bool {
		var addrs []net.Addr
		if addrs, err = ifc.Addrs(); err != nil {
			return true
		}
		for _, a := range addrs {
			if p, perr := netip.ParsePrefix(a.String()); perr == nil && p.Addr().IsLinkLocalUnicast() {
				found = p.Addr()
				return true
			}
		}
		return false
	})
	switch {
	case err != nil:
		return netip.Addr{}, err
	case !found.IsValid():
		return netip.Addr{}, fmt.Errorf("%s has no IPv6 link-local address after 5 s", ifc.Name)
	}
	return found, nil
}

// readIGMP6 is the IPv6 membership list of the calling thread's namespace
// (net/ipv6/mcast.c, igmp6_mc_seq_show): "idx name group users flags timer", the group as 32
// hex digits in network order.
func readIGMP6() ([]membership, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	b, err := os.ReadFile("/proc/thread-self/net/igmp6")
	if err != nil {
		return nil, err
	}
	var out []membership
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || len(f[2]) != 32 {
			continue
		}
		var a [16]byte
		for i := range a {
			v, err := strconv.ParseUint(f[2][2*i:2*i+2], 16, 8)
			if err != nil {
				return nil, fmt.Errorf("igmp6: bad group %q", f[2])
			}
			a[i] = byte(v)
		}
		users, err := strconv.Atoi(f[3])
		if err != nil {
			return nil, fmt.Errorf("igmp6: bad users %q", f[3])
		}
		out = append(out, membership{Iface: f[1], Group: netip.AddrFrom16(a), Users: users})
	}
	return out, sc.Err()
}

func partIPv6(d *lab.Demo) error {
	if !d.NeedPrivate("IPv6 multicast between two hosts") {
		return nil
	}
	h, err := newTwoHosts(d.Narrator)
	if err != nil {
		return err
	}
	defer h.Close()
	_, err = stepIPv6(d.Narrator, h, classic.Port)
	return err
}
