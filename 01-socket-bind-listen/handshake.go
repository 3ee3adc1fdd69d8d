//go:build linux

package main

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"socklab/internal/capture"
	"socklab/internal/lab"
	"socklab/internal/sockdiag"
)

// tcpiOptSynData is TCPI_OPT_SYN_DATA in tcpi_options (include/uapi/linux/tcp.h): the SYN
// carried data and the peer acknowledged it. x/sys does not define it.
const tcpiOptSynData = 0x20

// dropPureACKs is a classic BPF program (the language of tcpdump filters, see
// Documentation/networking/filter.rst) that drops TCP segments carrying only an ACK — no
// SYN, FIN or RST, and no payload — optionally only those from source port fromPort. Attached
// to a listening socket it also sees the segments meant for the listener's request sockets,
// so it can lose the third segment of a handshake on purpose. For a TCP socket the filter
// sees the TCP header at offset 0.
func dropPureACKs(fromPort uint16) []unix.SockFilter {
	stmt := func(code uint16, k uint32) unix.SockFilter { return unix.SockFilter{Code: code, K: k} }
	var p []unix.SockFilter
	jumpToAccept := []int{} // indexes whose false branch goes to "accept"
	if fromPort != 0 {
		p = append(p, stmt(unix.BPF_LD|unix.BPF_H|unix.BPF_ABS, 0)) // A = source port
		jumpToAccept = append(jumpToAccept, len(p))
		p = append(p, unix.SockFilter{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, K: uint32(fromPort)})
	}
	p = append(p,
		stmt(unix.BPF_LD|unix.BPF_B|unix.BPF_ABS, 13),    // A = flags byte
		stmt(unix.BPF_ALU|unix.BPF_AND|unix.BPF_K, 0x17), // keep FIN|SYN|RST|ACK
	)
	jumpToAccept = append(jumpToAccept, len(p))
	p = append(p, unix.SockFilter{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, K: 0x10}) // only ACK?
	p = append(p,
		stmt(unix.BPF_LD|unix.BPF_B|unix.BPF_ABS, 12),                                 // A = data offset << 4
		stmt(unix.BPF_ALU|unix.BPF_RSH|unix.BPF_K, 4),                                 // A = header length in words
		stmt(unix.BPF_ALU|unix.BPF_LSH|unix.BPF_K, 2),                                 // ... in bytes
		stmt(unix.BPF_MISC|unix.BPF_TAX, 0),                                           // X = header length
		stmt(unix.BPF_LD|unix.BPF_W|unix.BPF_LEN, 0),                                  // A = segment length
		unix.SockFilter{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_X, Jt: 0, Jf: 1}, // no payload?
		stmt(unix.BPF_RET|unix.BPF_K, 0),                                              // drop
		stmt(unix.BPF_RET|unix.BPF_K, 0xffffffff),                                     // accept
	)
	accept := len(p) - 1
	for _, i := range jumpToAccept {
		p[i].Jf = uint8(accept - (i + 1))
	}
	return p
}

// attachFilter is setsockopt(SO_ATTACH_FILTER) with a classic BPF program.
func attachFilter(n *lab.Narrator, fd int, prog []unix.SockFilter, what string) error {
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &fprog)
	n.Say("A classic BPF filter to %s:", what)
	return n.Sys(0, err, "setsockopt(%d, SOL_SOCKET, SO_ATTACH_FILTER, {len=%d, ...})", fd, len(prog))
}

// handshakeFacts is what the kernel showed of one handshake whose final ACK was held back.
type handshakeFacts struct {
	Listener, Client netip.AddrPort
	ClientState      sockdiag.State  // TCP_INFO right after connect() returned
	Server           sockdiag.Socket // the server's end as first seen, before the client sent data
	ServerAfterData  sockdiag.State
	Received         string
}

