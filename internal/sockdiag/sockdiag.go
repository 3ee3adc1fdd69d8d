//go:build linux

// Package sockdiag asks the kernel for its own view of sockets, the way ss(8) does: through
// NETLINK_SOCK_DIAG and the inet_diag protocol (see sock_diag(7)). It sees sockets that no
// file descriptor of ours holds — TIME_WAIT mini-sockets, orphaned FIN_WAIT2 / LAST_ACK,
// SYN_RECV request sockets, children waiting in an accept queue — and needs no privilege.
//
// The netlink socket is opened per call, on the calling thread, so a dump describes the
// network namespace of the thread that asks (see internal/netlab for per-thread namespaces).
package sockdiag

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// State is a socket state as the kernel numbers it (include/net/tcp_states.h). The same
// numbers appear in TCP_INFO's tcpi_state, in sock_diag replies and in /proc/net/tcp.
type State uint8

// The kernel's TCP states. The names are the kernel's, which ss prints abbreviated.
const (
	Established State = 1
	SynSent     State = 2
	SynRecv     State = 3
	FinWait1    State = 4
	FinWait2    State = 5
	TimeWait    State = 6
	Close       State = 7
	CloseWait   State = 8
	LastAck     State = 9
	Listen      State = 10
	Closing     State = 11
	// NewSynRecv is the kernel-internal state of a request socket; sock_diag reports request
	// sockets as SynRecv, so callers normally never see it.
	NewSynRecv State = 12
)

var stateNames = [...]string{
	Established: "ESTABLISHED",
	SynSent:     "SYN_SENT",
	SynRecv:     "SYN_RECV",
	FinWait1:    "FIN_WAIT1",
	FinWait2:    "FIN_WAIT2",
	TimeWait:    "TIME_WAIT",
	Close:       "CLOSE",
	CloseWait:   "CLOSE_WAIT",
	LastAck:     "LAST_ACK",
	Listen:      "LISTEN",
	Closing:     "CLOSING",
	NewSynRecv:  "NEW_SYN_RECV",
}

// String returns the kernel's name of the state, e.g. "TIME_WAIT".
func (s State) String() string {
	if int(s) < len(stateNames) && stateNames[s] != "" {
		return stateNames[s]
	}
	return fmt.Sprintf("STATE(%d)", uint8(s))
}

// ParseState turns a kernel state name ("FIN_WAIT2", case-sensitive) back into a State.
func ParseState(name string) (State, error) {
	for i, n := range stateNames {
		if n == name && n != "" {
			return State(i), nil
		}
	}
	return 0, fmt.Errorf("unknown TCP state %q (want one of ESTABLISHED, SYN_SENT, ..., CLOSING)", name)
}

// Timer is the kind of timer the kernel reports as pending on a socket (idiag_timer; ss -o
// prints the same kinds).
type Timer uint8

// Timer kinds, as numbered in net/ipv4/inet_diag.c.
const (
	// TimerNone: no timer pending. A full socket's timer also reads as none, with a zero
	// retransmit count, for the moment its handler runs: the kernel unlinks a timer before it
	// calls the handler, and inet_diag checks timer_pending() (or icsk_pending, which the
	// write timer clears first). A poll that follows a timer must look past such a sample.
	TimerNone       Timer = 0
	TimerRetransmit Timer = 1 // retransmission (also the SYN-ACK timer of a request socket)
	TimerKeepalive  Timer = 2 // keepalive; also an orphaned FIN_WAIT2 when tcp_fin_timeout > 60 s
	// TimerTimeWait is the timer of a TIME_WAIT mini-socket (TCP_TIMEWAIT_LEN = 60 s), and also
	// of an orphaned FIN_WAIT2, which the kernel turns into a timewait mini-socket in substate
	// FIN_WAIT2 when tcp_fin_timeout <= 60 s (tcp_time_wait in net/ipv4/tcp_minisocks.c).
	TimerTimeWait Timer = 3
	TimerProbe    Timer = 4 // zero-window probe (persist) timer
)

