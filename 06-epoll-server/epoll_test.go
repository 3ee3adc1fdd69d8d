//go:build linux

package main

import (
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"socklab/internal/lab"
	"socklab/internal/labtest"
	"socklab/internal/sockdiag"
)

func TestMain(m *testing.M) { labtest.Main(m, &program) }

// quiet is a demo that prints nothing, for tests that run the demo's steps.
func quiet() *lab.Demo { return &lab.Demo{Narrator: lab.Quiet(), Env: labtest.Env} }

func TestNonblockingSocketsReturnEAGAIN(t *testing.T) {
	t.Parallel()
	r, err := nonblockingSockets(quiet())
	require.NoError(t, err)
	assert.Zero(t, r.FlagsBefore&unix.O_NONBLOCK, "a new socket blocks")
	assert.NotZero(t, r.FlagsAfter&unix.O_NONBLOCK, "F_SETFL set O_NONBLOCK")
	assert.ErrorIs(t, r.AcceptErr, unix.EAGAIN, "accept on an empty queue")
	assert.NotZero(t, r.AcceptedFlags&unix.O_NONBLOCK, "accept4(SOCK_NONBLOCK) gives a non-blocking socket")
	assert.ErrorIs(t, r.ReadErr, unix.EAGAIN, "read with nothing to read")
}

func TestLevelTriggeredReportsUntilRead(t *testing.T) {
	t.Parallel()
	r, err := levelVersusEdge(quiet())
	require.NoError(t, err)
	// Three waits with 12 bytes unread, one after a partial read: reported every time.
	assert.Equal(t, []int{1, 1, 1, 1}, r.Level)
}

func TestEdgeTriggeredReportsOncePerArrival(t *testing.T) {
	t.Parallel()
	r, err := levelVersusEdge(quiet())
	require.NoError(t, err)
	// Reported once for the arrival, silent twice more, silent after a partial read,
	// reported once for new data, then silent.
	assert.Equal(t, []int{1, 0, 0, 0, 1, 0}, r.Edge)
}

func TestOneshotDisarmsUntilRearmed(t *testing.T) {
	t.Parallel()
	r, err := oneshotRearm(quiet())
	require.NoError(t, err)
	assert.Equal(t, OneshotResult{First: 1, Disarmed: 0, Rearmed: 1, AfterMore: 0}, r)
}

func TestRDHUPOnHalfClose(t *testing.T) {
	t.Parallel()
	r, err := rdhupOnHalfClose(quiet())
	require.NoError(t, err)
	assert.Equal(t, EventString(unix.EPOLLIN|unix.EPOLLRDHUP), EventString(r.AfterPeerShutdown))
	assert.Equal(t, 0, r.ReadAfter, "read() after the peer's FIN returns 0")
	assert.Equal(t, EventString(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP), EventString(r.AfterBothShut))
}

func TestWorkerPoolEchoesEachClient(t *testing.T) {
	t.Parallel()
	r, err := workerPool(quiet(), 2, 3)
	require.NoError(t, err)
	require.Len(t, r.Echoed, 3)
	for i := range r.Sent {
		assert.Equal(t, string(r.Sent[i]), string(r.Echoed[i]))
	}
	assert.Zero(t, r.Overlaps)
}

func TestEventStringNamesEveryBit(t *testing.T) {
	assert.Equal(t, "EPOLLIN|EPOLLRDHUP|EPOLLONESHOT|EPOLLET",
		EventString(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLONESHOT|unix.EPOLLET))
	assert.Equal(t, "0x0", EventString(0))
	assert.Equal(t, "[{EPOLLIN, fd 7}]", EventsString([]unix.EpollEvent{{Events: unix.EPOLLIN, Fd: 7}}))
}

// The server-side half of a pair reaches CLOSE after both shutdowns, as TCP_INFO reports it
// (the demo asks until it does, for at most 5 s: it passes through LAST_ACK until the
// client's ACK of its FIN arrives).
func TestRDHUPLeavesServerEndClosed(t *testing.T) {
	t.Parallel()
	r, err := rdhupOnHalfClose(quiet())
	require.NoError(t, err)
	assert.Equal(t, sockdiag.Close, r.ServerState)
}

// A report whose generation does not match the connection now holding that fd number is about
// a connection that is gone, and is dropped. (The server never produces one — see the loop in
// server.go — so this checks the lookup alone.)
func TestStaleEventIsDropped(t *testing.T) {
	s := &Server{conns: make([]atomic.Pointer[conn], 16)}
	c := &conn{fd: 12, gen: 7}
	s.conns[12].Store(c)
	assert.Same(t, c, s.lookup(unix.EpollEvent{Events: unix.EPOLLIN, Fd: 12, Pad: 7}))
	assert.Nil(t, s.lookup(unix.EpollEvent{Events: unix.EPOLLIN, Fd: 12, Pad: 6}), "old generation")
	assert.Nil(t, s.lookup(unix.EpollEvent{Events: unix.EPOLLIN, Fd: 13, Pad: 7}), "no connection")
	assert.Nil(t, s.lookup(unix.EpollEvent{Events: unix.EPOLLIN, Fd: 99, Pad: 7}), "beyond the table")
}
