//go:build linux

package main

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"runtime"
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

// In a private namespace with tcp_syncookies=0: tcp_max_syn_backlog, not only the listen
// backlog, bounds the SYN queue. tcp_conn_request() drops a SYN from a never-proven peer once
// fewer than a quarter of tcp_max_syn_backlog slots remain, so a flood leaves
// max - max/4 + 1 half-open requests (13 for 16) although listen(fd, 128) would hold 129; the
// drops show as ListenDrops only, not as TCPReqQFullDrop. With a large tcp_max_syn_backlog the
// backlog is the limit again and the overflow is counted as TCPReqQFullDrop.
func TestMaxSynBacklogCapsHalfOpenQueueWithoutCookies(t *testing.T) {
	t.Parallel()
	labtest.NeedPrivate(t)
	const flood = 200
	for _, maxSynBacklog := range []int{16, 64, 1024} {
		t.Run(fmt.Sprintf("max_syn_backlog=%d", maxSynBacklog), func(t *testing.T) {
			t.Parallel()
			f, err := maxSynBacklogFlood(narrator(t), maxSynBacklog, flood, false)
			require.NoError(t, err)
			limit := halfOpenLimit(maxSynBacklog, synBacklogListen)
			require.Equal(t, flood, f.Sent)
			// SYNs reach a listener without its lock, possibly on every CPU at once, so
			// each CPU but one may pass the check before another's request is counted.
			assert.GreaterOrEqual(t, f.HalfOpen, limit, "SYN_RECV requests")
			assert.LessOrEqual(t, f.HalfOpen, limit+runtime.NumCPU()-1, "SYN_RECV requests")
			assert.EqualValues(t, flood-f.HalfOpen, f.ListenDrops, "every other SYN dropped")
			assert.Zero(t, f.Overflows, "the accept queue played no part")
			t.Logf("%d half-open (rule: %d), ListenDrops +%d, TCPReqQFullDrop +%d",
				f.HalfOpen, limit, f.ListenDrops, f.QueueFullDrops)
			if limit < synBacklogListen+1 {
				assert.Less(t, f.HalfOpen, synBacklogListen+1, "fewer than the backlog allows")
				assert.Zero(t, f.QueueFullDrops, "the SYN queue was never full")
			} else {
				assert.Equal(t, synBacklogListen+1, f.HalfOpen, "the backlog is the limit")
				assert.EqualValues(t, flood-f.HalfOpen, f.QueueFullDrops, "dropped as the SYN queue was full")
			}
		})
	}
}