// String names the timer as ss -o does ("on", "keepalive", "timewait", "persist").
func (t Timer) String() string {
	switch t {
	case TimerNone:
		return "off"
	case TimerRetransmit:
		return "on"
	case TimerKeepalive:
		return "keepalive"
	case TimerTimeWait:
		return "timewait"
	case TimerProbe:
		return "persist"
	}
	return fmt.Sprintf("timer(%d)", uint8(t))
}

// Socket is one row of the kernel's socket table.
type Socket struct {
	Family   int // unix.AF_INET or unix.AF_INET6
	Protocol int // unix.IPPROTO_TCP or unix.IPPROTO_UDP
	State    State
	Local    netip.AddrPort
	Remote   netip.AddrPort
	// RecvQ and SendQ are idiag_rqueue and idiag_wqueue. For a LISTEN socket they are the
	// current length of the accept queue and its maximum (the backlog given to listen(2),
	// capped by net.core.somaxconn); otherwise bytes not yet read / not yet acknowledged.
	RecvQ, SendQ uint32
	Timer        Timer
	// Expires is the time left on Timer (0 when no timer is pending).
	Expires time.Duration
	// Retransmits is idiag_retrans: unacknowledged retransmissions (for a request socket,
	// SYN-ACKs retransmitted).
	Retransmits uint8
	UID         uint32
	// Inode is the socket's inode; 0 means no file descriptor refers to it (TIME_WAIT,
	// request sockets, orphans after close).
	Inode uint32
	// Shutdown holds the kernel's sk_shutdown bits (INET_DIAG_SHUTDOWN): ShutRecv is set by
	// shutdown(SHUT_RD) or by the peer's FIN, ShutSend by shutdown(SHUT_WR) or close().
	// Only full sockets report it.
	Shutdown uint8
	// Info is the kernel's tcp_info for full TCP sockets (not TIME_WAIT, not request sockets);
	// nil otherwise. It is the same struct TCP_INFO returns for an fd we hold.
	Info *unix.TCPInfo
}

// Bits of Socket.Shutdown (RCV_SHUTDOWN and SEND_SHUTDOWN in include/net/sock.h).
const (
	ShutRecv = 1
	ShutSend = 2
)

// HasFD reports whether some file descriptor refers to the socket (inode != 0).
func (s Socket) HasFD() bool { return s.Inode != 0 }

// Protocol selects which sockets a Dump asks for.
type Protocol int

// Protocols Dump understands.
const (
	TCP Protocol = unix.IPPROTO_TCP
	UDP Protocol = unix.IPPROTO_UDP
)

// Filter narrows a dump. Zero fields match everything; the kernel is asked for all sockets
// of the protocol and the filter is applied here, so a Filter never hides a socket by accident
// of kernel-side filtering semantics.
type Filter struct {
	// Port matches sockets whose local or remote port equals it.
	Port uint16
	// Ports, if not empty, matches sockets whose local or remote port is any of them.
	Ports []uint16
	// Local and Remote, when valid, must equal the socket's addresses exactly (address and
	// port). Matching on the full 4-tuple is what keeps tests apart from leftover TIME_WAITs
	// of earlier connections that reused a port.
	Local, Remote netip.AddrPort
	// States, if not empty, keeps only these states.
	States []State
}

