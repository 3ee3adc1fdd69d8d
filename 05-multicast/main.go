//go:build linux

// Command 05-multicast teaches IPv4 multicast (组播) and broadcast (广播) with raw system calls:
// joining a group (IP_ADD_MEMBERSHIP), sending to it with the outgoing interface pinned
// (IP_MULTICAST_IF), TTL scoping (IP_MULTICAST_TTL), the local copy (IP_MULTICAST_LOOP),
// leaving (IP_DROP_MEMBERSHIP), and SO_BROADCAST — each claim checked against what the kernel
// delivers and against its own membership list (/proc/net/igmp). Read along:
// docs/05-multicast.md.
//
// Safe by default: every sender pins IP_MULTICAST_IF to loopback (or, in the two-host parts,
// to a veth inside the private namespace) and refuses to send if that fails, so no datagram
// of this program follows the default route off the machine (ip(7), IP_MULTICAST_IF).
//
// Parts, in lesson order:
//
//	join       A. two receivers, a bystander that did not join, leaving the group
//	igmp       B. the kernel's membership list before and after join and leave
//	hosts      C. two hosts on a veth pair: TTL scoping and IP_MULTICAST_LOOP
//	broadcast  D. broadcast: SO_BROADCAST, and which bound addresses receive it
//	ipv6       E. IPv6 multicast (IPV6_JOIN_GROUP, ff12::/16) on the veth pair
//	xnet       F. the same join and send with golang.org/x/net/ipv4: interfaces by index
//
// Roles for two terminals, compatible with the course's C pair (testdata/mcast_*.c):
// recv (-group, -port, -iface, -count) and send (-group, -port, -iface, -msg, -interval,
// -count, -ttl, -loop).
package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"socklab/internal/lab"
)

// program is the chapter's command line: the demo parts and the two roles.
var program = lab.Program{
	Name:    "05-multicast",
	Summary: "IPv4 multicast 组播 and broadcast 广播 with raw system calls",
	Doc:     "docs/05-multicast.md",
	Parts: []lab.Part{
		{Name: "join", Title: "A. Joining a group: who receives, who does not, leaving", Run: partJoin},
		{Name: "igmp", Title: "B. The kernel's membership list: /proc/net/igmp", Run: partIGMP},
		{Name: "hosts", Title: "C. Two hosts on a veth pair: TTL scoping and loop", Run: partHosts},
		{Name: "broadcast", Title: "D. Broadcast: SO_BROADCAST, and who receives it", Run: partBroadcast},
		{Name: "ipv6", Title: "E. IPv6 multicast: IPV6_JOIN_GROUP on the veth pair", Run: partIPv6},
		{Name: "xnet", Title: "F. The x/net/ipv4 way: interfaces by index, source by the kernel", Run: partXNet},
	},
	Roles: []lab.Role{
		{Name: "recv", Summary: "join -group on -iface (loopback), print -count datagrams, leave", Run: runRecv},
		{Name: "send", Summary: "send -msg to -group every -interval, -count times, pinned to -iface", Run: runSend},
	},
}

func main() { program.Main() }

// The course's defaults, shared with the C pair in testdata/.
const (
	defaultGroup   = "224.0.0.100"
	defaultPort    = 8888
	defaultMessage = "BROCAST TEST DATA" // sic: the classic course spelling, kept for interop
)

// loopbackAddr is the address of the loopback interface: the only interface a sender of this
// program uses unless told otherwise.
var loopbackAddr = netip.MustParseAddr("127.0.0.1")

// quietLimit is how long a socket must stay silent for "it received nothing" to count. On
// loopback and veth a datagram that is delivered at all is queued within microseconds of
// sendto(), and all its copies in the same pass of the receive path, so a silent quarter
// second after the expected copies arrived is a wide margin.
const quietLimit = 250 * time.Millisecond

// ---------------------------------------------------------------------------------------------
// The system calls of the lesson. Each prints itself strace-style.

// mreq formats a struct ip_mreq {imr_multiaddr, imr_interface} compactly, to fit 80 columns.
func mreq(group, iface netip.Addr) string {
	return fmt.Sprintf("{%s, %s}", group, iface)
}