// connectClient is socket → [setsockopt TCP_QUICKACK 0] → connect (blocking) → getsockname.
func connectClient(n *lab.Narrator, to netip.AddrPort, delayACK bool) (int, netip.AddrPort, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err := n.Sys(fd, err, "socket(AF_INET, SOCK_STREAM, 0)"); err != nil {
		return -1, netip.AddrPort{}, err
	}
	if delayACK {
		// With quick ACKs off, the client's kernel delays the handshake's final ACK hoping
		// to piggy-back it on data (tcp(7), TCP_QUICKACK; tcp_rcv_synsent_state_process).
		err = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_QUICKACK, 0)
		if err := n.Sys(0, err, "setsockopt(%d, IPPROTO_TCP, TCP_QUICKACK, 0)", fd); err != nil {
			unix.Close(fd)
			return -1, netip.AddrPort{}, err
		}
	}
	sa := lab.SockaddrOf(to)
	if err := n.Sys(0, unix.Connect(fd, sa), "connect(%d, %s)", fd, lab.Sockaddr(sa)); err != nil {
		unix.Close(fd)
		return -1, netip.AddrPort{}, err
	}
	local, err := unix.Getsockname(fd)
	if err != nil {
		unix.Close(fd)
		return -1, netip.AddrPort{}, err
	}
	return fd, lab.AddrPortOf(local), nil
}

// halfOpenHandshake connects a client whose final ACK does not reach the server — delayed by
// TCP_QUICKACK=0 (delayACK), or dropped by the listener's filter — shows both ends, and then
// has the client send data, which completes the handshake. If synackRetrans > 0 it first
// waits for the server to retransmit its SYN-ACK that many times.
func halfOpenHandshake(n *lab.Narrator, delayACK, dropACK bool, synackRetrans int) (handshakeFacts, error) {
	var f handshakeFacts
	q, err := openListener(n, netip.AddrPortFrom(loopback4, 0), 4)
	if err != nil {
		return f, err
	}
	defer q.Close()
	f.Listener = q.Addr
	if dropACK {
		if err := attachFilter(n, q.lfd, dropPureACKs(0), "drop segments that are a bare ACK"); err != nil {
			return f, err
		}
	}
	cfd, caddr, err := connectClient(n, q.Addr, delayACK)
	if err != nil {
		return f, err
	}
	defer unix.Close(cfd)
	f.Client = caddr
	if f.ClientState, err = sockdiag.StateOf(cfd); err != nil {
		return f, err
	}
	found := lab.Poll(shortWait, func() bool {
		s, ok, err := sockdiag.Find(q.Addr, caddr)
		f.Server = s
		return err == nil && ok
	})
	if !found {
		return f, fmt.Errorf("server end %v → %v not in the kernel table", q.Addr, caddr)
	}
	if synackRetrans > 0 {
		ok := lab.Poll(retransmitWait, func() bool {
			s, found, err := sockdiag.Find(q.Addr, caddr)
			if err == nil && found {
				f.Server = s
			}
			return err == nil && found && (s.State != sockdiag.SynRecv || int(s.Retransmits) >= synackRetrans)
		})
		if !ok {
			return f, fmt.Errorf("no %d SYN-ACK retransmissions within %v (kernel: %v)", synackRetrans, retransmitWait, f.Server)
		}
	}
	n.Kernel(sockdiag.Filter{Port: q.Addr.Port()})

	msg := []byte("GET /")
	wn, err := unix.Write(cfd, msg)
	if err := n.Sys(wn, err, "write(%d, %q, %d)", cfd, msg, len(msg)); err != nil {
		return f, err
	}
	lab.Poll(shortWait, func() bool {
		_, f.ServerAfterData, err = findState(q.Addr, caddr)
		return f.ServerAfterData == sockdiag.Established
	})
	afd, _, err := q.acceptOne()
	if err != nil {
		return f, err
	}
	buf := make([]byte, 64)
	rn, err := unix.Read(afd, buf)
	if err := n.Sys(rn, err, "read(%d, buf, %d)", afd, len(buf)); err != nil {
		return f, err
	}
	f.Received = string(buf[:rn])
	n.Result("%q", f.Received)
	n.Kernel(sockdiag.Filter{Port: q.Addr.Port()})
	return f, nil
}

// overflowFacts is what happened to a client whose final ACK arrived when the accept queue
// was already full.
type overflowFacts struct {
	AbortOnOverflow bool
	ReadErr         error          // the client's read() after its data was sent
	ClientState     sockdiag.State // TCP_INFO of the client afterwards
	ServerState     sockdiag.State // the server's end for this client (0: none)
	Overflows       int64          // TcpExt ListenOverflows in this namespace
}

