//go:build linux

package main

import (
	"io/fs"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"socklab/internal/lab"
	"socklab/internal/labtest"
	"socklab/internal/sockdiag"
)

// E, myth "SO_REUSEADDR removes TIME_WAIT": false. After a successful restart with the option
// on both listeners, the same TIME_WAIT is listed, its timer still running down.
func TestReuseAddrDoesNotRemoveTimeWait(t *testing.T) {
	t.Parallel()
	before, after, r, err := stepReuseAddrKeepsTimeWait(lab.Quiet())
	require.NoError(t, err)
	assert.NoError(t, r.Restart.Err)
	assert.Equal(t, sockdiag.TimeWait, before.State)
	assert.Equal(t, sockdiag.TimeWait, after.State)
	assert.LessOrEqual(t, after.Expires, before.Expires, "the timer was not reset")
	assert.Greater(t, after.Expires, time.Duration(0))
	labtest.WaitState(t, before.Local, before.Remote, sockdiag.TimeWait, time.Second)
}

// E, myth "turn on tcp_tw_recycle": the sysctl does not exist (removed in Linux 4.12); only
// tcp_tw_reuse (and, on newer kernels, tcp_tw_reuse_delay) remain.
func TestTwRecycleDoesNotExist(t *testing.T) {
	t.Parallel()
	names, err := twSysctls(lab.Quiet())
	assert.ErrorIs(t, err, fs.ErrNotExist)
	assert.Contains(t, names, "tcp_tw_reuse")
	assert.NotContains(t, names, "tcp_tw_recycle")
}

// E, myth "tcp_fin_timeout shortens TIME_WAIT": false. With it at 5 s, a TIME_WAIT still has
// more than 30 s left, while an orphaned FIN_WAIT2 (peer never closed) gets at most 5 s.
// Not parallel: it changes a namespace sysctl.
func TestFinTimeoutDoesNotShortenTimeWait(t *testing.T) {
	labtest.NeedPrivate(t)
	rep, err := stepFinTimeout(lab.Quiet())
	require.NoError(t, err)
	assert.Equal(t, "5", rep.FinTimeout)
	assert.Equal(t, sockdiag.TimeWait, rep.TimeWait.State)
	assert.Greater(t, rep.TimeWait.Expires, 30*time.Second, "TIME_WAIT keeps its 60 s")
	assert.Equal(t, sockdiag.FinWait2, rep.Orphan.State)
	assert.False(t, rep.Orphan.HasFD(), "the FIN_WAIT2 is an orphan")
	assert.NotEqual(t, sockdiag.TimerNone, rep.Orphan.Timer)
	assert.LessOrEqual(t, rep.Orphan.Expires, 5*time.Second, "the orphan got tcp_fin_timeout")
}

// E: tcp_max_tw_buckets=0 means no TIME_WAIT is created at all: the sockets vanish, the kernel
// counts TcpExt:TCPTimeWaitOverflow once per close, and a restart without SO_REUSEADDR binds.
// Restored, TIME_WAIT is back. Not parallel: it changes a namespace sysctl that would starve
// every other test's TIME_WAIT.
func TestMaxTwBucketsOverflowSkipsTimeWait(t *testing.T) {
	labtest.NeedPrivate(t)
	const closes = 3
	rep, err := stepMaxTwBuckets(lab.Quiet(), closes)
	require.NoError(t, err)
	assert.GreaterOrEqual(t, rep.Overflow, int64(closes), "TCPTimeWaitOverflow rose once per close")
	assert.Zero(t, rep.TimeWaitsAfter, "no TIME_WAIT was created")
	assert.NoError(t, rep.Restart.Err, "the port is free: %s", rep.Restart.Result())
	assert.Equal(t, sockdiag.TimeWait, rep.Control.State, "with the limit restored, TIME_WAIT is back")
}
