//go:build linux

package main

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"socklab/internal/capture"
	"socklab/internal/labtest"
	"socklab/internal/sockdiag"
)

// The packet view of part F: the closes as the kernel put them on loopback.

// mainFlags are the flags a lesson talks about (ECN bits left out).
const mainFlags = capture.SYN | capture.ACK | capture.FIN | capture.RST | capture.PSH | capture.URG

// wireView is a packet view for a test, stopped when the test ends.
func wireView(t *testing.T) *packetView {
	t.Helper()
	labtest.NeedPrivate(t)
	view := newPacketView(quiet())
	t.Cleanup(view.stop)
	return view
}

func dumpWire(conv *capture.Conversation) string {
	if conv == nil {
		return "no conversation"
	}
	var b strings.Builder
	for _, s := range conv.Segments {
		fmt.Fprintf(&b, "\n  %v %v (%v)", s.From, s.Label(), s.Time.Format("15:04:05.000000"))
	}
	return b.String()
}

// requireSegment checks the sender and the flags of one segment.
func requireSegment(t *testing.T, s capture.Segment, from capture.Side, flags capture.Flags, what string) {
	t.Helper()
	require.Equal(t, from, s.From, "%s: sender of %v", what, s)
	require.Equal(t, flags, s.Flags&mainFlags, "%s: flags of %v", what, s)
}

// requireHandshakeAndFINs checks what every captured close shows, whatever the timing: the
// handshake first; exactly one FIN per side; each FIN acknowledged by the other side with
// ack = the FIN's seq + 1 (a FIN consumes one sequence number) and never beyond. It returns
// the segments from the first FIN on.
func requireHandshakeAndFINs(t *testing.T, conv *capture.Conversation) []capture.Segment {
	t.Helper()
	require.NotNil(t, conv, "the packet view recorded nothing")
	require.GreaterOrEqual(t, len(conv.Segments), 3, dumpWire(conv))
	requireSegment(t, conv.Segments[0], capture.Client, capture.SYN, "handshake 1")
	requireSegment(t, conv.Segments[1], capture.Server, capture.SYN|capture.ACK, "handshake 2")
	requireSegment(t, conv.Segments[2], capture.Client, capture.ACK, "handshake 3")
	var fins [2][]capture.Segment
	for _, s := range conv.Segments {
		if s.Flags&capture.FIN != 0 {
			fins[s.From] = append(fins[s.From], s)
		}
	}
	for _, side := range []capture.Side{capture.Client, capture.Server} {
		require.Len(t, fins[side], 1, "exactly one FIN from the %v: %s", side, dumpWire(conv))
		fin := fins[side][0]
		acked := false
		for _, s := range conv.Segments {
			if s.From == side || s.Flags&capture.ACK == 0 {
				continue
			}
			acked = acked || s.Ack == fin.Seq+uint32(fin.Len)+1
			assert.False(t, int32(s.Ack-(fin.Seq+uint32(fin.Len)+1)) > 0,
				"nothing acknowledges beyond the FIN's seq + 1: %v", s)
		}
		assert.True(t, acked, "the %v's FIN (seq %d) is acknowledged with ack = seq + 1: %s",
			side, fin.Seq, dumpWire(conv))
	}
	return closeSegments(conv)
}