// overflowAtFinalACK sets net.ipv4.tcp_abort_on_overflow in a fresh namespace, then makes a
// client's final ACK arrive when the accept queue has just become full: client A's bare ACKs
// are dropped by a filter, client B completes and fills listen(fd, 0)'s single slot, and A's
// first data segment then acknowledges the SYN-ACK.
func overflowAtFinalACK(n *lab.Narrator, abort bool) (overflowFacts, error) {
	f := overflowFacts{AbortOnOverflow: abort}
	value := "0"
	if abort {
		value = "1"
	}
	n.Step("tcp_abort_on_overflow=%s: the final ACK arrives at a full accept queue", value)
	err := inFreshHost(n, "overflow", func() error {
		if err := setSysctl(n, "net.ipv4.tcp_abort_on_overflow", value); err != nil {
			return err
		}
		q, err := openListener(n, netip.AddrPortFrom(loopback4, 0), 0)
		if err != nil {
			return err
		}
		defer q.Close()
		afd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err := n.Sys(afd, err, "socket(AF_INET, SOCK_STREAM|SOCK_NONBLOCK, 0)   /* client A */"); err != nil {
			return err
		}
		defer unix.Close(afd)
		sa := &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}
		if err := n.Sys(0, unix.Bind(afd, sa), "bind(%d, %s)", afd, lab.Sockaddr(sa)); err != nil {
			return err
		}
		local, err := unix.Getsockname(afd)
		if err != nil {
			return err
		}
		a := lab.AddrPortOf(local)
		if err := attachFilter(n, q.lfd, dropPureACKs(a.Port()), fmt.Sprintf("drop bare ACKs from port %d", a.Port())); err != nil {
			return err
		}
		err = unix.Connect(afd, lab.SockaddrOf(q.Addr))
		n.Sys(0, err, "connect(%d, %s)", afd, lab.Sockaddr(lab.SockaddrOf(q.Addr)))
		if err != nil && err != unix.EINPROGRESS {
			return err
		}
		if !lab.Poll(shortWait, func() bool {
			_, cs, _ := findState(a, q.Addr)
			_, ss, _ := findState(q.Addr, a)
			return cs == sockdiag.Established && ss == sockdiag.SynRecv
		}) {
			return fmt.Errorf("client A did not reach ESTABLISHED with the server in SYN_RECV")
		}
		n.Say("Client A is ESTABLISHED, the server holds only a SYN_RECV request: A's ACK was dropped. Now client B fills the queue:")
		if err := q.connect(1, true); err != nil {
			return err
		}
		n.Kernel(sockdiag.Filter{Port: q.Addr.Port()})
		before, _ := sockdiag.Counter("TcpExt", "ListenOverflows")
		msg := []byte("x")
		wn, err := unix.Write(afd, msg)
		if err := n.Sys(wn, err, "write(%d, %q, 1)   /* client A: its ACK rides on data */", afd, msg); err != nil {
			return err
		}
		// The overflow is counted when the segment reaches the full queue.
		lab.Poll(shortWait, func() bool {
			now, _ := sockdiag.Counter("TcpExt", "ListenOverflows")
			st, _ := sockdiag.StateOf(afd)
			return now > before && (!abort || st == sockdiag.Close)
		})
		f.Overflows, _ = sockdiag.Counter("TcpExt", "ListenOverflows")
		f.Overflows -= before
		buf := make([]byte, 16)
		rn, rerr := unix.Read(afd, buf)
		f.ReadErr = rerr
		n.Sys(rn, rerr, "read(%d, buf, %d)", afd, len(buf))
		f.ClientState, _ = sockdiag.StateOf(afd)
		_, f.ServerState, _ = findState(q.Addr, a)
		n.Kernel(sockdiag.Filter{Port: q.Addr.Port()})
		if abort {
			n.Say("With tcp_abort_on_overflow=1 the server answers the overflowing ACK with RST: " +
				"client A learns at once (ECONNRESET) instead of believing it is connected.")
		} else {
			n.Say("With 0 (the default) the server drops the ACK and keeps SYN_RECV, retransmitting " +
				"its SYN-ACK: A believes it is ESTABLISHED (read() just has nothing yet) and will get in " +
				"when a slot frees. That default rides out short bursts.")
		}
		return nil
	})
	return f, err
}

// fastOpenFacts is what one TCP Fast Open connection did.
type fastOpenFacts struct {
	Received     string
	SynData      bool  // client tcpi_options has TCPI_OPT_SYN_DATA: the SYN's data was acked
	PassiveOpens int64 // TcpExt TCPFastOpenPassive rose by this much
}

