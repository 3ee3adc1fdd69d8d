//go:build linux

package main

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"socklab/internal/labtest"
	"socklab/internal/sockdiag"
)

// fill runs fillQueue and closes the lab when the test ends.
func fill(t *testing.T, backlog, clients int) (*queueLab, queueView) {
	t.Helper()
	q, v, err := fillQueue(narrator(t), backlog, clients, true)
	require.NoError(t, err)
	t.Cleanup(q.Close)
	return q, v
}

// listen(fd, N) without accept(): exactly N+1 clients complete the handshake, the rest wait.
func TestBacklogAdmitsNPlusOne(t *testing.T) {
	t.Parallel()
	for _, n := range []int{0, 1, 4, 16} {
		t.Run(fmt.Sprintf("backlog=%d", n), func(t *testing.T) {
			t.Parallel()
			_, v := fill(t, n, n+3)
			assert.Equal(t, n+1, v.count(sockdiag.Established), "admitted")
			assert.Equal(t, 2, v.count(sockdiag.SynSent), "waiting")
		})
	}
}

// The admitted clients are ESTABLISHED on both ends before any accept(), and no fd refers to
// the server's ends yet.
func TestAdmittedClientsAreEstablishedOnBothEndsBeforeAccept(t *testing.T) {
	t.Parallel()
	_, v := fill(t, 2, 3)
	require.Len(t, v.Clients, 3)
	for _, c := range v.Clients {
		assert.Equal(t, sockdiag.Established, c.Client.State, "client %v", c.Addr)
		assert.Equal(t, sockdiag.Established, c.ServerState, "server end for %v", c.Addr)
		assert.False(t, c.ServerHasFD, "server end for %v has no fd before accept", c.Addr)
	}
}

// The listener's row gives the accept queue's length (Recv-Q) and maximum (Send-Q).
func TestListenerReportsAcceptQueueLengthAndMax(t *testing.T) {
	t.Parallel()
	q, v := fill(t, 3, 2)
	assert.EqualValues(t, 2, v.AcceptQueueLen)
	assert.EqualValues(t, 3, v.AcceptQueueMax)
	require.NoError(t, q.connect(3, false))
	v, err := q.snapshot()
	require.NoError(t, err)
	assert.EqualValues(t, 4, v.AcceptQueueLen, "full: backlog+1")
	assert.EqualValues(t, 3, v.AcceptQueueMax)
}

// Clients beyond the queue stay in SYN_SENT: their SYNs are dropped, not refused — no RST, no
// socket on the server side, and the kernel counts ListenOverflows.
func TestExtraClientsWaitInSynSentNotRefused(t *testing.T) {
	// Not parallel: ListenOverflows counts for the whole namespace (the package's own), and a
	// sequential test runs while the parallel ones, which overflow queues too, are paused — so
	// the rise is this test's.
	before, err := sockdiag.Counter("TcpExt", "ListenOverflows")
	require.NoError(t, err)
	q, v := fill(t, 1, 4)
	after, err := sockdiag.Counter("TcpExt", "ListenOverflows")
	require.NoError(t, err)
	assert.GreaterOrEqual(t, after-before, int64(2), "two SYNs found the queue full")
	for i, c := range v.Clients[2:] {
		assert.Equal(t, sockdiag.SynSent, c.Client.State, "client %v", c.Addr)
		assert.Equal(t, sockdiag.TimerRetransmit, c.Client.Timer, "SYN retransmission timer armed")
		assert.Zero(t, c.ServerState, "the server keeps nothing for %v", c.Addr)
		soErr, err := unix.GetsockoptInt(q.Clients[2+i].FD, unix.SOL_SOCKET, unix.SO_ERROR)
		require.NoError(t, err)
		assert.Zero(t, soErr, "not refused")
	}
}

// A waiting client retransmits its SYN: the kernel counts the retransmissions.
func TestWaitingClientRetransmitsSyn(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for a SYN retransmission (about 1 s)")
	}
	t.Parallel()
	q, v := fill(t, 0, 2)
	wi := v.firstWaiter()
	require.Equal(t, 1, wi)
	r, err := q.waitSynRetransmits(wi, 1, retransmitWait)
	require.NoError(t, err)
	assert.Equal(t, sockdiag.SynSent, r.Diag.State)
	assert.Equal(t, sockdiag.TimerRetransmit, r.Diag.Timer)
	assert.GreaterOrEqual(t, r.Info.Retransmits, uint8(1), "tcpi_retransmits")
	assert.EqualValues(t, sockdiag.SynSent, r.Info.State)
	assert.GreaterOrEqual(t, r.Info.Total_retrans, uint32(1))
}