// Match reports whether s passes the filter.
func (f Filter) Match(s Socket) bool {
	if f.Port != 0 && s.Local.Port() != f.Port && s.Remote.Port() != f.Port {
		return false
	}
	if len(f.Ports) > 0 {
		found := false
		for _, p := range f.Ports {
			if s.Local.Port() == p || s.Remote.Port() == p {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	if f.Local.IsValid() && !sameAddrPort(f.Local, s.Local) {
		return false
	}
	if f.Remote.IsValid() && !sameAddrPort(f.Remote, s.Remote) {
		return false
	}
	if len(f.States) > 0 {
		found := false
		for _, st := range f.States {
			if s.State == st {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// sameAddrPort compares two endpoints, treating 127.0.0.1 and ::ffff:127.0.0.1 as equal
// because a dual-stack socket reports IPv4 peers in the mapped form.
func sameAddrPort(a, b netip.AddrPort) bool {
	return a.Port() == b.Port() && a.Addr().Unmap() == b.Addr().Unmap()
}

// Tuple is the filter for one connection seen from one end: its local and remote endpoint.
func Tuple(local, remote netip.AddrPort) Filter { return Filter{Local: local, Remote: remote} }

// Dump returns every socket of the protocol, IPv4 and IPv6, that passes the filter, in the
// namespace of the calling thread.
func Dump(proto Protocol, f Filter) ([]Socket, error) {
	var out []Socket
	for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
		socks, err := dumpFamily(family, uint8(proto))
		if err != nil {
			return nil, err
		}
		for _, s := range socks {
			if f.Match(s) {
				out = append(out, s)
			}
		}
	}
	return out, nil
}

// Find returns the one TCP socket with exactly this local and remote endpoint. found is
// false when the kernel has no such socket (it is gone, or never existed).
func Find(local, remote netip.AddrPort) (s Socket, found bool, err error) {
	socks, err := Dump(TCP, Tuple(local, remote))
	if err != nil || len(socks) == 0 {
		return Socket{}, false, err
	}
	return socks[0], true, nil
}

// Wire formats (include/uapi/linux/inet_diag.h). x/sys declares the constants but not these.

// inetDiagSockID is struct inet_diag_sockid (48 bytes). Ports and addresses are big-endian.
type inetDiagSockID struct {
	Sport  [2]byte
	Dport  [2]byte
	Src    [16]byte
	Dst    [16]byte
	If     uint32
	Cookie [2]uint32
}

// inetDiagReqV2 is struct inet_diag_req_v2 (56 bytes).
type inetDiagReqV2 struct {
	Family   uint8
	Protocol uint8
	Ext      uint8
	Pad      uint8
	States   uint32
	ID       inetDiagSockID
}

// inetDiagMsg is struct inet_diag_msg (72 bytes), the fixed header of each reply.
type inetDiagMsg struct {
	Family  uint8
	State   uint8
	Timer   uint8
	Retrans uint8
	ID      inetDiagSockID
	Expires uint32
	RQueue  uint32
	WQueue  uint32
	UID     uint32
	Inode   uint32
}

const (
	sizeofReq = int(unsafe.Sizeof(inetDiagReqV2{}))
	sizeofMsg = int(unsafe.Sizeof(inetDiagMsg{}))
	// Attribute types of the reply (enum in inet_diag.h).
	attrInfo     = 2 // INET_DIAG_INFO: struct tcp_info
	attrShutdown = 8 // INET_DIAG_SHUTDOWN: u8 sk_shutdown
)

func init() {
	// Layouts are fixed by the kernel ABI; a mismatch would silently misread every reply.
	if sizeofReq != 56 || sizeofMsg != 72 {
		panic(fmt.Sprintf("sockdiag: struct sizes %d/%d, want 56/72", sizeofReq, sizeofMsg))
	}
}

func dumpFamily(family, proto uint8) ([]Socket, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return nil, fmt.Errorf("socket(AF_NETLINK, NETLINK_SOCK_DIAG): %w", err)
	}
	defer unix.Close(fd)
	// A timeout keeps a misbehaving kernel reply from hanging a test forever.
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 5})

	req := inetDiagReqV2{
		Family:   family,
		Protocol: proto,
		// Ask for tcp_info and the shutdown bits; bit n-1 requests attribute n.
		Ext:    1<<(attrInfo-1) | 1<<(attrShutdown-1),
		States: 0xffffffff, // every state, including request sockets (reported as SYN_RECV)
	}
	const seq = 1
	hdr := unix.NlMsghdr{
		Len:   uint32(unix.NLMSG_HDRLEN + sizeofReq),
		Type:  unix.SOCK_DIAG_BY_FAMILY,
		Flags: unix.NLM_F_REQUEST | unix.NLM_F_DUMP,
		Seq:   seq,
	}
	buf := make([]byte, hdr.Len)
	*(*unix.NlMsghdr)(unsafe.Pointer(&buf[0])) = hdr
	*(*inetDiagReqV2)(unsafe.Pointer(&buf[unix.NLMSG_HDRLEN])) = req
	if err := unix.Sendto(fd, buf, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("sendto(NETLINK_SOCK_DIAG): %w", err)
	}

	var out []Socket
	rb := make([]byte, 64*1024)
	// A dump ends with NLMSG_DONE; the bound only guards against a kernel that never sends it.
	for range 100000 {
		n, _, err := unix.Recvfrom(fd, rb, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("recvfrom(NETLINK_SOCK_DIAG): %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(rb[:n])
		if err != nil {
			return nil, fmt.Errorf("parse netlink reply: %w", err)
		}
		for _, m := range msgs {
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				return out, nil
			case unix.NLMSG_ERROR:
				if len(m.Data) >= 4 {
					errno := -int32(binary.NativeEndian.Uint32(m.Data[:4]))
					if errno == 0 {
						continue
					}
					return nil, fmt.Errorf("sock_diag: %w", unix.Errno(errno))
				}
				return nil, errors.New("sock_diag: truncated error reply")
			case unix.SOCK_DIAG_BY_FAMILY:
				s, err := parseMsg(m.Data, proto)
				if err != nil {
					return nil, err
				}
				out = append(out, s)
			}
		}
	}
	return nil, errors.New("sock_diag: dump did not end")
}

func parseMsg(b []byte, proto uint8) (Socket, error) {
	if len(b) < sizeofMsg {
		return Socket{}, fmt.Errorf("sock_diag: reply of %d bytes, want at least %d", len(b), sizeofMsg)
	}
	var m inetDiagMsg
	copy(unsafe.Slice((*byte)(unsafe.Pointer(&m)), sizeofMsg), b)
	s := Socket{
		Family:      int(m.Family),
		Protocol:    int(proto),
		State:       State(m.State),
		Local:       endpoint(m.Family, m.ID.Src, m.ID.Sport),
		Remote:      endpoint(m.Family, m.ID.Dst, m.ID.Dport),
		RecvQ:       m.RQueue,
		SendQ:       m.WQueue,
		Timer:       Timer(m.Timer),
		Retransmits: m.Retrans,
		UID:         m.UID,
		Inode:       m.Inode,
	}
	if s.Timer != TimerNone {
		s.Expires = time.Duration(m.Expires) * time.Millisecond
	}
	// Attributes follow the header, each NLA-aligned.
	attrs := b[sizeofMsg:]
	for len(attrs) >= unix.SizeofNlAttr {
		l := int(binary.NativeEndian.Uint16(attrs[0:2]))
		t := binary.NativeEndian.Uint16(attrs[2:4]) &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)
		if l < unix.SizeofNlAttr || l > len(attrs) {
			break
		}
		payload := attrs[unix.SizeofNlAttr:l]
		switch t {
		case attrInfo:
			if proto == unix.IPPROTO_TCP {
				var info unix.TCPInfo
				copy(unsafe.Slice((*byte)(unsafe.Pointer(&info)), unsafe.Sizeof(info)), payload)
				s.Info = &info
			}
		case attrShutdown:
			if len(payload) >= 1 {
				s.Shutdown = payload[0]
			}
		}
		next := (l + unix.NLA_ALIGNTO - 1) &^ (unix.NLA_ALIGNTO - 1)
		if next > len(attrs) {
			break
		}
		attrs = attrs[next:]
	}
	return s, nil
}

func endpoint(family uint8, addr [16]byte, port [2]byte) netip.AddrPort {
	p := binary.BigEndian.Uint16(port[:])
	if family == unix.AF_INET {
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(addr[:4])), p)
	}
	return netip.AddrPortFrom(netip.AddrFrom16(addr), p)
}

// TCPInfo returns the kernel's tcp_info for a socket we hold (getsockopt TCP_INFO, tcp(7)).
func TCPInfo(fd int) (*unix.TCPInfo, error) {
	info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil {
		return nil, fmt.Errorf("getsockopt(%d, TCP_INFO): %w", fd, err)
	}
	return info, nil
}

// StateOf returns the state of the socket behind fd, from TCP_INFO. Beware: once the
// connection has moved to TIME_WAIT, the fd still held reports CLOSE — the TIME_WAIT is a
// separate mini-socket that only Dump can see.
func StateOf(fd int) (State, error) {
	info, err := TCPInfo(fd)
	if err != nil {
		return 0, err
	}
	return State(info.State), nil
}