// fastOpen enables TCP Fast Open (RFC 7413) in a fresh namespace and makes two connections
// with sendto(MSG_FASTOPEN): the first only fetches a cookie, the second carries its data on
// the SYN itself.
func fastOpen(n *lab.Narrator) ([]fastOpenFacts, error) {
	n.Step("TCP Fast Open: data on the SYN itself")
	var out []fastOpenFacts
	err := inFreshHost(n, "fastopen", func() error {
		// 1 = client, 2 = server (ip-sysctl.rst, tcp_fastopen).
		if err := setSysctl(n, "net.ipv4.tcp_fastopen", "3"); err != nil {
			return err
		}
		lfd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err := n.Sys(lfd, err, "socket(AF_INET, SOCK_STREAM, 0)"); err != nil {
			return err
		}
		defer unix.Close(lfd)
		err = unix.SetsockoptInt(lfd, unix.IPPROTO_TCP, unix.TCP_FASTOPEN, 16)
		if err := n.Sys(0, err, "setsockopt(%d, IPPROTO_TCP, TCP_FASTOPEN, 16)", lfd); err != nil {
			return err
		}
		sa := &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}
		if err := n.Sys(0, unix.Bind(lfd, sa), "bind(%d, %s)", lfd, lab.Sockaddr(sa)); err != nil {
			return err
		}
		if err := n.Sys(0, unix.Listen(lfd, 4), "listen(%d, 4)", lfd); err != nil {
			return err
		}
		bound, err := unix.Getsockname(lfd)
		if err != nil {
			return err
		}
		for i, msg := range []string{"no cookie yet", "SYN data"} {
			var fo fastOpenFacts
			before, _ := sockdiag.Counter("TcpExt", "TCPFastOpenPassive")
			cfd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err := n.Sys(cfd, err, "socket(AF_INET, SOCK_STREAM, 0)"); err != nil {
				return err
			}
			err = unix.Sendto(cfd, []byte(msg), unix.MSG_FASTOPEN, bound)
			if err := n.Sys(len(msg), err, "sendto(%d, %q, %d, MSG_FASTOPEN, %s)", cfd, msg, len(msg), lab.Sockaddr(bound)); err != nil {
				unix.Close(cfd)
				return err
			}
			afd, _, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC)
			if err := n.Sys(afd, err, "accept(%d, ...)", lfd); err != nil {
				unix.Close(cfd)
				return err
			}
			buf := make([]byte, 64)
			rn, err := unix.Read(afd, buf)
			n.Sys(rn, err, "read(%d, buf, %d)", afd, len(buf))
			if rn > 0 {
				fo.Received = string(buf[:rn])
			}
			info, ierr := sockdiag.TCPInfo(cfd)
			if ierr == nil {
				fo.SynData = info.Options&tcpiOptSynData != 0
			}
			after, _ := sockdiag.Counter("TcpExt", "TCPFastOpenPassive")
			fo.PassiveOpens = after - before
			n.Result("connection %d: SYN_DATA=%v, TCPFastOpenPassive +%d",
				i+1, fo.SynData, fo.PassiveOpens)
			unix.Close(afd)
			unix.Close(cfd)
			out = append(out, fo)
		}
		n.Say("The first SYN only asked for a cookie (its data followed the handshake); the " +
			"second presented the cookie and carried its data on the SYN, so the server could " +
			"read it one round trip earlier. The kernel counted one passive Fast Open.")
		return nil
	})
	return out, err
}