// When the passive closer does not close at once, its kernel acknowledges the FIN by itself
// and its own FIN follows in a segment of its own: FIN, ACK, FIN, ACK — whichever end closes
// first. Deterministic: part F waits for the kernel to show the first closer in FIN_WAIT2
// (its FIN acknowledged) before the second close().
func TestCloseIsFourSegmentsWhenThePassiveSideWaits(t *testing.T) {
	t.Parallel()
	for _, serverFirst := range []bool{false, true} {
		active, passive := capture.Client, capture.Server
		if serverFirst {
			active, passive = capture.Server, capture.Client
		}
		t.Run(active.String()+"First", func(t *testing.T) {
			t.Parallel()
			r, err := whoGetsTimeWait(quiet(), wireView(t), serverFirst)
			require.NoError(t, err)
			segs := requireHandshakeAndFINs(t, r.Wire)
			require.Len(t, r.Wire.Segments, 7, "handshake and four close segments: %s", dumpWire(r.Wire))
			require.Len(t, segs, 4, dumpWire(r.Wire))
			requireSegment(t, segs[0], active, capture.FIN|capture.ACK, "1st close segment, the first FIN")
			requireSegment(t, segs[1], passive, capture.ACK, "2nd: the ACK alone")
			requireSegment(t, segs[2], passive, capture.FIN|capture.ACK, "3rd: the passive FIN")
			requireSegment(t, segs[3], active, capture.ACK, "4th: the last ACK")
			assert.Equal(t, segs[0].Seq+1, segs[1].Ack, "the ACK of the first FIN is its seq + 1")
			assert.Equal(t, segs[0].Seq+1, segs[2].Ack, "the passive FIN repeats that ACK")
			assert.Equal(t, segs[2].Seq+1, segs[3].Ack, "the last ACK is the passive FIN's seq + 1")
			assert.Equal(t, uint32(1), segs[0].RelSeq, "no data: the first FIN takes number 1, after the SYN's 0")
		})
	}
}

// When the passive closer closes as soon as read() returns 0, its FIN leaves before the
// delayed-ACK timer (tcpi_ato, 40 ms after data) fires, and carries the ACK of the first FIN:
// three segments, FIN, FIN+ACK, ACK. The kernel guarantees the outcome only for a close made
// within that time; the test gets the time from the kernel's own timestamps on the captured
// segments. If the machine descheduled the test for longer (four segments, the stand-alone ACK
// sent by the timer), that run proves nothing about the prompt case and is repeated, at most 5
// times.
func TestCloseIsThreeSegmentsWhenThePassiveSideClosesAtOnce(t *testing.T) {
	t.Parallel()
	view := wireView(t)
	for attempt := 1; attempt <= 5; attempt++ {
		r, err := promptPassiveClose(quiet(), view)
		require.NoError(t, err)
		assert.Equal(t, 40*time.Millisecond, r.ServerATO, "tcpi_ato after data: TCP_ATO_MIN")
		assert.Equal(t, 0, r.ServerEOF)
		assertEnds(t, r.End, sockdiag.TimeWait, Gone, "at the end")
		segs := requireHandshakeAndFINs(t, r.Wire)
		require.Len(t, r.Wire.Segments, 5+len(segs), "handshake, data, its ACK, the close: %s", dumpWire(r.Wire))
		cfin := segs[0]
		requireSegment(t, cfin, capture.Client, capture.FIN|capture.ACK, "1st close segment")
		assert.Equal(t, uint32(1+3), cfin.RelSeq, "the FIN follows the SYN's number and 3 bytes")
		if len(segs) == 4 {
			// The timer won: the stand-alone ACK left no earlier than the delayed-ACK
			// timeout allows (less a clock tick), and the FIN after it.
			requireSegment(t, segs[1], capture.Server, capture.ACK, "the delayed ACK")
			ackDelay := segs[1].Time.Sub(cfin.Time)
			assert.GreaterOrEqual(t, ackDelay, r.ServerATO/2, "the ACK alone only after the delayed-ACK timer")
			assert.GreaterOrEqual(t, r.FINGap, ackDelay)
			t.Logf("attempt %d: the server's FIN came %v after the client's, after its delayed ACK (%v): again",
				attempt, r.FINGap, ackDelay)
			continue
		}
		require.Len(t, segs, 3, "FIN, FIN+ACK, ACK: %s", dumpWire(r.Wire))
		requireSegment(t, segs[1], capture.Server, capture.FIN|capture.ACK, "2nd: the server's FIN")
		requireSegment(t, segs[2], capture.Client, capture.ACK, "3rd: the last ACK")
		assert.Equal(t, cfin.Seq+1, segs[1].Ack, "the server's FIN carries the ACK of the client's FIN + 1")
		assert.Equal(t, segs[1].Seq+1, segs[2].Ack, "the last ACK is the server's FIN + 1")
		assert.Less(t, r.FINGap, r.ServerATO, "the server's FIN left within the delayed-ACK timeout")
		assert.Equal(t, "client FIN, server FIN+ACK, client ACK", describeClose(segs))
		return
	}
	t.Fatal("in 5 attempts the server never closed within its delayed-ACK timeout")
}

