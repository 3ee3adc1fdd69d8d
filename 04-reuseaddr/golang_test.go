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

// F: getsockopt on the fd of a Go net.Listen listener reports SO_REUSEADDR=1; on a raw
// socket()+bind()+listen() listener, 0.
func TestGoNetListenSetsReuseAddr(t *testing.T) {
	t.Parallel()
	goValue, rawValue, err := goListenerOption(lab.Quiet())
	require.NoError(t, err)
	assert.Equal(t, 1, goValue)
	assert.Equal(t, 0, rawValue)
}

// F: after a Go server closed first and exited, a raw restart gets EADDRINUSE while
// net.Listen on the same address succeeds — with the TIME_WAIT still listed.
func TestGoServerRestartsWhereRawFails(t *testing.T) {
	t.Parallel()
	rep, err := goRestart(lab.Quiet())
	require.NoError(t, err)
	assert.Equal(t, sockdiag.TimeWait, rep.TimeWait.State)
	assert.Equal(t, "bind", rep.Raw.Call)
	assert.ErrorIs(t, rep.Raw.Err, unix.EADDRINUSE)
	assert.NoError(t, rep.GoErr)
	assert.True(t, rep.StillListed)
	labtest.WaitState(t, rep.TimeWait.Local, rep.TimeWait.Remote, sockdiag.TimeWait, time.Second)
}