func runHandshake(d *lab.Demo) error {
	n := d.Narrator
	// The packet view first: the three segments themselves, then what the kernel does with
	// them. Without it (-host, or no CAP_NET_RAW) the rest of the part still runs.
	var noCapture *captureUnavailableError
	if !d.Env.Private {
		n.Skip("packet view", "packet capture needs the private namespace")
	} else if _, err := wireHandshakes(n, 3); errors.As(err, &noCapture) {
		n.Skip("packet view", noCapture.Error())
	} else if err != nil {
		return err
	}

	d.Step("SYN_RECV made visible: the client holds back its final ACK (TCP_QUICKACK=0)")
	f, err := halfOpenHandshake(n, true, false, 0)
	if err != nil {
		return err
	}
	n.Say("Right after connect() returned, the client was %v while the server's end was %v "+
		"(a request socket in the SYN queue, 半连接队列, with no fd). The final ACK — delayed "+
		"here, riding on the client's first data — moved the server to %v and into the accept "+
		"queue. Three segments: SYN (client→server), SYN-ACK (both: server's SYN plus the ACK of "+
		"the client's), ACK (client→server). Each side must see its own SYN acknowledged, and "+
		"the middle segment does two jobs at once, so three suffice and two would not.",
		f.ClientState, f.Server.State, f.ServerAfterData)

	if d.NeedPrivate("the third ACK is lost") {
		d.Step("The third ACK is lost: a BPF filter on the listener drops bare ACKs")
		f, err := halfOpenHandshake(n, false, true, 2)
		if err != nil {
			return err
		}
		n.Say("The client has been %v all along; the server kept SYN_RECV and retransmitted its "+
			"SYN-ACK (retrans %d in the table). The client's first data segment carries the "+
			"acknowledgement too, so it completed the handshake: server %v, data %q read.",
			f.ClientState, f.Server.Retransmits, f.ServerAfterData, f.Received)
	}
	if d.NeedPrivate("TCP Fast Open") {
		if _, err := fastOpen(n); err != nil {
			return err
		}
	}
	if d.NeedPrivate("sequence numbers (TCP_REPAIR needs CAP_NET_ADMIN)") {
		if _, err := sequenceNumbers(n, 2); err != nil {
			return err
		}
	}
	return nil
}

// Queues of TCP_REPAIR_QUEUE (include/uapi/linux/tcp.h); x/sys does not define them.
const (
	tcpRecvQueue = 1
	tcpSendQueue = 2
)

// seqState is where one end's sequence numbers stand right after the handshake: the next
// sequence number it will send (its ISN + 1, as the SYN used one number) and the next it
// expects to receive (the peer's ISN + 1).
type seqState struct{ Send, Recv uint32 }

// seqConnection is one connection's sequence numbers, seen from both ends.
type seqConnection struct{ Client, Server seqState }

// queueSeq reads an end's sequence numbers with TCP_REPAIR (tcp(7); made for checkpointing
// connections, CRIU): in repair mode, TCP_QUEUE_SEQ returns the send queue's next sequence
// number or the receive queue's next expected one.
func queueSeq(n *lab.Narrator, fd int) (seqState, error) {
	var st seqState
	err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_REPAIR, 1)
	if err := n.Sys(0, err, "setsockopt(%d, IPPROTO_TCP, TCP_REPAIR, 1)", fd); err != nil {
		return st, err
	}
	defer unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_REPAIR, unix.TCP_REPAIR_OFF)
	for _, q := range []struct {
		queue int
		name  string
		into  *uint32
	}{{tcpSendQueue, "TCP_SEND_QUEUE", &st.Send}, {tcpRecvQueue, "TCP_RECV_QUEUE", &st.Recv}} {
		err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_REPAIR_QUEUE, q.queue)
		if err := n.Sys(0, err, "setsockopt(%d, IPPROTO_TCP, TCP_REPAIR_QUEUE, %s)", fd, q.name); err != nil {
			return st, err
		}
		v, err := unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_QUEUE_SEQ)
		if err := n.Sys(0, err, "getsockopt(%d, IPPROTO_TCP, TCP_QUEUE_SEQ)", fd); err != nil {
			return st, err
		}
		*q.into = uint32(v)
		n.Result("%d", *q.into)
	}
	return st, nil
}

// sequenceNumbers makes count connections and reads both ends' sequence numbers from the
// kernel: what one end will send next is what the other expects next, and every connection
// starts from its own initial sequence number.
func sequenceNumbers(n *lab.Narrator, count int) ([]seqConnection, error) {
	n.Step("Sequence numbers after the handshake, read from both kernels (TCP_REPAIR)")
	q, err := openListener(n, netip.AddrPortFrom(loopback4, 0), count)
	if err != nil {
		return nil, err
	}
	defer q.Close()
	var out []seqConnection
	for range count {
		cfd, _, err := connectClient(n, q.Addr, false)
		if err != nil {
			return out, err
		}
		afd, _, err := q.acceptOne()
		if err != nil {
			unix.Close(cfd)
			return out, err
		}
		var c seqConnection
		c.Client, err = queueSeq(n, cfd)
		if err == nil {
			c.Server, err = queueSeq(n, afd)
		}
		unix.Close(cfd)
		if err != nil {
			return out, err
		}
		n.Result("client ISN x = %d, server expects x+1 = %d", c.Client.Send-1, c.Server.Recv)
		n.Result("server ISN y = %d, client expects y+1 = %d", c.Server.Send-1, c.Client.Recv)
		out = append(out, c)
	}
	n.Say("Each side's next sequence number is its ISN + 1 (the SYN consumed one) and is exactly " +
		"what the other side acknowledged: ack = x+1 and ack = y+1. Every connection starts " +
		"from different, unpredictable ISNs (RFC 6528): old segments cannot be mistaken for " +
		"new ones, and an off-path attacker cannot guess them.")
	return out, nil
}

