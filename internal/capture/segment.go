//go:build linux

package capture

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// Flags are the TCP header's flag bits, with the values they have in byte 13 of the header
// (RFC 9293 section 3.1; CWR and ECE from RFC 3168).
type Flags uint8

// The TCP flags.
const (
	FIN Flags = 0x01
	SYN Flags = 0x02
	RST Flags = 0x04
	PSH Flags = 0x08
	ACK Flags = 0x10
	URG Flags = 0x20
	ECE Flags = 0x40
	CWR Flags = 0x80
)

// flagOrder is the order in which flags are named: the one that matters most to a lesson first,
// so a handshake reads "SYN", "SYN,ACK", "ACK" and a close "FIN,ACK".
var flagOrder = []struct {
	f    Flags
	name string
}{{SYN, "SYN"}, {FIN, "FIN"}, {RST, "RST"}, {PSH, "PSH"}, {URG, "URG"}, {ACK, "ACK"}, {ECE, "ECE"}, {CWR, "CWR"}}

// Has reports whether every flag in want is set.
func (f Flags) Has(want Flags) bool { return f&want == want }

// String names the flags joined by commas, e.g. "SYN,ACK", or "none".
func (f Flags) String() string {
	var names []string
	for _, o := range flagOrder {
		if f&o.f != 0 {
			names = append(names, o.name)
		}
	}
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ",")
}

// Side says which end of a connection sent a segment.
type Side uint8

// The two ends of a connection: the client is the side that sent the first SYN.
const (
	Client Side = iota
	Server
)

// String is "client" or "server".
func (s Side) String() string {
	if s == Client {
		return "client"
	}
	return "server"
}

// Segment is one TCP segment as it crossed the loopback interface, recorded once.
type Segment struct {
	// Time is when the packet reached the capture socket, stamped by the kernel in the
	// PACKET_RX_RING frame (wall clock, nanoseconds).
	Time     time.Time
	Src, Dst netip.AddrPort
	// Seq and Ack are the absolute sequence and acknowledgment numbers from the header. Ack is
	// meaningful only when Flags has ACK.
	Seq, Ack uint32
	Flags    Flags
	// Window is the raw 16-bit window field. After the handshake it is scaled by the sender's
	// window-scale option (RFC 7323); Win holds the scaled value.
	Window uint16
	// Len is the payload length in bytes (IP length minus IP and TCP headers).
	Len int
	// MSS and WScale are the options of a SYN or SYN-ACK (0 and -1 when absent).
	MSS    uint16
	WScale int

	// The fields below are set by a Conversation (they need both directions to compute).

	// From is the side that sent the segment.
	From Side
	// RelSeq is Seq minus the sender's initial sequence number (ISN), and RelAck is Ack minus
	// the receiver's ISN, as Wireshark shows them: a SYN has RelSeq 0, the SYN-ACK answering
	// it has RelAck 1. RelAck is 0 when the segment has no ACK flag.
	RelSeq, RelAck uint32
	// Win is the window in bytes: Window shifted by the sender's window scale once both SYNs
	// carried the option; Window itself in SYN segments.
	Win int
}

// SeqSpace is how many sequence numbers the segment consumes: its payload plus one for SYN and
// one for FIN (RFC 9293 section 3.4). The peer's ACK of it acknowledges Seq + SeqSpace.
func (s Segment) SeqSpace() uint32 {
	n := uint32(s.Len)
	if s.Flags&SYN != 0 {
		n++
	}
	if s.Flags&FIN != 0 {
		n++
	}
	return n
}

// String describes the segment with absolute numbers, close to tcpdump -S:
// "127.0.0.1:40000 > 127.0.0.1:9000 SYN seq=123 win=65495 len=0".
func (s Segment) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%v > %v %v seq=%d", s.Src, s.Dst, s.Flags, s.Seq)
	if s.Flags&ACK != 0 {
		fmt.Fprintf(&b, " ack=%d", s.Ack)
	}
	fmt.Fprintf(&b, " win=%d len=%d", s.Window, s.Len)
	return b.String()
}

// Label is the segment in a sequence diagram: flags and relative numbers, e.g.
// "SYN,ACK seq=0 ack=1" or "PSH,ACK seq=1 ack=1 len=5". Use it on segments of a Conversation.
func (s Segment) Label() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%v seq=%d", s.Flags, s.RelSeq)
	if s.Flags&ACK != 0 {
		fmt.Fprintf(&b, " ack=%d", s.RelAck)
	}
	if s.Len > 0 {
		fmt.Fprintf(&b, " len=%d", s.Len)
	}
	return b.String()
}

