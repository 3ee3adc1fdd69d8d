//go:build linux

package capture_test

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"socklab/internal/capture"
)

// A made-up connection with known numbers: handshake, 5 bytes of data, a four-segment close.
// Built by hand so the renderer is tested without a kernel; the capture tests prove that real
// conversations have this shape.
func sampleConversation(client, server netip.AddrPort) *capture.Conversation {
	t0 := time.Unix(1700000000, 0)
	const cISN, sISN = 4000000000, 1000 // the client's numbers wrap around 2^32
	seg := func(ms float64, fromClient bool, flags capture.Flags, seq, ack uint32, n int) capture.Segment {
		s := capture.Segment{Time: t0.Add(time.Duration(ms * float64(time.Millisecond))), Flags: flags,
			Seq: seq, Ack: ack, Len: n, Window: 512, WScale: -1}
		s.Src, s.Dst = server, client
		if fromClient {
			s.Src, s.Dst = client, server
		}
		if flags&capture.SYN != 0 {
			s.WScale, s.Window = 7, 65495
		}
		return s
	}
	segs := []capture.Segment{
		seg(0, true, capture.SYN, cISN, 0, 0),
		seg(0.02, false, capture.SYN|capture.ACK, sISN, cISN+1, 0),
		seg(0.04, true, capture.ACK, cISN+1, sISN+1, 0),
		seg(0.1, true, capture.PSH|capture.ACK, cISN+1, sISN+1, 5),
		seg(0.12, false, capture.ACK, sISN+1, cISN+6, 0),
		seg(1, true, capture.FIN|capture.ACK, cISN+6, sISN+1, 0),
		seg(41, false, capture.ACK, sISN+1, cISN+7, 0),
		seg(101, false, capture.FIN|capture.ACK, sISN+1, cISN+7, 0),
		seg(101.1, true, capture.ACK, cISN+7, sISN+2, 0),
	}
	// An unrelated segment of another connection must be left out.
	other := seg(50, true, capture.RST, 7, 0, 0)
	other.Src = netip.AddrPortFrom(client.Addr(), client.Port()+1)
	segs = append(segs[:6], append([]capture.Segment{other}, segs[6:]...)...)
	// Given in the server-first order, so the client must be found from the SYN.
	return capture.NewConversation(server, client, segs)
}

var (
	client4 = netip.MustParseAddrPort("127.0.0.1:41734")
	server4 = netip.MustParseAddrPort("127.0.0.1:9000")
)

func TestConversationRelativeNumbers(t *testing.T) {
	t.Parallel()
	conv := sampleConversation(client4, server4)
	require.Equal(t, client4, conv.Client)
	require.Equal(t, server4, conv.Server)
	require.Len(t, conv.Segments, 9, "the other connection's RST is not part of it")
	want := []string{
		"SYN seq=0", "SYN,ACK seq=0 ack=1", "ACK seq=1 ack=1", "PSH,ACK seq=1 ack=1 len=5",
		"ACK seq=1 ack=6", "FIN,ACK seq=6 ack=1", "ACK seq=1 ack=7", "FIN,ACK seq=1 ack=7", "ACK seq=7 ack=2",
	}
	for i, s := range conv.Segments {
		assert.Equal(t, want[i], s.Label(), "segment %d", i)
	}
	assert.True(t, conv.Closed())
	assert.False(t, capture.NewConversation(client4, server4, conv.Segments[:8]).Closed(), "last FIN not yet acknowledged")
	assert.Equal(t, 512<<7, conv.Segments[2].Win, "window scaled once both SYNs had the option")
	assert.Equal(t, 65495, conv.Segments[0].Win)
	assert.Equal(t, uint32(1), conv.Segments[5].SeqSpace(), "a FIN consumes one sequence number")
	assert.Equal(t, uint32(5), conv.Segments[3].SeqSpace())
}

// Without the SYNs (capture started late) the first numbers seen count as zero, and the client
// is the first sender.
func TestConversationWithoutHandshake(t *testing.T) {
	t.Parallel()
	full := sampleConversation(client4, server4)
	conv := capture.NewConversation(server4, client4, full.Segments[3:])
	assert.Equal(t, client4, conv.Client)
	assert.False(t, conv.SawClientSYN)
	assert.Equal(t, "PSH,ACK seq=0 ack=0 len=5", conv.Segments[0].Label())
}

