//go:build linux

package main

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"socklab/internal/capture"
	"socklab/internal/lab"
)

// packetView is the packet view of a part: it records the TCP segments of the part's
// connections on loopback (internal/capture, an AF_PACKET socket that needs the private
// namespace) and draws each close as a sequence diagram, with the kernel's state of both ends
// (sock_diag) written beside the arrows. When capture is unavailable (-host, or no
// CAP_NET_RAW) it says so once, in one line, and the part goes on without it.
type packetView struct {
	d       *lab.Demo
	off     bool // capture unavailable; the part has been told
	capture *capture.Capture
	notes   []capture.Note
}

// conversationTimeout bounds the wait for the last segments of a close to be recorded. On
// loopback they are there within microseconds of the close(2) that sent them (or of the
// delayed ACK, 200 ms at most), so the bound only matters when something is wrong.
const conversationTimeout = 2 * time.Second

func newPacketView(d *lab.Demo) *packetView { return &packetView{d: d} }

// start begins recording segments to or from port (the listener's, before connect(), so the
// handshake is recorded too). A nil view does nothing.
func (v *packetView) start(port uint16) {
	if v == nil || v.off {
		return
	}
	v.stop()
	v.notes = nil
	var c *capture.Capture
	err := capture.ErrNotPrivate
	// -host means the host's loopback: no capture there, even when this process happens to
	// run inside a namespace (a test's), because the lesson promises the host's view.
	if v.d.Env.Private {
		c, err = capture.Start(port)
	}
	if err != nil {
		v.off = true
		reason := err.Error()
		if errors.Is(err, capture.ErrNotPrivate) {
			reason = "capture needs the private namespace (not with -host)"
		}
		// One line, whatever the error: the part goes on without the packet view.
		const step = "packet view"
		if room := lab.Width - len("    skipped: "+step+": "); len(reason) > room {
			reason = reason[:room-3] + "..."
		}
		v.d.Skip(step, reason)
		return
	}
	v.capture = c
}

// on reports whether segments are being recorded.
func (v *packetView) on() bool { return v != nil && v.capture != nil }

// note records both ends' kernel states now, for the diagram.
func (v *packetView) note(c *conn) {
	if !v.on() {
		return
	}
	if notes, err := capture.KernelStates(c.clientAddr, c.serverAddr); err == nil {
		v.notes = append(v.notes, notes...)
	}
}

// closed waits until the wire shows both FINs acknowledged and returns the conversation
// (nil when the view is off).
func (v *packetView) closed(c *conn) (*capture.Conversation, error) {
	if !v.on() {
		return nil, nil
	}
	conv, err := v.capture.WaitConversation(c.clientAddr, c.serverAddr, conversationTimeout,
		(*capture.Conversation).Closed)
	if err != nil {
		return conv, fmt.Errorf("packet view: %w", err)
	}
	return conv, nil
}

// show draws the conversation for the terminal, and with -v also as Mermaid for the docs.
func (v *packetView) show(conv *capture.Conversation) {
	if conv == nil {
		return
	}
	v.d.Say("On the wire (captured on lo; ms since the SYN; seq/ack relative to each " +
		"side's initial sequence number; beside the arrows, each end's state from sock_diag):")
	v.d.Block(strings.TrimRight(conv.ASCII(v.notes...), "\n"))
	if v.d.Verbose() {
		v.d.Say("The same as a Mermaid sequence diagram (for docs/):")
		v.d.Block(strings.TrimRight(conv.Mermaid(v.notes...), "\n"))
	}
}

// stop ends the current capture.
func (v *packetView) stop() {
	if v == nil || v.capture == nil {
		return
	}
	if err := v.capture.Close(); err != nil {
		v.d.Say("packet view: %v", err)
	}
	v.capture = nil
}

// closeSegments returns the segments of the conversation after the handshake and any data:
// from the first FIN on.
func closeSegments(conv *capture.Conversation) []capture.Segment {
	for i, s := range conv.Segments {
		if s.Flags&capture.FIN != 0 {
			return conv.Segments[i:]
		}
	}
	return nil
}

// describeClose names the close segments in order, as a textbook does: "FIN" for a FIN,
// "FIN+ACK" for a FIN that also acknowledges the peer's FIN, "ACK" for a segment that only
// acknowledges, e.g. "client FIN, server FIN+ACK, client ACK".
func describeClose(segs []capture.Segment) string {
	var names []string
	var finSeq [2]*uint32 // each side's FIN, once sent
	for _, s := range segs {
		peer := capture.Server
		if s.From == capture.Server {
			peer = capture.Client
		}
		acksPeerFIN := finSeq[peer] != nil && s.Flags&capture.ACK != 0 && s.Ack == *finSeq[peer]+1
		name := "ACK"
		switch {
		case s.Flags&capture.FIN != 0 && acksPeerFIN:
			name = "FIN+ACK"
		case s.Flags&capture.FIN != 0:
			name = "FIN"
		}
		if s.Flags&capture.FIN != 0 {
			seq := s.Seq + uint32(s.Len)
			finSeq[s.From] = &seq
		}
		names = append(names, s.From.String()+" "+name)
	}
	return strings.Join(names, ", ")
}

// finSegments keeps, from a conversation, only the segments of the close itself: each FIN,
// and from each side the first segment acknowledging the peer's FIN (ack = FIN's seq + 1).
// Part C needs it because data segments and zero-window probes around its FINs vary in
// number from run to run; the close itself does not. Relative numbers stay those of the
// whole connection.
func finSegments(conv *capture.Conversation) *capture.Conversation {
	var finEnd [2]*uint32 // each side's FIN seq + 1, once seen
	var acked [2]bool     // each side has acknowledged the peer's FIN
	kept := *conv
	kept.Segments = nil
	for _, s := range conv.Segments {
		peer := capture.Server
		if s.From == capture.Server {
			peer = capture.Client
		}
		keep := s.Flags&capture.FIN != 0
		if s.Flags&capture.FIN != 0 && finEnd[s.From] == nil {
			end := s.Seq + s.SeqSpace()
			finEnd[s.From] = &end
		}
		if !acked[s.From] && finEnd[peer] != nil && s.Flags&capture.ACK != 0 && s.Ack == *finEnd[peer] {
			acked[s.From], keep = true, true
		}
		if keep {
			kept.Segments = append(kept.Segments, s)
		}
	}
	return &kept
}

// showClose draws only the close segments (finSegments) of a conversation.
func (v *packetView) showClose(conv *capture.Conversation) {
	if conv == nil {
		return
	}
	fins := finSegments(conv)
	v.d.Say("On the wire, the close only (captured on lo; ms since the first FIN; "+
		"seq/ack relative to each side's initial sequence number; the %d data segments "+
		"and window probes around it left out; beside the arrows, each end's state "+
		"from sock_diag):", len(conv.Segments)-len(fins.Segments))
	v.d.Block(strings.TrimRight(fins.ASCII(v.notes...), "\n"))
	if v.d.Verbose() {
		v.d.Say("The same as a Mermaid sequence diagram (for docs/):")
		v.d.Block(strings.TrimRight(fins.Mermaid(v.notes...), "\n"))
	}
}
