//go:build linux

package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"socklab/internal/capture"
	"socklab/internal/lab"
	"socklab/internal/labtest"
	"socklab/internal/sockdiag"
)

// With TCP_QUICKACK=0 on the client, the final ACK is delayed: right after connect() returns
// the client is ESTABLISHED while the server holds only a request socket in SYN_RECV (no fd).
func TestServerSynRecvWhileClientEstablished(t *testing.T) {
	t.Parallel()
	f, err := halfOpenHandshake(narrator(t), true, false, 0)
	require.NoError(t, err)
	assert.Equal(t, sockdiag.Established, f.ClientState)
	assert.Equal(t, sockdiag.SynRecv, f.Server.State, "kernel: %v", f.Server)
	assert.False(t, f.Server.HasFD(), "a request socket has no fd")
}

// The client's first data segment carries the acknowledgement and completes the handshake.
func TestClientDataCompletesDelayedHandshake(t *testing.T) {
	t.Parallel()
	f, err := halfOpenHandshake(narrator(t), true, false, 0)
	require.NoError(t, err)
	assert.Equal(t, sockdiag.Established, f.ServerAfterData)
	assert.Equal(t, "GET /", f.Received)
}

// In a private namespace: when the third segment (the bare ACK) is lost, the server keeps
// SYN_RECV and retransmits its SYN-ACK, while the client is ESTABLISHED.
func TestLostThirdACKKeepsServerInSynRecv(t *testing.T) {
	t.Parallel()
	labtest.NeedPrivate(t)
	retrans := 1
	if testing.Short() {
		retrans = 0 // the SYN-ACK is retransmitted after 1 s
	}
	f, err := halfOpenHandshake(narrator(t), false, true, retrans)
	require.NoError(t, err)
	assert.Equal(t, sockdiag.Established, f.ClientState)
	assert.Equal(t, sockdiag.SynRecv, f.Server.State, "kernel: %v", f.Server)
	assert.GreaterOrEqual(t, int(f.Server.Retransmits), retrans, "SYN-ACK retransmissions")
	assert.Equal(t, sockdiag.TimerRetransmit, f.Server.Timer)
}

// ... and the client's first data segment completes the handshake anyway.
func TestFirstDataSegmentCompletesHandshakeAfterLostACK(t *testing.T) {
	t.Parallel()
	labtest.NeedPrivate(t)
	f, err := halfOpenHandshake(narrator(t), false, true, 0)
	require.NoError(t, err)
	assert.Equal(t, sockdiag.SynRecv, f.Server.State)
	assert.Equal(t, sockdiag.Established, f.ServerAfterData)
	assert.Equal(t, "GET /", f.Received)
}

// In a private namespace with TCP Fast Open on: the first connection only fetches a cookie,
// the second carries its data on the SYN (TCPI_OPT_SYN_DATA, TCPFastOpenPassive).
func TestFastOpenCarriesDataOnSyn(t *testing.T) {
	t.Parallel()
	labtest.NeedPrivate(t)
	conns, err := fastOpen(narrator(t))
	require.NoError(t, err)
	require.Len(t, conns, 2)
	assert.Equal(t, "no cookie yet", conns[0].Received)
	assert.False(t, conns[0].SynData, "no cookie: the data waited for the handshake")
	assert.Zero(t, conns[0].PassiveOpens)
	assert.Equal(t, "SYN data", conns[1].Received)
	assert.True(t, conns[1].SynData, "the SYN's data was acknowledged")
	assert.EqualValues(t, 1, conns[1].PassiveOpens)
}

// In a private namespace (TCP_REPAIR needs CAP_NET_ADMIN): after the handshake, what each end
// will send next is what the other expects next — the SYN-ACK's ack = x+1 and the final
// ACK's ack = y+1 — and every connection starts from its own ISNs.
func TestHandshakeAcknowledgesEachISNPlusOne(t *testing.T) {
	t.Parallel()
	labtest.NeedPrivate(t)
	conns, err := sequenceNumbers(narrator(t), 3)
	require.NoError(t, err)
	require.Len(t, conns, 3)
	for _, c := range conns {
		assert.Equal(t, c.Client.Send, c.Server.Recv, "server expects client ISN+1")
		assert.Equal(t, c.Server.Send, c.Client.Recv, "client expects server ISN+1")
		assert.NotEqual(t, c.Client.Send, c.Server.Send, "each direction has its own ISN")
	}
}

