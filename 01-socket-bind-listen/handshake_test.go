//go:build linux

package main

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

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
	assert.Equal(t, "data in the SYN", conns[1].Received)
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