// openUDP is socket(AF_INET, SOCK_DGRAM, 0).
func openUDP(n *lab.Narrator) (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if n.Sys(fd, err, "socket(AF_INET, SOCK_DGRAM, 0)") != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	return fd, nil
}

// setInt is setsockopt with an int argument, narrated.
func setInt(n *lab.Narrator, fd, level, opt, value int, levelName, optName string) error {
	err := unix.SetsockoptInt(fd, level, opt, value)
	if n.Sys(0, err, "setsockopt(%d, %s, %s, [%d], 4)", fd, levelName, optName, value) != nil {
		return fmt.Errorf("setsockopt %s: %w", optName, err)
	}
	return nil
}

// bindAddr is bind(2) to addr, narrated.
func bindAddr(n *lab.Narrator, fd int, addr netip.AddrPort) error {
	sa := lab.SockaddrOf(addr)
	if err := n.Sys(0, unix.Bind(fd, sa), "bind(%d, %s)", fd, lab.Sockaddr(sa)); err != nil {
		return fmt.Errorf("bind %v: %w", addr, err)
	}
	return nil
}

// receiverOptions says how a receiving socket is set up.
type receiverOptions struct {
	Bind  netip.Addr // the address to bind; 0.0.0.0 (INADDR_ANY) in the classic receiver
	Port  uint16
	Group netip.Addr // the group to join; invalid = do not join (a bystander)
	Iface netip.Addr // the interface to join on, by its address (ip_mreq.imr_interface)
	// MulticastAll is IP_MULTICAST_ALL; nil leaves the kernel default (1). See partJoin.
	MulticastAll *int
	// RecvTTL asks for each datagram's IP TTL as ancillary data (IP_RECVTTL): the receiver's
	// proof of what TTL the packet carried on the wire.
	RecvTTL bool
}

// openReceiver is the classic receiver of the course (ip(7)):
//
//	socket(AF_INET, SOCK_DGRAM, 0)
//	setsockopt(SO_REUSEADDR)       several receivers may share the port
//	bind(INADDR_ANY:port)          a group address is a destination, never a local address
//	setsockopt(IP_MULTICAST_LOOP)  as the classic code does; it only matters on a sender
//	setsockopt(IP_ADD_MEMBERSHIP)  join group on the interface whose address is Iface
func openReceiver(n *lab.Narrator, o receiverOptions) (int, error) {
	fd, err := openUDP(n)
	if err != nil {
		return -1, err
	}
	fail := func(err error) (int, error) { unix.Close(fd); return -1, err }
	if err := setInt(n, fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1, "SOL_SOCKET", "SO_REUSEADDR"); err != nil {
		return fail(err)
	}
	if o.MulticastAll != nil {
		if err := setInt(n, fd, unix.IPPROTO_IP, unix.IP_MULTICAST_ALL, *o.MulticastAll, "IPPROTO_IP", "IP_MULTICAST_ALL"); err != nil {
			return fail(err)
		}
	}
	if o.RecvTTL {
		if err := setInt(n, fd, unix.IPPROTO_IP, unix.IP_RECVTTL, 1, "IPPROTO_IP", "IP_RECVTTL"); err != nil {
			return fail(err)
		}
	}
	bind := o.Bind
	if !bind.IsValid() {
		bind = netip.IPv4Unspecified()
	}
	if err := bindAddr(n, fd, netip.AddrPortFrom(bind, o.Port)); err != nil {
		return fail(err)
	}
	if !o.Group.IsValid() {
		return fd, nil
	}
	if err := setInt(n, fd, unix.IPPROTO_IP, unix.IP_MULTICAST_LOOP, 1, "IPPROTO_IP", "IP_MULTICAST_LOOP"); err != nil {
		return fail(err)
	}
	if err := joinGroup(n, fd, o.Group, o.Iface); err != nil {
		return fail(err)
	}
	return fd, nil
}

