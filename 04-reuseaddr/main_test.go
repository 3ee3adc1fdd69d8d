//go:build linux

package main

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"socklab/internal/lab"
	"socklab/internal/labtest"
	"socklab/internal/sockdiag"
)

func TestMain(m *testing.M) { labtest.Main(m, &program) }

// timeWaitLen is TCP_TIMEWAIT_LEN (include/net/tcp.h): 60 s, fixed at compile time.
const timeWaitLen = 60 * time.Second

// A: the server closed first, exited, and its restart gets EADDRINUSE from bind(); sock_diag
// shows the TIME_WAIT on the server's port, with no fd and most of its 60 s left.
func TestRestartAfterServerClosedFirstFailsWithEADDRINUSE(t *testing.T) {
	t.Parallel()
	rep, err := stepFailure(lab.Quiet())
	require.NoError(t, err)
	assert.Equal(t, "bind", rep.Restart.Call)
	assert.ErrorIs(t, rep.Restart.Err, unix.EADDRINUSE)

	tw := rep.TimeWait
	assert.Equal(t, sockdiag.TimeWait, tw.State)
	assert.Equal(t, sockdiag.TimerTimeWait, tw.Timer)
	assert.False(t, tw.HasFD(), "a TIME_WAIT has no file descriptor")
	assert.Greater(t, tw.Expires, timeWaitLen-15*time.Second, "most of the 60 s are left")
	assert.LessOrEqual(t, tw.Expires, timeWaitLen)
	// The kernel still lists it, on the full 4-tuple, after the failed restart.
	now := labtest.WaitState(t, tw.Local, tw.Remote, sockdiag.TimeWait, time.Second)
	assert.LessOrEqual(t, now.Expires, tw.Expires, "the timer only runs down")
}

// B: every cell of SO_REUSEADDR (old listener) × SO_REUSEADDR (new listener) × who closed
// first, run for real. The restart fails exactly when a TIME_WAIT sits on the server's port
// and not both listeners set the option; the TIME_WAIT is listed after every restart.
//
// The cells run one after another, not in parallel: in a client-closes-first cell the port is
// free between close and rebind, and a parallel bind(port 0) could take it.
func TestReuseAddrMatrix(t *testing.T) {
	for _, c := range allCells() {
		t.Run(c.Name(), func(t *testing.T) {
			r, err := runCell(lab.Quiet(), c)
			require.NoError(t, err)
			wantFail := c.ServerFirst && !(c.OldReuse && c.NewReuse)
			if wantFail {
				assert.Equal(t, "bind", r.Restart.Call)
				assert.ErrorIs(t, r.Restart.Err, unix.EADDRINUSE)
			} else {
				assert.NoError(t, r.Restart.Err, "restart: %s", r.Restart.Result())
			}

			tw := r.TimeWait
			assert.Equal(t, sockdiag.TimeWait, tw.State)
			if c.ServerFirst {
				assert.Equal(t, r.Server, tw.Local, "the TIME_WAIT holds the server's own address")
			} else {
				assert.Equal(t, r.Server, tw.Remote, "the TIME_WAIT is the client's, towards the server")
				assert.NotEqual(t, r.Server.Port(), tw.Local.Port())
			}
			assert.True(t, r.StillListed, "the TIME_WAIT is listed right after the restart")
			labtest.WaitState(t, tw.Local, tw.Remote, sockdiag.TimeWait, time.Second)
		})
	}
}