// After accept() frees a slot, the waiting client gets in at its next SYN retransmission:
// it ends ESTABLISHED having sent exactly one more SYN than it had when the slot freed.
func TestWaiterGetsInAtNextRetransmissionAfterAccept(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for SYN retransmissions (about 3 s)")
	}
	t.Parallel()
	q, v := fill(t, 0, 2)
	wi := v.firstWaiter()
	require.Equal(t, 1, wi)
	_, err := q.waitSynRetransmits(wi, 1, retransmitWait)
	require.NoError(t, err)
	_, _, err = q.acceptOne()
	require.NoError(t, err)
	s, found, err := sockdiag.Find(q.Clients[wi].Addr, q.Addr)
	require.NoError(t, err)
	require.True(t, found)
	w, err := q.waitAdmission([]int{wi}, retransmitWait)
	require.NoError(t, err)
	labtest.WaitState(t, q.Addr, q.Clients[wi].Addr, sockdiag.Established, shortWait)
	assert.GreaterOrEqual(t, w.TotalRetrans, uint32(2), "the first retransmission was dropped too")
	if s.State == sockdiag.SynSent {
		assert.Equal(t, uint32(s.Retransmits)+1, w.TotalRetrans,
			"in at the first retransmission after accept (kernel had %v)", s)
		assert.LessOrEqual(t, w.After, s.Expires+2*time.Second, "when its timer fired")
	}
}

// In a private namespace: net.core.somaxconn caps the backlog given to listen().
func TestSomaxconnCapsBacklog(t *testing.T) {
	t.Parallel()
	labtest.NeedPrivate(t)
	v, err := somaxconnCaps(narrator(t), 2, 100)
	require.NoError(t, err)
	assert.EqualValues(t, 2, v.AcceptQueueMax)
	assert.EqualValues(t, 3, v.AcceptQueueLen)
	assert.Equal(t, 3, v.count(sockdiag.Established))
	assert.Equal(t, 2, v.count(sockdiag.SynSent))
}

// tcp_abort_on_overflow=1: a final ACK that finds the accept queue full is answered with
// RST, and the client's read() fails with ECONNRESET.
func TestAbortOnOverflowResetsClient(t *testing.T) {
	t.Parallel()
	labtest.NeedPrivate(t)
	f, err := overflowAtFinalACK(narrator(t), true)
	require.NoError(t, err)
	assert.ErrorIs(t, f.ReadErr, unix.ECONNRESET)
	assert.Equal(t, sockdiag.Close, f.ClientState)
	assert.Zero(t, f.ServerState, "the server dropped its request")
	assert.GreaterOrEqual(t, f.Overflows, int64(1))
}

// tcp_abort_on_overflow=0 (the default): the client believes it is ESTABLISHED while the
// server keeps SYN_RECV.
func TestNoAbortOnOverflowKeepsServerInSynRecv(t *testing.T) {
	t.Parallel()
	labtest.NeedPrivate(t)
	f, err := overflowAtFinalACK(narrator(t), false)
	require.NoError(t, err)
	assert.ErrorIs(t, f.ReadErr, unix.EAGAIN, "nothing to read, but no error either")
	assert.Equal(t, sockdiag.Established, f.ClientState)
	assert.Equal(t, sockdiag.SynRecv, f.ServerState)
	assert.GreaterOrEqual(t, f.Overflows, int64(1))
}

// In a private namespace: net.ipv4.tcp_syn_retries=1 makes a connect() whose SYNs are all
// dropped fail with ETIMEDOUT once its 3 s budget (1 s + 2 s) has passed. The kernel counts the
// retransmissions (TCP_INFO, and TcpExt TCPSynRetrans of a namespace no other test uses) and
// drops the socket from its table. Without linear timeouts that is exactly one
// retransmission; with tcp_syn_linear_timeouts=4 (this kernel's default) the timeout stays at
// 1 s, and two fit into the same budget: the sysctl bounds time, not the count.
func TestSynRetriesSysctlBoundsConnectAttempts(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for connect() to time out (about 3 s)")
	}
	t.Parallel()
	labtest.NeedPrivate(t)
	// Both cases wait at the same time, each in a namespace of its own, so that the test
	// holds one of go test's parallel slots for 3 s, not two.
	linears := []int{0, 4}
	facts := make([]synRetriesFacts, len(linears))
	errs := make([]error, len(linears))
	var wg sync.WaitGroup
	for i, linear := range linears {
		n := narrator(t)
		wg.Go(func() { facts[i], errs[i] = synRetriesGiveUp(n, 1, linear) })
	}
	wg.Wait()
	for i, linear := range linears {
		t.Run(fmt.Sprintf("linear_timeouts=%d", linear), func(t *testing.T) {
			f, err := facts[i], errs[i]
			if errors.Is(err, errNoLinearTimeouts) {
				t.Skip(err.Error())
			}
			require.NoError(t, err)
			retransmits, giveUp := synGiveUp(1, linear)
			require.Len(t, retransmits, 1+min(linear, 1), "the kernel's rule, tcp_timer.c")
			assert.Equal(t, sockdiag.SynSent, f.WaitingState, "sock_diag right after connect()")
			assert.ErrorIs(t, f.Err, unix.ETIMEDOUT, "SO_ERROR")
			assert.EqualValues(t, len(retransmits), f.TotalRetrans, "tcpi_total_retrans")
			assert.EqualValues(t, len(retransmits), f.SynRetrans, "TcpExt TCPSynRetrans of the namespace")
			assert.False(t, f.ListedAfterGivenUp, "the socket left the kernel's table")
			assert.GreaterOrEqual(t, f.GaveUpAfter, giveUp-200*time.Millisecond, "not before the budget")
			assert.Less(t, f.GaveUpAfter, giveUp+3*time.Second)
			t.Logf("%d retransmissions at %v, ETIMEDOUT after %v", f.TotalRetrans, f.Retransmitted, f.GaveUpAfter)
		})
	}
}