// ... and the ISN is not fixed: three connections, three different client ISNs and three
// different server ISNs.
func TestISNDiffersPerConnection(t *testing.T) {
	t.Parallel()
	labtest.NeedPrivate(t)
	conns, err := sequenceNumbers(narrator(t), 3)
	require.NoError(t, err)
	clients, servers := map[uint32]bool{}, map[uint32]bool{}
	for _, c := range conns {
		clients[c.Client.Send-1] = true
		servers[c.Server.Send-1] = true
	}
	assert.Len(t, clients, 3)
	assert.Len(t, servers, 3)
}

// wire runs the packet-view step (the same function as the demo): count connections to one
// listener, recorded by a packet capture on its port. The capture needs the private namespace.
func wire(t *testing.T, count int) []wireHandshake {
	t.Helper()
	labtest.NeedPrivate(t)
	hs, err := wireHandshakes(narrator(t), count)
	require.NoError(t, err)
	require.Len(t, hs, count)
	return hs
}

// lessonFlags drops the ECN bits, which are not part of this lesson (and appear only if
// net.ipv4.tcp_ecn asks for ECN).
func lessonFlags(s capture.Segment) capture.Flags { return s.Flags &^ (capture.ECE | capture.CWR) }

// From socket() to accept(), the wire carries exactly three segments of the connection: the
// client's SYN, the server's SYN-ACK and the client's ACK, in that order, none with payload;
// and the capture agrees with getsockname on which end is the client.
func TestHandshakeIsSynThenSynAckThenAck(t *testing.T) {
	t.Parallel()
	h := wire(t, 1)[0]
	conv := h.Conv
	assert.Equal(t, h.Client, conv.Client, "the client is the sender of the SYN")
	assert.Equal(t, h.Listener, conv.Server)
	require.Len(t, conv.Segments, 3, "segments: %v", conv.Segments)
	want := []struct {
		from  capture.Side
		flags capture.Flags
	}{{capture.Client, capture.SYN}, {capture.Server, capture.SYN | capture.ACK}, {capture.Client, capture.ACK}}
	for i, w := range want {
		s := conv.Segments[i]
		assert.Equal(t, w.from, s.From, "segment %d: %v", i, s)
		assert.Equal(t, w.flags, lessonFlags(s), "segment %d: %v", i, s)
		assert.Zero(t, s.Len, "segment %d carries no data: %v", i, s)
	}
}

// Each side sends exactly one SYN: the client's SYN and the server's SYN-ACK. Nothing was
// retransmitted.
func TestHandshakeHasExactlyOneSynPerSide(t *testing.T) {
	t.Parallel()
	conv := wire(t, 1)[0].Conv
	syns := map[capture.Side]int{}
	for _, s := range conv.Segments {
		if s.Flags&capture.SYN != 0 {
			syns[s.From]++
		}
	}
	assert.Equal(t, 1, syns[capture.Client], "client SYNs in %v", conv.Segments)
	assert.Equal(t, 1, syns[capture.Server], "server SYNs in %v", conv.Segments)
	assert.True(t, conv.SawClientSYN && conv.SawServerSYN, "both ISNs come from SYNs")
}

// The SYN-ACK acknowledges the client's ISN + 1 and the final ACK the server's ISN + 1: a SYN
// consumes one sequence number, so the ACK is also sent from x+1.
func TestHandshakeSegmentsAckPeerISNPlusOne(t *testing.T) {
	t.Parallel()
	conv := wire(t, 1)[0].Conv
	require.Len(t, conv.Segments, 3, "segments: %v", conv.Segments)
	syn, synack, ack := conv.Segments[0], conv.Segments[1], conv.Segments[2]
	x, y := syn.Seq, synack.Seq
	assert.Equal(t, x, conv.ClientISN)
	assert.Equal(t, y, conv.ServerISN)
	assert.Equal(t, x+1, synack.Ack, "SYN-ACK ack = x+1")
	assert.Equal(t, y+1, ack.Ack, "ACK ack = y+1")
	assert.Equal(t, x+1, ack.Seq, "the client's SYN used sequence number x")
	assert.NotEqual(t, x, y, "each direction has its own ISN")
}