func notesFor(conv *capture.Conversation) []capture.Note {
	at := func(i int) time.Time { return conv.Segments[i].Time.Add(time.Microsecond) }
	return []capture.Note{
		{Time: conv.Segments[0].Time.Add(-time.Millisecond), Side: capture.Server, Text: "LISTEN"},
		{Time: at(2), Side: capture.Client, Text: "ESTABLISHED"},
		{Time: at(5), Side: capture.Client, Text: "FIN_WAIT1"},
		{Time: at(6), Side: capture.Client, Text: "FIN_WAIT2"},
		{Time: at(6), Side: capture.Server, Text: "CLOSE_WAIT"},
		{Time: at(6), Side: capture.Server, Text: "a note longer than the column"},
		{Time: at(8), Side: capture.Client, Text: "TIME_WAIT"},
	}
}

// Every line of the diagram fits an 80-column terminal with the narration's four-space indent
// (at most 74 characters), for IPv4 and for long IPv6 addresses, and for labels too long to sit on
// their arrow.
func TestASCIIFitsEightyColumns(t *testing.T) {
	t.Parallel()
	client6 := netip.MustParseAddrPort("[fd00:1234:5678:9abc:def0:1234:5678:9abc]:65535")
	server6 := netip.MustParseAddrPort("[fd00:1234:5678:9abc:def0:1234:5678:9abd]:65534")
	// A label too long for its arrow: large relative numbers and a full-size segment.
	big := []capture.Segment{
		{Src: client4, Dst: server4, Flags: capture.ACK, Seq: 10, Ack: 20, WScale: -1},
		{Src: server4, Dst: client4, Flags: capture.FIN | capture.PSH | capture.ACK, Seq: 20, Ack: 4000000010, Len: 65483, WScale: -1},
		{Src: client4, Dst: server4, Flags: capture.FIN | capture.PSH | capture.ACK, Seq: 4000000010, Ack: 4000065505, Len: 65483, WScale: -1},
	}
	long := capture.NewConversation(client4, server4, big)
	require.Equal(t, "FIN,PSH,ACK seq=4000000000 ack=4000065485 len=65483", long.Segments[2].Label())
	ascii := long.ASCII()
	assert.Contains(t, ascii, long.Segments[2].Label(), "the long label is printed in full, on a line of its own")
	assert.Contains(t, ascii, "|-------------------------------------->|", "above a bare arrow")

	huge := capture.NewConversation(client4, server4, []capture.Segment{{Src: client4, Dst: server4, Flags: 0xff, Seq: 1, Len: 65535}})
	huge.Segments[0].RelSeq, huge.Segments[0].RelAck = 4294967295, 4294967295 // the widest label possible

	for _, conv := range []*capture.Conversation{sampleConversation(client4, server4), sampleConversation(client6, server6), long, huge} {
		var notes []capture.Note
		if len(conv.Segments) > 8 {
			notes = notesFor(conv)
		}
		out := conv.ASCII(notes...)
		for _, line := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
			assert.LessOrEqual(t, len(line), capture.DiagramWidth, "line %q", line)
			assert.LessOrEqual(t, len(line), 74, "line %q", line)
		}
		assert.Contains(t, out, conv.Client.String())
		assert.Contains(t, out, conv.Server.String())
	}
}

// One arrow per segment, pointing from its sender: client → server arrows end in ">" at the
// server's lifeline, server → client arrows start with "<" at the client's; labels carry the
// flags and relative numbers; notes sit beside the arrow they follow.
func TestASCIIArrowsPointFromSender(t *testing.T) {
	t.Parallel()
	conv := sampleConversation(client4, server4)
	lines := strings.Split(strings.TrimSuffix(conv.ASCII(notesFor(conv)...), "\n"), "\n")
	var arrows []string
	for _, l := range lines {
		if strings.Contains(l, "->|") || strings.Contains(l, "|<-") {
			arrows = append(arrows, l)
		}
	}
	require.Len(t, arrows, len(conv.Segments), "%s", strings.Join(lines, "\n"))
	for i, s := range conv.Segments {
		l := arrows[i]
		assert.Contains(t, l, s.Label())
		if s.From == capture.Client {
			assert.Contains(t, l, "|-- "+s.Label(), "client arrow starts at the client: %q", l)
			assert.Contains(t, l, "->|", l)
		} else {
			assert.Contains(t, l, "|<-", "server arrow points at the client: %q", l)
			assert.Contains(t, l, s.Label()+" --|", l)
		}
	}
	// Notes: beside the arrow they follow, on their own side.
	assert.True(t, strings.HasSuffix(arrows[2], "|") && strings.Contains(arrows[2], "ESTABLISHED |"), arrows[2])
	assert.Contains(t, arrows[6], "FIN_WAIT2", "state after the ACK of the FIN")
	assert.True(t, strings.HasSuffix(arrows[6], "| CLOSE_WAIT"), arrows[6])
	assert.Contains(t, arrows[8], "TIME_WAIT")
	assert.Contains(t, lines[1], "| LISTEN", "a note before the first segment gets a line of its own")
	assert.NotContains(t, strings.Join(lines, "\n"), "a note longer than the column", "cut to the column")
	assert.Contains(t, strings.Join(lines, "\n"), "a note long")
	assert.Contains(t, arrows[7], " 101.000 ", "time since the first segment, in ms")
}