// Without the namespace (or with -host) the packet view says so in one line and the part
// goes on.
func TestPacketViewSkipsInOneLineWithHost(t *testing.T) {
	t.Parallel()
	out, errOut, code := labtest.RunProgram(t, nil, "timewait", "-host")
	require.Equal(t, 0, code, "stderr: %s", errOut)
	lines := strings.Split(out, "\n")
	var skips []int
	for i, l := range lines {
		if strings.Contains(l, "packet view") {
			skips = append(skips, i)
		}
	}
	require.Len(t, skips, 1, "one line about the packet view:\n%s", out)
	assert.Contains(t, lines[skips[0]], "skipped: packet view: ")
	assert.Contains(t, lines[skips[0]+1], "client 127.0.0.1:", "the next line goes on with the part")
	assert.Contains(t, out, "TIME_WAIT is on the client", "the part went on")
	assert.NotContains(t, out, "On the wire")
}

// finOf returns a side's only FIN in the conversation (requireHandshakeAndFINs checked there
// is exactly one) and its index.
func finOf(t *testing.T, conv *capture.Conversation, side capture.Side) (int, capture.Segment) {
	t.Helper()
	for i, s := range conv.Segments {
		if s.From == side && s.Flags&capture.FIN != 0 {
			return i, s
		}
	}
	require.FailNow(t, "no FIN", "from the %v: %s", side, dumpWire(conv))
	return -1, capture.Segment{}
}

// firstAckOf returns the index of the first segment from side that acknowledges end (a FIN's
// seq + 1), or -1.
func firstAckOf(conv *capture.Conversation, side capture.Side, end uint32) int {
	for i, s := range conv.Segments {
		if s.From == side && s.Flags&capture.ACK != 0 && s.Ack == end {
			return i
		}
	}
	return -1
}

// Part A on the wire: after the client's FIN (which takes one sequence number) the client
// sends only ACKs, their seq stuck at the FIN's seq + 1, while the server's answer flows the
// other way, its seq advancing, acknowledged by the client; then the server's FIN and the
// last ACK.
func TestHalfCloseOnTheWireDataFollowsTheClientsFIN(t *testing.T) {
	t.Parallel()
	r, err := halfClose(quiet(), wireView(t), sortInput)
	require.NoError(t, err)
	conv := r.Wire
	requireHandshakeAndFINs(t, conv)
	ci, cfin := finOf(t, conv, capture.Client)
	si, sfin := finOf(t, conv, capture.Server)
	require.Less(t, ci, si, "the client's FIN comes first: %s", dumpWire(conv))
	assert.Equal(t, uint32(1+len(sortInput)), cfin.RelSeq+uint32(cfin.Len),
		"the FIN's number follows the SYN's and the data's")

	// The server's ACK of the client's FIN comes before any of its answer.
	ackIdx := firstAckOf(conv, capture.Server, cfin.Seq+cfin.SeqSpace())
	require.Greater(t, ackIdx, ci, "the server acknowledges the client's FIN: %s", dumpWire(conv))
	var answer []capture.Segment
	for _, s := range conv.Segments[ci+1 : si+1] {
		switch s.From {
		case capture.Client:
			requireSegment(t, s, capture.Client, capture.ACK, "the client after its FIN")
			assert.Equal(t, cfin.Seq+cfin.SeqSpace(), s.Seq, "the client's seq stays at its FIN's + 1: %v", s)
			assert.Zero(t, s.Len, "no data from the client after its FIN")
		case capture.Server:
			if s.Len > 0 {
				answer = append(answer, s)
			}
		}
	}
	require.NotEmpty(t, answer, "the server's answer came after the client's FIN: %s", dumpWire(conv))
	assert.Greater(t, firstIndex(conv, answer[0]), ackIdx, "the answer follows the ACK of the FIN")
	next := answer[0].Seq
	sent := 0
	for _, s := range answer {
		assert.Equal(t, next, s.Seq, "the server's seq advances with its data: %v", s)
		assert.Equal(t, cfin.Seq+cfin.SeqSpace(), s.Ack, "and keeps acknowledging the client's FIN")
		next += uint32(s.Len)
		sent += s.Len
	}
	assert.Equal(t, len(r.Reply), sent, "every byte of the answer is on the wire after the FIN")
	assert.Equal(t, next, sfin.Seq, "the server's FIN follows its answer")
	dataAck := firstAckOf(conv, capture.Client, next)
	assert.Greater(t, dataAck, firstIndex(conv, answer[len(answer)-1]),
		"the client acknowledges the answer: %s", dumpWire(conv))
	assert.Less(t, dataAck, si, "before the server's FIN (the lab waits for Send-Q 0)")

	// The last ACK is the client's, for the server's FIN + 1, and nothing follows it.
	last := conv.Segments[len(conv.Segments)-1]
	requireSegment(t, last, capture.Client, capture.ACK, "the last ACK")
	assert.Equal(t, sfin.Seq+sfin.SeqSpace(), last.Ack, "the last ACK is the server's FIN + 1")
	assert.Equal(t, cfin.Seq+cfin.SeqSpace(), last.Seq, "still at the client's FIN + 1")
}

