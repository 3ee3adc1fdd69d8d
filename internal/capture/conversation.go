//go:build linux

package capture

import "net/netip"

// Conversation is the view of one connection (one 4-tuple): its segments in capture order,
// which side is the client, each side's initial sequence number (ISN), and every segment's
// numbers relative to those ISNs.
type Conversation struct {
	// Client is the side that sent the first SYN (without ACK); if the capture began after the
	// handshake, the source of the first recorded segment.
	Client, Server netip.AddrPort
	// ClientISN and ServerISN are the sequence numbers of each side's SYN; when a SYN was not
	// recorded, the first sequence number seen from that side (so relative numbers start at 0
	// there, as in Wireshark).
	ClientISN, ServerISN uint32
	// SawClientSYN and SawServerSYN tell whether the ISNs come from the SYNs themselves.
	SawClientSYN, SawServerSYN bool
	// Segments are the segments of this connection, each with From, RelSeq, RelAck and Win set.
	Segments []Segment
}

// NewConversation selects the segments exchanged between a and b (either order) from segs and
// computes the relative view. Capture.Conversation and WaitConversation call it; it is exported
// for segments obtained otherwise (e.g. built by a test).
func NewConversation(a, b netip.AddrPort, segs []Segment) *Conversation {
	var mine []Segment
	for _, s := range segs {
		if (s.Src == a && s.Dst == b) || (s.Src == b && s.Dst == a) {
			mine = append(mine, s)
		}
	}
	c := &Conversation{Client: a, Server: b, Segments: mine}
	// The client is the sender of the pure SYN; else whoever the SYN-ACK answers; else the
	// first sender seen.
	if i := find(mine, func(s Segment) bool { return s.Flags&(SYN|ACK) == SYN }); i >= 0 {
		c.Client = mine[i].Src
	} else if i := find(mine, func(s Segment) bool { return s.Flags.Has(SYN | ACK) }); i >= 0 {
		c.Client = mine[i].Dst
	} else if len(mine) > 0 {
		c.Client = mine[0].Src
	}
	if c.Client == b {
		c.Server = a
	}

	// ISNs: each side's SYN, else its first segment.
	var haveClient, haveServer bool
	scale := map[Side]int{Client: -1, Server: -1}
	for _, s := range mine {
		from := Server
		if s.Src == c.Client {
			from = Client
		}
		isn, have, saw := &c.ServerISN, &haveServer, &c.SawServerSYN
		if from == Client {
			isn, have, saw = &c.ClientISN, &haveClient, &c.SawClientSYN
		}
		if s.Flags&SYN != 0 && !*saw {
			*isn, *have, *saw = s.Seq, true, true
			scale[from] = s.WScale
		} else if !*have {
			*isn, *have = s.Seq, true
		}
	}
	// Window scaling is in force only when both SYNs carried the option (RFC 7323 2.2).
	scaled := scale[Client] >= 0 && scale[Server] >= 0

	for i := range c.Segments {
		s := &c.Segments[i]
		s.From = Server
		ownISN, peerISN := c.ServerISN, c.ClientISN
		if s.Src == c.Client {
			s.From = Client
			ownISN, peerISN = c.ClientISN, c.ServerISN
		}
		s.RelSeq = s.Seq - ownISN
		s.RelAck = 0
		if s.Flags&ACK != 0 {
			s.RelAck = s.Ack - peerISN
		}
		s.Win = int(s.Window)
		if scaled && s.Flags&SYN == 0 {
			s.Win <<= scale[s.From]
		}
	}
	return c
}

func find(segs []Segment, match func(Segment) bool) int {
	for i, s := range segs {
		if match(s) {
			return i
		}
	}
	return -1
}

// From returns the segments sent by one side, in order.
func (c *Conversation) From(side Side) []Segment {
	var out []Segment
	for _, s := range c.Segments {
		if s.From == side {
			out = append(out, s)
		}
	}
	return out
}

// Closed reports whether the connection is over as far as the wire shows: a RST was recorded,
// or both sides sent a FIN and each FIN was acknowledged (ack ≥ its seq + 1). Use it as the
// condition of WaitConversation after the lesson's close(2) calls.
func (c *Conversation) Closed() bool {
	var fin [2]*Segment
	for i := range c.Segments {
		s := &c.Segments[i]
		if s.Flags&RST != 0 {
			return true
		}
		if s.Flags&FIN != 0 && fin[s.From] == nil {
			fin[s.From] = s
		}
	}
	if fin[Client] == nil || fin[Server] == nil {
		return false
	}
	for side, f := range fin {
		want := f.Seq + f.SeqSpace()
		acked := false
		for _, s := range c.Segments {
			if s.From != Side(side) && s.Flags&ACK != 0 && int32(s.Ack-want) >= 0 {
				acked = true
				break
			}
		}
		if !acked {
			return false
		}
	}
	return true
}
