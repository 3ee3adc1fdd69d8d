//go:build linux

package main

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"socklab/internal/labtest"
	"socklab/internal/sockdiag"
)

func runLifecycleOn(t *testing.T, addr netip.AddrPort) lifecycleStates {
	t.Helper()
	st, err := lifecycle(narrator(t), addr)
	require.NoError(t, err)
	return st
}

// socket() and bind() leave a TCP socket in CLOSE; listen() moves it to LISTEN.
func TestSocketAndBindLeaveCloseListenMakesListen(t *testing.T) {
	t.Parallel()
	st := runLifecycleOn(t, loopbackAny)
	assert.Equal(t, sockdiag.Close, st.AfterSocket)
	assert.Equal(t, sockdiag.Close, st.AfterBind)
	assert.Equal(t, sockdiag.Listen, st.AfterListen)
	assert.NotZero(t, st.Listener.Port(), "bind to port 0 picked a port")
}

// connect() returns with both ends ESTABLISHED before accept(): the server's socket waits in
// the accept queue with no fd.
func TestConnectCompletesBeforeAccept(t *testing.T) {
	t.Parallel()
	st := runLifecycleOn(t, loopbackAny)
	assert.Equal(t, sockdiag.Established, st.ClientAfterConnect)
	assert.Equal(t, sockdiag.Established, st.ServerBeforeAccept)
	assert.False(t, st.ServerChildHadFD, "no fd refers to a connection not yet accepted")
	assert.EqualValues(t, 1, st.AcceptQueueBeforeAccept, "listener Recv-Q")
}

// accept() returns a new fd for the connection; the listening fd stays LISTEN.
func TestAcceptReturnsNewFDWhileListenerStaysListen(t *testing.T) {
	t.Parallel()
	st := runLifecycleOn(t, loopbackAny)
	assert.NotEqual(t, st.ListenFD, st.AcceptedFD)
	assert.Equal(t, sockdiag.Listen, st.ListenerAfterAccept)
	assert.Equal(t, sockdiag.Established, st.ServerAfterAccept)
	assert.Equal(t, st.Client, st.AcceptedPeer, "accept reports the client's address")
}

// Bytes written on one end are read on the other; after the peer closes, read() returns 0
// and the server is in CLOSE_WAIT.
func TestReadReturnsZeroAtEOF(t *testing.T) {
	t.Parallel()
	st := runLifecycleOn(t, loopbackAny)
	assert.Equal(t, "hello", st.Received)
	assert.Equal(t, 0, st.ReadAtEOF)
	assert.Equal(t, sockdiag.CloseWait, st.ServerAfterPeerClose)
}

// The whole lifecycle works the same over IPv6.
func TestLifecycleOverIPv6(t *testing.T) {
	t.Parallel()
	st := runLifecycleOn(t, netip.AddrPortFrom(netip.IPv6Loopback(), 0))
	assert.True(t, st.Listener.Addr().Is6())
	assert.Equal(t, sockdiag.Listen, st.AfterListen)
	assert.Equal(t, sockdiag.Established, st.ServerBeforeAccept)
	assert.Equal(t, sockdiag.Listen, st.ListenerAfterAccept)
	assert.Equal(t, "hello", st.Received)
	assert.Equal(t, 0, st.ReadAtEOF)
}

func TestConnectWithoutListenerIsRefused(t *testing.T) {
	t.Parallel()
	err, setup := connectRefused(narrator(t))
	require.NoError(t, setup)
	assert.ErrorIs(t, err, unix.ECONNREFUSED)
}

func TestBindToPortInUseFailsEADDRINUSE(t *testing.T) {
	t.Parallel()
	err, setup := bindInUse(narrator(t))
	require.NoError(t, setup)
	assert.ErrorIs(t, err, unix.EADDRINUSE)
}

// Below net.ipv4.ip_unprivileged_port_start, bind() needs CAP_NET_BIND_SERVICE: without it
// EACCES; with it (root, or root of our own user namespace) it succeeds.
func TestBindBelow1024NeedsCapability(t *testing.T) {
	t.Parallel()
	f, err := bindLowPort(narrator(t))
	require.NoError(t, err)
	require.Equal(t, "1024", f.UnprivilegedPortStart, "this test expects the default threshold")
	if f.DroppedCapability {
		// We held the capability over this namespace (root, or in our own namespace).
		assert.NoError(t, f.WithCapability)
		assert.ErrorIs(t, f.WithoutCapability, unix.EACCES)
	} else {
		// An ordinary user, or a capability of a user namespace that does not own this
		// network namespace.
		assert.ErrorIs(t, f.WithCapability, unix.EACCES)
	}
	if labtest.Env.Private {
		assert.True(t, f.DroppedCapability, "root of our own namespace holds the capability")
	}
}

// A dual-stack IPv6 listener on [::] accepts an IPv4 client, which it sees as
// ::ffff:127.0.0.1.
func TestDualStackListenerAcceptsIPv4AsMapped(t *testing.T) {
	t.Parallel()
	labtest.NeedPrivate(t) // binds the wildcard address
	f, err := dualStack(narrator(t), false)
	require.NoError(t, err)
	require.NoError(t, f.ConnectErr)
	assert.Equal(t, netip.MustParseAddr("::ffff:127.0.0.1"), f.AcceptedPeer.Addr())
	assert.Equal(t, unix.AF_INET6, f.KernelFamily, "the server's socket is an IPv6 socket")
	assert.True(t, f.KernelRemote.Addr().Is4In6(), "kernel shows the peer as %v", f.KernelRemote)
}

// With IPV6_V6ONLY=1 the same listener refuses the IPv4 client.
func TestV6OnlyListenerRefusesIPv4(t *testing.T) {
	t.Parallel()
	labtest.NeedPrivate(t)
	f, err := dualStack(narrator(t), true)
	require.NoError(t, err)
	assert.ErrorIs(t, f.ConnectErr, unix.ECONNREFUSED)
}