// ---------------------------------------------------------------------------------------
// The handshake on the wire (packet capture)
// ---------------------------------------------------------------------------------------

// wireHandshake is one connection's handshake as a packet capture on lo recorded it.
type wireHandshake struct {
	Listener, Client netip.AddrPort
	// Conv is every segment of this connection (matched on its full 4-tuple) recorded from
	// before connect() until after accept(), with each side's ISN and the relative numbers.
	Conv *capture.Conversation
	// Notes are both ends' kernel states: before connect() (the client's TCP_INFO, the
	// listener's sock_diag row) and once connect() had returned and the server's end was
	// ESTABLISHED (capture.KernelStates).
	Notes []capture.Note
}

// captureUnavailableError says why capture.Start failed, so that the demo can skip the packet
// view in one line and go on.
type captureUnavailableError struct{ err error }

func (e *captureUnavailableError) Error() string {
	if errors.Is(e.err, capture.ErrNotPrivate) {
		return "packet capture needs the private namespace"
	}
	return e.err.Error()
}

func (e *captureUnavailableError) Unwrap() error { return e.err }

// wireHandshakes listens on a fresh loopback port, starts a packet capture on that port, and
// then makes count connections one after another, each connect() followed by accept(). It
// returns what the capture recorded of each connection. The first is narrated segment by
// segment with a sequence diagram; the others show that every connection starts from its own
// initial sequence numbers (RFC 9293 section 3.4.1, RFC 6528).
func wireHandshakes(n *lab.Narrator, count int) ([]wireHandshake, error) {
	n.Step("The handshake on the wire: a packet capture on lo records each segment")
	q, err := openListener(n, netip.AddrPortFrom(loopback4, 0), count)
	if err != nil {
		return nil, err
	}
	defer q.Close()
	// Before the first connect(), so that the SYN is recorded.
	c, err := capture.Start(q.Addr.Port())
	if err != nil {
		return nil, &captureUnavailableError{err}
	}
	defer c.Close()
	n.Say("A packet socket (AF_PACKET, packet(7)) on lo now records every TCP segment to "+
		"or from port %d, each once, as the kernel delivers it.", q.Addr.Port())

	var out []wireHandshake
	// The client fds stay open until every handshake is recorded: closing one would add its
	// FIN exchange to the capture.
	var clients []int
	defer func() {
		for _, fd := range clients {
			unix.Close(fd)
		}
	}()
	for i := range count {
		if i == 1 {
			n.Step("Every connection starts from its own initial sequence numbers (ISN)")
		}
		h, cfd, err := wireConnect(n, q, c)
		if cfd >= 0 {
			clients = append(clients, cfd)
		}
		if err != nil {
			return out, err
		}
		out = append(out, h)
		if i == 0 {
			narrateHandshake(n, h)
		}
	}
	if err := c.Close(); err != nil {
		return out, err
	}
	if count > 1 {
		narrateISNs(n, out)
	}
	return out, nil
}

