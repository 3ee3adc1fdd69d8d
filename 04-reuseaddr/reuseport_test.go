//go:build linux

package main

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"socklab/internal/lab"
	"socklab/internal/labtest"
	"socklab/internal/sockdiag"
)

// D: two SO_REUSEPORT listeners share 100 connections. sock_diag's accept-queue lengths
// (Recv-Q of each LISTEN row) sum to 100 and each listener has at least 20: a loose bound, as
// the split is a hash of random-looking 4-tuples (49/51, 83/117 of 200 seen).
func TestReusePortListenersShareConnections(t *testing.T) {
	t.Parallel()
	const clients = 100
	rep, err := stepReusePort(lab.Quiet(), clients)
	require.NoError(t, err)
	t.Logf("split of %d connections: %d/%d", clients, rep.Queued[0], rep.Queued[1])
	assert.Equal(t, clients, rep.Queued[0]+rep.Queued[1], "queued: %v", rep.Queued)
	for i, q := range rep.Queued {
		assert.GreaterOrEqual(t, q, clients/5, "listener %d got %d of %d", i+1, q, clients)
	}
}

// D: a listener without SO_REUSEPORT cannot join the group, not even with SO_REUSEADDR.
func TestReusePortRefusesListenerWithoutTheOption(t *testing.T) {
	t.Parallel()
	rep, err := stepReusePort(lab.Quiet(), 10)
	require.NoError(t, err)
	for _, a := range []listenAttempt{rep.Third, rep.ThirdReuseAddr} {
		assert.Equal(t, "bind", a.Call)
		assert.ErrorIs(t, a.Err, unix.EADDRINUSE)
	}
}

// D: closing one SO_REUSEPORT listener drops no accepted connection, of either listener;
// the other's connections still carry data, and new clients all queue on the one left.
func TestClosingOneReusePortListenerKeepsTheOthersClients(t *testing.T) {
	t.Parallel()
	rep, err := stepReusePort(lab.Quiet(), 40)
	require.NoError(t, err)
	assert.Equal(t, 40, rep.Accepted)
	assert.Equal(t, rep.Accepted, rep.Survivors, "accepted connections still ESTABLISHED in sock_diag")
	assert.Equal(t, "still here", rep.Echoed)
	assert.Equal(t, rep.LaterCount, rep.Later, "later clients all in the remaining listener's queue")
}

// D: an ESTABLISHED connection left on the port after its listener closed. A new listener
// binds only if it and the old one (whose option the connection inherited) set SO_REUSEADDR.
func TestLiveConnectionAfterListenerClosed(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name               string
		oldReuse, newReuse bool
		ok                 bool
	}{
		{"old=plain/new=plain", false, false, false},
		{"old=plain/new=reuse", false, true, false},
		{"old=reuse/new=plain", true, false, false},
		{"old=reuse/new=reuse", true, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			live, again, err := stepLiveConnection(lab.Quiet(), tc.oldReuse, tc.newReuse)
			require.NoError(t, err)
			assert.Equal(t, sockdiag.Established, live.State)
			if tc.ok {
				assert.NoError(t, again.Err)
			} else {
				assert.Equal(t, "bind", again.Call)
				assert.ErrorIs(t, again.Err, unix.EADDRINUSE)
			}
		})
	}
}

// D: with net.ipv4.tcp_migrate_req=0 (the default), closing one SO_REUSEPORT listener resets
// the connections still waiting in its accept queue (the clients' TCP_INFO says CLOSE); the
// other listener's queue is untouched.
func TestClosedReusePortListenerResetsItsQueue(t *testing.T) {
	t.Parallel()
	rep, err := stepQueuedOnClose(lab.Quiet(), 40, false)
	require.NoError(t, err)
	require.Equal(t, "0", rep.Migrate)
	require.Positive(t, rep.Queued[0], "listener 1 had connections waiting: %v", rep.Queued)
	assert.Equal(t, rep.Queued[0], rep.Reset, "every connection in the closed queue was reset")
	assert.Equal(t, rep.Queued[1], rep.Listener2, "the other queue is untouched")
}

// D: with tcp_migrate_req=1 (namespace sysctl) the kernel moves them to the other listener
// instead: no client is reset and listener 2's queue holds all of them. Not parallel: it
// changes a namespace sysctl.
func TestMigrateReqMovesQueuedConnections(t *testing.T) {
	labtest.NeedPrivate(t)
	rep, err := stepQueuedOnClose(lab.Quiet(), 40, true)
	require.NoError(t, err)
	require.Equal(t, "1", rep.Migrate)
	require.Positive(t, rep.Queued[0], "listener 1 had connections waiting: %v", rep.Queued)
	assert.Zero(t, rep.Reset)
	assert.Equal(t, rep.Clients, rep.Listener2)
}
