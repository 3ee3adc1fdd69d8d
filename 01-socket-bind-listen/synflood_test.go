//go:build linux

package main

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"socklab/internal/labtest"
)

// A forged SYN is a valid IPv4+TCP packet: the TCP checksum over the pseudo-header sums to
// zero when recomputed with the checksum in place (RFC 1071).
func TestForgedSYNChecksumVerifies(t *testing.T) {
	t.Parallel()
	src := netip.MustParseAddrPort("192.0.2.100:20000")
	dst := netip.MustParseAddrPort("192.0.2.1:80")
	p := forgedSYN(src, dst, 42)
	require.Len(t, p, 40)
	assert.EqualValues(t, 0x02, p[33], "SYN flag only")
	assert.EqualValues(t, 20000, binary.BigEndian.Uint16(p[20:]))
	assert.Zero(t, tcpChecksum(src.Addr().As4(), dst.Addr().As4(), p[20:]), "checksum verifies")
}

// In a private namespace with tcp_syncookies=0: forged SYNs fill the SYN queue, the server
// holds many SYN_RECV requests, further SYNs are dropped, and a legitimate client cannot
// connect (it gives up with ETIMEDOUT).
func TestSynFloodWithoutCookiesLocksOutClient(t *testing.T) {
	t.Parallel()
	labtest.NeedPrivate(t)
	f, err := synFlood(narrator(t), "0", 64, !testing.Short())
	require.NoError(t, err)
	assert.Equal(t, 64, f.Sent)
	assert.Equal(t, floodBacklog+1, f.HalfOpen, "the SYN queue is full: backlog+1 half-open requests")
	assert.EqualValues(t, 64-f.HalfOpen, f.QueueFullDrops, "the rest were dropped")
	assert.Zero(t, f.CookiesSent)
	assert.False(t, f.ClientGotIn, "legitimate client state %v", f.ClientState)
	if !testing.Short() {
		assert.ErrorIs(t, f.ClientErr, unix.ETIMEDOUT)
	}
}

// With tcp_syncookies=1 the same flood makes the kernel answer with SYN cookies
// (SyncookiesSent rises) and the legitimate client connects.
func TestSynCookiesLetClientInDuringFlood(t *testing.T) {
	t.Parallel()
	labtest.NeedPrivate(t)
	f, err := synFlood(narrator(t), "1", 64, false)
	require.NoError(t, err)
	assert.True(t, f.ClientGotIn, "legitimate client state %v", f.ClientState)
	assert.Equal(t, floodBacklog+1, f.HalfOpen, "the SYN queue is just as full")
	assert.Zero(t, f.QueueFullDrops, "nothing dropped")
	assert.GreaterOrEqual(t, f.CookiesSent, int64(64-f.HalfOpen+1), "cookies for the overflow and the client")
}

// tcp_synack_retries bounds how long half-open requests live: with 1, one retransmission
// (after 1 s) and then the request is dropped (after 2 s more), instead of about a minute
// with the default 5.
func TestSynackRetriesBoundHalfOpenLifetime(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for SYN-ACK retransmissions (about 3 s)")
	}
	t.Parallel()
	labtest.NeedPrivate(t)
	initial, lived, err := halfOpenLifetime(narrator(t), "1", 16)
	require.NoError(t, err)
	assert.Equal(t, 16, initial)
	assert.Greater(t, lived, 2*time.Second, "they lived through one retransmission")
	assert.Less(t, lived, 10*time.Second)
}