// joinGroup is IP_ADD_MEMBERSHIP: the kernel adds (group, interface) to the socket's list and,
// for the first socket, to the interface's list in /proc/net/igmp, sending an IGMP membership
// report on a real link (RFC 3376).
func joinGroup(n *lab.Narrator, fd int, group, iface netip.Addr) error {
	m := &unix.IPMreq{Multiaddr: group.As4(), Interface: iface.As4()}
	err := unix.SetsockoptIPMreq(fd, unix.IPPROTO_IP, unix.IP_ADD_MEMBERSHIP, m)
	if n.Sys(0, err, "setsockopt(%d, IPPROTO_IP, IP_ADD_MEMBERSHIP, %s, 8)", fd, mreq(group, iface)) != nil {
		return fmt.Errorf("join %v on %v: %w", group, iface, err)
	}
	return nil
}

// leaveGroup is IP_DROP_MEMBERSHIP, the undo of joinGroup (close() does it implicitly).
func leaveGroup(n *lab.Narrator, fd int, group, iface netip.Addr) error {
	m := &unix.IPMreq{Multiaddr: group.As4(), Interface: iface.As4()}
	err := unix.SetsockoptIPMreq(fd, unix.IPPROTO_IP, unix.IP_DROP_MEMBERSHIP, m)
	if n.Sys(0, err, "setsockopt(%d, IPPROTO_IP, IP_DROP_MEMBERSHIP, %s, 8)", fd, mreq(group, iface)) != nil {
		return fmt.Errorf("leave %v on %v: %w", group, iface, err)
	}
	return nil
}

// senderOptions says how a sending socket is set up.
type senderOptions struct {
	Iface netip.Addr // IP_MULTICAST_IF: the interface (by address) that carries the datagrams
	TTL   int        // IP_MULTICAST_TTL: 1 = this link (the default); 0 = this host, see part C
	Loop  bool       // IP_MULTICAST_LOOP: deliver a copy to members on the sending host
}

// ErrNotPinned wraps the failure to pin the outgoing interface: the sender refuses to send,
// because without IP_MULTICAST_IF the kernel routes a group address by the routing table —
// on most machines the default route, off the machine.
var ErrNotPinned = errors.New("refusing to send: the outgoing interface could not be pinned with IP_MULTICAST_IF")

// openSender is the classic sender, made safe: IP_MULTICAST_IF first, and no datagram leaves
// unless it succeeded; then the TTL and the loop option (ip(7)).
func openSender(n *lab.Narrator, o senderOptions) (int, error) {
	fd, err := openUDP(n)
	if err != nil {
		return -1, err
	}
	fail := func(err error) (int, error) { unix.Close(fd); return -1, err }
	// IP_MULTICAST_IF takes a struct in_addr (or ip_mreqn); x/sys spells the in_addr form
	// SetsockoptInet4Addr.
	err = unix.SetsockoptInet4Addr(fd, unix.IPPROTO_IP, unix.IP_MULTICAST_IF, o.Iface.As4())
	if n.Sys(0, err, "setsockopt(%d, IPPROTO_IP, IP_MULTICAST_IF, [%s], 4)", fd, o.Iface) != nil {
		return fail(fmt.Errorf("%w (%v: %w)", ErrNotPinned, o.Iface, err))
	}
	if err := setInt(n, fd, unix.IPPROTO_IP, unix.IP_MULTICAST_TTL, o.TTL, "IPPROTO_IP", "IP_MULTICAST_TTL"); err != nil {
		return fail(err)
	}
	loop := 0
	if o.Loop {
		loop = 1
	}
	if err := setInt(n, fd, unix.IPPROTO_IP, unix.IP_MULTICAST_LOOP, loop, "IPPROTO_IP", "IP_MULTICAST_LOOP"); err != nil {
		return fail(err)
	}
	return fd, nil
}

// sendDatagram is sendto(2) of one datagram.
func sendDatagram(n *lab.Narrator, fd int, payload []byte, to netip.AddrPort) error {
	sa := lab.SockaddrOf(to)
	err := unix.Sendto(fd, payload, 0, sa)
	ret := len(payload)
	if n.Sys(ret, err, "sendto(%d, %s, %d, 0, %s)", fd, quote(payload), len(payload), lab.Sockaddr(sa)) != nil {
		return fmt.Errorf("sendto %v: %w", to, err)
	}
	return nil
}

// nulTerminated is the classic payload: the C string with its terminating NUL, as
// sendto(fd, buf, strlen(buf)+1, ...) sends it.
func nulTerminated(s string) []byte { return append([]byte(s), 0) }