// The Mermaid version has one message per segment in order, the participants, and the notes.
func TestMermaidHasOneMessagePerSegment(t *testing.T) {
	t.Parallel()
	conv := sampleConversation(client4, server4)
	out := conv.Mermaid(notesFor(conv)...)
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	require.Equal(t, "sequenceDiagram", lines[0])
	assert.Contains(t, out, "participant C as client 127.0.0.1:41734")
	assert.Contains(t, out, "participant S as server 127.0.0.1:9000")
	var msgs []string
	for _, l := range lines {
		if strings.Contains(l, "->>") {
			msgs = append(msgs, strings.TrimSpace(l))
		}
	}
	require.Len(t, msgs, len(conv.Segments))
	for i, s := range conv.Segments {
		prefix := "C->>S: "
		if s.From == capture.Server {
			prefix = "S->>C: "
		}
		assert.True(t, strings.HasPrefix(msgs[i], prefix+s.Label()+" ("), msgs[i])
	}
	assert.Contains(t, out, "Note right of S: LISTEN")
	assert.Contains(t, out, "Note left of C: TIME_WAIT")
	assert.Less(t, strings.Index(out, "Note right of S: LISTEN"), strings.Index(out, "C->>S: SYN"))
	assert.NotContains(t, capture.NewConversation(client4, server4, nil).Mermaid(capture.Note{Text: "a;b#c"}), ";")
}

func TestFlagsString(t *testing.T) {
	t.Parallel()
	assert.Equal(t, "SYN,ACK", (capture.SYN | capture.ACK).String())
	assert.Equal(t, "FIN,PSH,ACK", (capture.ACK | capture.PSH | capture.FIN).String())
	assert.Equal(t, "RST", capture.RST.String())
	assert.Equal(t, "none", capture.Flags(0).String())
	assert.True(t, (capture.SYN | capture.ACK).Has(capture.SYN))
	assert.False(t, capture.SYN.Has(capture.SYN|capture.ACK))
}

// Notes that repeat a side's previous state are left out: the diagram shows where a state
// changed, so a caller may record both states after every step.
func TestNotesOnlyWhereStateChanged(t *testing.T) {
	t.Parallel()
	conv := sampleConversation(client4, server4)
	at := func(i int) time.Time { return conv.Segments[i].Time.Add(time.Microsecond) }
	var notes []capture.Note
	for i, states := range [][2]string{2: {"ESTABLISHED", "ESTABLISHED"}, 4: {"ESTABLISHED", "ESTABLISHED"},
		6: {"FIN_WAIT2", "CLOSE_WAIT"}, 8: {"TIME_WAIT", "CLOSED"}} {
		if states[0] == "" {
			continue
		}
		notes = append(notes, capture.Note{Time: at(i), Side: capture.Client, Text: states[0]},
			capture.Note{Time: at(i), Side: capture.Server, Text: states[1]})
	}
	ascii := conv.ASCII(notes...)
	assert.Equal(t, 2, strings.Count(ascii, "ESTABLISHED"), "once per side:\n%s", ascii)
	mermaid := conv.Mermaid(notes...)
	assert.Equal(t, 1, strings.Count(mermaid, "Note left of C: ESTABLISHED"), mermaid)
	assert.Equal(t, 1, strings.Count(mermaid, "Note right of S: ESTABLISHED"), mermaid)
	assert.Contains(t, mermaid, "Note right of S: CLOSED")
}