// Protocol numbers and header sizes used by the parser (RFC 791, RFC 8200, RFC 9293).
const (
	protoTCP     = 6
	ipv4MinHdr   = 20
	ipv6Hdr      = 40
	tcpMinHdr    = 20
	tcpOptEnd    = 0
	tcpOptNOP    = 1
	tcpOptMSS    = 2
	tcpOptWScale = 3
)

// parseIP reads the IPv4 or IPv6 packet in b (starting at the network header, as an AF_PACKET
// SOCK_DGRAM socket delivers it) and returns its TCP segment. b may be cut short after the TCP
// header: lengths come from the IP header, not from len(b). ok is false for anything that is not
// a complete, unfragmented TCP header.
func parseIP(b []byte) (seg Segment, ok bool) {
	if len(b) < 1 {
		return seg, false
	}
	var tcp []byte
	var ipPayload int // bytes after the IP header(s), per the IP header
	switch b[0] >> 4 {
	case 4:
		if len(b) < ipv4MinHdr {
			return seg, false
		}
		ihl := int(b[0]&0x0f) * 4
		total := int(binary.BigEndian.Uint16(b[2:4]))
		fragment := binary.BigEndian.Uint16(b[6:8]) & 0x3fff // MF bit and fragment offset
		if ihl < ipv4MinHdr || b[9] != protoTCP || fragment != 0 || total < ihl || len(b) < ihl {
			return seg, false
		}
		src, _ := netip.AddrFromSlice(b[12:16])
		dst, _ := netip.AddrFromSlice(b[16:20])
		seg.Src, seg.Dst = netip.AddrPortFrom(src, 0), netip.AddrPortFrom(dst, 0)
		tcp, ipPayload = b[ihl:], total-ihl
	case 6:
		// Only a TCP header directly after the fixed header: loopback TCP carries no
		// extension headers.
		if len(b) < ipv6Hdr || b[6] != protoTCP {
			return seg, false
		}
		src, _ := netip.AddrFromSlice(b[8:24])
		dst, _ := netip.AddrFromSlice(b[24:40])
		seg.Src, seg.Dst = netip.AddrPortFrom(src, 0), netip.AddrPortFrom(dst, 0)
		tcp, ipPayload = b[ipv6Hdr:], int(binary.BigEndian.Uint16(b[4:6]))
	default:
		return seg, false
	}
	if len(tcp) < tcpMinHdr {
		return seg, false
	}
	dataOff := int(tcp[12]>>4) * 4
	if dataOff < tcpMinHdr || dataOff > ipPayload || dataOff > len(tcp) {
		return seg, false
	}
	seg.Src = netip.AddrPortFrom(seg.Src.Addr(), binary.BigEndian.Uint16(tcp[0:2]))
	seg.Dst = netip.AddrPortFrom(seg.Dst.Addr(), binary.BigEndian.Uint16(tcp[2:4]))
	seg.Seq = binary.BigEndian.Uint32(tcp[4:8])
	seg.Ack = binary.BigEndian.Uint32(tcp[8:12])
	seg.Flags = Flags(tcp[13])
	seg.Window = binary.BigEndian.Uint16(tcp[14:16])
	seg.Len = ipPayload - dataOff
	seg.MSS, seg.WScale = parseOptions(tcp[tcpMinHdr:dataOff])
	return seg, true
}

// parseOptions finds the MSS and window-scale options (RFC 9293 section 3.2, RFC 7323).
func parseOptions(opts []byte) (mss uint16, wscale int) {
	wscale = -1
	for i := 0; i < len(opts); {
		kind := opts[i]
		switch kind {
		case tcpOptEnd:
			return mss, wscale
		case tcpOptNOP:
			i++
			continue
		}
		if i+1 >= len(opts) || opts[i+1] < 2 || i+int(opts[i+1]) > len(opts) {
			return mss, wscale // malformed: keep what was found
		}
		length := int(opts[i+1])
		switch {
		case kind == tcpOptMSS && length == 4:
			mss = binary.BigEndian.Uint16(opts[i+2 : i+4])
		case kind == tcpOptWScale && length == 3:
			wscale = int(opts[i+2])
		}
		i += length
	}
	return mss, wscale
}