// quote renders a payload as strace does: "BROCAST TEST DATA\0".
func quote(b []byte) string {
	var s strings.Builder
	s.WriteByte('"')
	for _, c := range b {
		switch {
		case c == 0:
			s.WriteString(`\0`)
		case c == '"' || c == '\\':
			s.WriteByte('\\')
			s.WriteByte(c)
		case c >= 0x20 && c < 0x7f:
			s.WriteByte(c)
		default:
			fmt.Fprintf(&s, `\%o`, c)
		}
	}
	s.WriteByte('"')
	return s.String()
}

// datagram is one datagram as recvmsg(2) returned it.
type datagram struct {
	Payload []byte
	From    netip.AddrPort
	TTL     int // the IP TTL it arrived with (IP_RECVTTL), or -1 when not asked for
}

// Text is the payload up to its first NUL, as the C receiver's printf("%s") shows it.
func (d datagram) Text() string {
	for i, b := range d.Payload {
		if b == 0 {
			return string(d.Payload[:i])
		}
	}
	return string(d.Payload)
}

// readDatagram is one recvmsg(2) on a readable socket, with the TTL from IP_RECVTTL's control
// message when the socket asked for it.
func readDatagram(n *lab.Narrator, fd int) (datagram, error) {
	buf := make([]byte, 1500)
	oob := make([]byte, unix.CmsgSpace(4))
	size, oobn, _, from, err := unix.Recvmsg(fd, buf, oob, unix.MSG_DONTWAIT)
	if n.Sys(size, err, "recvmsg(%d, ..., 0)", fd) != nil {
		return datagram{}, fmt.Errorf("recvmsg: %w", err)
	}
	d := datagram{Payload: buf[:size], From: lab.AddrPortOf(from), TTL: -1}
	if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
		for _, m := range msgs {
			if m.Header.Level == unix.IPPROTO_IP && m.Header.Type == unix.IP_TTL && len(m.Data) >= 4 {
				d.TTL = int(binary.NativeEndian.Uint32(m.Data))
			}
		}
	}
	if d.TTL >= 0 {
		n.Result("%s from %s, TTL %d", quote(d.Payload), d.From, d.TTL)
	} else {
		n.Result("%s from %s", quote(d.Payload), d.From)
	}
	return d, nil
}

// collect reads every datagram that arrives on any of fds until all of them have been silent
// for quiet (and at most 64 datagrams): after a send, what each socket got. Every copy of a
// datagram is queued in the same pass of the receive path, so once the expected copies are in,
// a quiet period on the other sockets means they got none.
func collect(n *lab.Narrator, fds []int, quiet time.Duration) (map[int][]datagram, error) {
	got := map[int][]datagram{}
	for total := 0; total < 64; {
		pfds := make([]unix.PollFd, len(fds))
		for i, fd := range fds {
			pfds[i] = unix.PollFd{Fd: int32(fd), Events: unix.POLLIN}
		}
		ready, err := unix.Poll(pfds, int(quiet.Milliseconds()))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return got, fmt.Errorf("poll: %w", err)
		}
		if ready == 0 {
			return got, nil
		}
		for _, p := range pfds {
			if p.Revents&unix.POLLIN == 0 {
				continue
			}
			d, err := readDatagram(n, int(p.Fd))
			if err != nil {
				return got, err
			}
			got[int(p.Fd)] = append(got[int(p.Fd)], d)
			total++
		}
	}
	return got, nil
}

// waitReadable polls fd for POLLIN for up to timeout, retrying on EINTR (Go's runtime sends
// signals). It reports whether fd became readable.
func waitReadable(fd int, timeout time.Duration) (bool, error) {
	deadline := time.Now().Add(timeout)
	for {
		left := time.Until(deadline)
		if left < 0 {
			left = 0
		}
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		ready, err := unix.Poll(fds, int(left.Milliseconds()))
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return false, fmt.Errorf("poll: %w", err)
		}
		return ready > 0, nil
	}
}

// closeFD is close(2), narrated.
func closeFD(n *lab.Narrator, fd int) {
	n.Sys(0, unix.Close(fd), "close(%d)", fd)
}
