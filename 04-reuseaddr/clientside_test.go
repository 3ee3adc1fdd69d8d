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

// C: when the client closes first, the TIME_WAIT is the client's, on its ephemeral port, and
// the server's port holds nothing.
func TestClientClosingFirstHoldsTimeWaitOnItsEphemeralPort(t *testing.T) {
	t.Parallel()
	tw, server, err := stepClientTimeWait(lab.Quiet())
	require.NoError(t, err)
	assert.Equal(t, sockdiag.TimeWait, tw.State)
	assert.Equal(t, server, tw.Remote, "the TIME_WAIT points at the server")
	assert.NotEqual(t, server.Port(), tw.Local.Port(), "it sits on the client's port")
	labtest.WaitState(t, tw.Local, tw.Remote, sockdiag.TimeWait, time.Second)
	socks, err := sockdiag.Dump(sockdiag.TCP, sockdiag.Filter{Local: server})
	require.NoError(t, err)
	assert.Empty(t, socks, "nothing is left on the server's port: %v", socks)
}

// C: repeated connections to one server get a new client port each time; every old one is
// still listed in TIME_WAIT.
func TestRepeatedConnectionsUseNewPorts(t *testing.T) {
	t.Parallel()
	const count = 5
	tws, err := stepNewPorts(lab.Quiet(), count)
	require.NoError(t, err)
	require.Len(t, tws, count)
	ports := map[uint16]bool{}
	for _, tw := range tws {
		ports[tw.Local.Port()] = true
		assert.Equal(t, tws[0].Remote, tw.Remote, "same server every time")
		labtest.WaitState(t, tw.Local, tw.Remote, sockdiag.TimeWait, time.Second)
	}
	assert.Len(t, ports, count, "each connection had its own client port")
}

// C: tcp_tw_reuse is about connect(): a client that may use only the port of its own
// TIME_WAIT gets EADDRNOTAVAIL with tcp_tw_reuse=0 (namespace only) and takes the TIME_WAIT's
// 4-tuple over with the default 2 (loopback), which sock_diag then lists as ESTABLISHED.
// Not parallel: it changes namespace sysctls.
func TestTwReuseLetsConnectTakeOverTimeWait(t *testing.T) {
	private := labtest.Env.Private
	rep, err := stepTwReuseConnect(lab.Quiet(), private)
	require.NoError(t, err)
	if private {
		assert.True(t, rep.Refused)
		assert.ErrorIs(t, rep.RefusedErr, unix.EADDRNOTAVAIL)
	} else {
		t.Log("no private namespace: the tcp_tw_reuse=0 half was not run")
	}
	assert.Equal(t, sockdiag.Established, rep.Reused.State, "same 4-tuple, new connection: %v", rep.Reused)
	assert.Equal(t, rep.TimeWait.Local, rep.Reused.Local)
	assert.Equal(t, rep.TimeWait.Remote, rep.Reused.Remote)
	assert.GreaterOrEqual(t, rep.Attempts, 1)
}

// C: tcp_tw_reuse does not help bind(): with it on (1 in the namespace, else the default 2
// that covers loopback) a restart over a server-side TIME_WAIT still gets EADDRINUSE.
// Not parallel: it changes a namespace sysctl.
func TestTwReuseDoesNotHelpBind(t *testing.T) {
	reuse, r, err := stepTwReuseNotBind(lab.Quiet(), labtest.Env.Private)
	require.NoError(t, err)
	assert.Contains(t, []string{"1", "2"}, reuse, "tcp_tw_reuse is on")
	assert.ErrorIs(t, r.Restart.Err, unix.EADDRINUSE)
	assert.Equal(t, "bind", r.Restart.Call)
	assert.True(t, r.StillListed)
}