// firstIndex is the position of s in the conversation.
func firstIndex(conv *capture.Conversation, s capture.Segment) int {
	for i, x := range conv.Segments {
		if x.Seq == s.Seq && x.Ack == s.Ack && x.From == s.From && x.Flags == s.Flags && x.Len == s.Len {
			return i
		}
	}
	return -1
}

// Part C on the wire: both ends called shutdown() before either received a FIN, yet the
// FINs do not cross. The server's FIN leaves first (the client's read opened the window it
// waited behind); the client acknowledges it — which is what makes it CLOSING — before its
// own FIN is on the wire, because that FIN still waits behind data in the server's zero
// window. Each ACK of a FIN is its seq + 1, and the client's FIN number was fixed when
// shutdown() queued it: its data plus the SYN.
func TestSimultaneousCloseOnTheWireClientACKsServersFINBeforeItsOwnLeaves(t *testing.T) {
	t.Parallel()
	r, err := simultaneousClose(quiet(), wireView(t))
	require.NoError(t, err)
	conv := r.Wire
	requireHandshakeAndFINs(t, conv)
	ci, cfin := finOf(t, conv, capture.Client)
	si, sfin := finOf(t, conv, capture.Server)
	require.Less(t, si, ci, "the server's FIN is on the wire first: %s", dumpWire(conv))
	clientAck := firstAckOf(conv, capture.Client, sfin.Seq+sfin.SeqSpace())
	require.Greater(t, clientAck, si, dumpWire(conv))
	assert.Less(t, clientAck, ci, "the client acknowledges the server's FIN before its own FIN leaves")
	serverAck := firstAckOf(conv, capture.Server, cfin.Seq+cfin.SeqSpace())
	assert.Greater(t, serverAck, ci, "the server acknowledges the client's FIN after it")
	assert.Equal(t, uint32(1+r.ClientSent), cfin.RelSeq+uint32(cfin.Len), "the client's FIN follows all its data")
	assert.Equal(t, uint32(1+r.ServerSent), sfin.RelSeq+uint32(sfin.Len), "the server's FIN follows all its data")
	for _, s := range conv.Segments[si+1:] {
		if s.From == capture.Server {
			assert.Equal(t, sfin.Seq+sfin.SeqSpace(), s.Seq, "nothing from the server after its FIN but seq + 1: %v", s)
		}
	}
	// The trimmed view the demo draws is exactly these four segments.
	fins := finSegments(conv).Segments
	require.Len(t, fins, 4, dumpWire(conv))
	assert.Equal(t, "server FIN, client ACK, client FIN+ACK, server ACK", describeClose(fins))
}