// wireConnect is socket → connect → accept for one client of q, with both ends' kernel
// states noted before and after, and returns the connection as c recorded it. The client's
// fd is returned (or -1) for the caller to close.
func wireConnect(n *lab.Narrator, q *queueLab, c *capture.Capture) (wireHandshake, int, error) {
	h := wireHandshake{Listener: q.Addr}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err := n.Sys(fd, err, "socket(AF_INET, SOCK_STREAM, 0)"); err != nil {
		return h, -1, err
	}
	clientState, err := sockdiag.StateOf(fd)
	if err != nil {
		return h, fd, err
	}
	listener, err := q.listener()
	if err != nil {
		return h, fd, err
	}
	before := time.Now()
	h.Notes = []capture.Note{
		{Time: before, Side: capture.Client, Text: clientState.String()},
		{Time: before, Side: capture.Server, Text: listener.State.String()},
	}
	sa := lab.SockaddrOf(q.Addr)
	if err := n.Sys(0, unix.Connect(fd, sa), "connect(%d, %s)", fd, lab.Sockaddr(sa)); err != nil {
		return h, fd, err
	}
	local, err := unix.Getsockname(fd)
	if err != nil {
		return h, fd, err
	}
	h.Client = lab.AddrPortOf(local)
	// connect() returns once the SYN-ACK has arrived; the third segment may still be on its
	// way to the capture and to the server.
	if _, err := c.WaitConversation(h.Client, q.Addr, shortWait, capture.AtLeast(3)); err != nil {
		return h, fd, err
	}
	var server sockdiag.State
	if !lab.Poll(shortWait, func() bool {
		_, server, err = findState(q.Addr, h.Client)
		return server == sockdiag.Established
	}) {
		return h, fd, fmt.Errorf("server end %v → %v is %v, not ESTABLISHED, after the third segment",
			q.Addr, h.Client, server)
	}
	states, err := capture.KernelStates(h.Client, q.Addr)
	if err != nil {
		return h, fd, err
	}
	h.Notes = append(h.Notes, states...)
	if _, _, err := q.acceptOne(); err != nil {
		return h, fd, err
	}
	// Everything recorded of this connection up to now: a retransmitted SYN, had there been
	// one, would be here too.
	h.Conv = c.Conversation(h.Client, q.Addr)
	return h, fd, nil
}

// symbolic writes a sequence number as the lesson names it — x or y plus an offset — and its
// value: "x+1=2839458173".
func symbolic(name string, rel, abs uint32) string {
	if rel == 0 {
		return fmt.Sprintf("%s=%d", name, abs)
	}
	return fmt.Sprintf("%s+%d=%d", name, rel, abs)
}

// narrateHandshake prints one connection's segments with their absolute numbers named x (the
// client's ISN) and y (the server's), then the sequence diagram, and with -v the same diagram
// as Mermaid for the docs.
func narrateHandshake(n *lab.Narrator, h wireHandshake) {
	n.Say("What the capture recorded of %v → %v (x is the client's ISN, y the server's):",
		h.Client, h.Listener)
	for _, s := range h.Conv.Segments {
		own, peer := "x", "y"
		dir := "client → server"
		if s.From == capture.Server {
			own, peer, dir = "y", "x", "server → client"
		}
		line := fmt.Sprintf("%-7s %s  seq=%s", s.Flags, dir, symbolic(own, s.RelSeq, s.Seq))
		if s.Flags&capture.ACK != 0 {
			line += "  ack=" + symbolic(peer, s.RelAck, s.Ack)
		}
		n.Result("%s", line)
	}
	n.Block(h.Conv.ASCII(h.Notes...))
	n.Say("The SYN carries the client's initial sequence number x. The SYN-ACK carries the " +
		"server's own, y, and acknowledges x+1: a SYN consumes one sequence number, and ack " +
		"is the next number expected. The final ACK acknowledges y+1. Relative numbers in the " +
		"diagram count from each side's ISN, as Wireshark shows them. The states beside the " +
		"arrows are the kernel's (TCP_INFO, sock_diag), read before connect() and after it " +
		"returned.")
	if n.Verbose() {
		n.Say("The same diagram as a Mermaid sequenceDiagram (for docs/):")
		n.Block(h.Conv.Mermaid(h.Notes...))
	}
}

// narrateISNs prints every connection's two ISNs as a small table.
func narrateISNs(n *lab.Narrator, hs []wireHandshake) {
	var b strings.Builder
	fmt.Fprintf(&b, "%-15s %-15s %14s %14s\n", "client", "server", "client ISN x", "server ISN y")
	for _, h := range hs {
		fmt.Fprintf(&b, "%-15v %-15v %14d %14d\n", h.Client, h.Listener, h.Conv.ClientISN, h.Conv.ServerISN)
	}
	n.Block(b.String())
	n.Say("Three connections to the same listener, one right after another: every SYN and " +
		"every SYN-ACK starts from a different, unpredictable number. Linux derives the ISN " +
		"from a keyed hash of the 4-tuple plus a clock (RFC 6528), so segments of an old " +
		"connection are not taken for a new one's and an off-path attacker cannot guess them.")
}