// Relative to each side's ISN (as Wireshark shows them) the handshake always reads
// SYN seq=0, SYN,ACK seq=0 ack=1, ACK seq=1 ack=1, whatever the ISNs were.
func TestHandshakeRelativeNumbersCountFromEachISN(t *testing.T) {
	t.Parallel()
	conv := wire(t, 1)[0].Conv
	require.Len(t, conv.Segments, 3, "segments: %v", conv.Segments)
	var got [][2]uint32
	for _, s := range conv.Segments {
		got = append(got, [2]uint32{s.RelSeq, s.RelAck})
	}
	assert.Equal(t, [][2]uint32{{0, 0}, {0, 1}, {1, 1}}, got, "relative seq/ack")
}

// Three connections from the same address to the same listener, one right after another:
// three different client ISNs and three different server ISNs on the wire.
func TestISNsDifferOnTheWire(t *testing.T) {
	t.Parallel()
	hs := wire(t, 3)
	clients, servers, tuples := map[uint32]bool{}, map[uint32]bool{}, map[[2]string]bool{}
	for _, h := range hs {
		require.True(t, h.Conv.SawClientSYN && h.Conv.SawServerSYN, "both SYNs recorded: %v", h.Conv.Segments)
		clients[h.Conv.ClientISN] = true
		servers[h.Conv.ServerISN] = true
		tuples[[2]string{h.Client.String(), h.Listener.String()}] = true
	}
	assert.Len(t, tuples, 3, "three connections")
	assert.Len(t, clients, 3, "client ISNs: %v", clients)
	assert.Len(t, servers, 3, "server ISNs: %v", servers)
}

// The packet view — segment list, ASCII sequence diagram, ISN table and, with -v, the Mermaid
// diagram — fits an 80-column terminal.
func TestPacketViewFitsEightyColumns(t *testing.T) {
	t.Parallel()
	labtest.NeedPrivate(t)
	var buf bytes.Buffer
	_, err := wireHandshakes(lab.NewNarrator(&buf, true), 3)
	require.NoError(t, err)
	out := buf.String()
	require.Contains(t, out, "|-- SYN seq=0 ", "the ASCII diagram is printed")
	require.Contains(t, out, "sequenceDiagram", "-v prints the Mermaid diagram")
	require.Contains(t, out, "client ISN x", "the ISN table is printed")
	for _, line := range strings.Split(out, "\n") {
		assert.LessOrEqual(t, lab.Columns(line), 80, "%q", line)
	}
}

// Without the private namespace (-host) the demo says in one line that it skips the packet
// view, and the rest of the handshake part runs.
func TestPacketViewSkippedInOneLineOnHost(t *testing.T) {
	t.Parallel()
	stdout, stderr, code := labtest.RunProgram(t, nil, "handshake", "-host")
	require.Equal(t, 0, code, "stderr: %s", stderr)
	lines := strings.Split(stdout, "\n")
	var skips []int
	for i, l := range lines {
		if strings.Contains(l, "packet view") {
			skips = append(skips, i)
		}
	}
	require.Len(t, skips, 1, "one line about the packet view:\n%s", stdout)
	i := skips[0]
	assert.True(t, strings.HasPrefix(lines[i], "    skipped: packet view: "), "%q", lines[i])
	assert.LessOrEqual(t, lab.Columns(lines[i]), 80)
	assert.Empty(t, lines[i+1], "the reason fits on the same line")
	assert.Contains(t, stdout, "SYN_RECV made visible", "the rest of the part ran")
	assert.NotContains(t, stdout, "|-- SYN seq=0")
}
