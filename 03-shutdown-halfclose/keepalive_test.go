//go:build linux

package main

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"socklab/internal/labtest"
	"socklab/internal/sockdiag"
)

// ---- H. TCP keepalive

// A peer that vanishes in silence is found by keepalive: after TCP_KEEPIDLE (1 s) the kernel
// sends a probe every TCP_KEEPINTVL (1 s); after TCP_KEEPCNT (3) unanswered probes it drops
// the connection and the application's next read() fails with ETIMEDOUT.
//
// Not parallel: part H makes a veth pair in the package's namespace, and netlab names the
// pair by a per-process counter, so the demo run by TestDemoRunsEveryPart (another process
// in the same namespace) must not make its own at the same time. About 4 s; skipped with
// -short.
func TestKeepaliveDetectsDeadPeer(t *testing.T) {
	labtest.NeedPrivate(t)
	if testing.Short() {
		t.Skip("waits about 4 s for three keepalive probes (-short)")
	}
	r, err := keepalive(quiet())
	require.NoError(t, err)

	// The sysctls: per namespace, kernel defaults in a new one, written only there.
	assert.Equal(t, map[string]string{
		"net.ipv4.tcp_keepalive_time":   "7200",
		"net.ipv4.tcp_keepalive_intvl":  "75",
		"net.ipv4.tcp_keepalive_probes": "9",
	}, r.Defaults, "a new namespace starts with the kernel's defaults")
	for _, s := range keepaliveSysctls {
		assert.Equal(t, s.value, r.Set[s.name], s.name)
	}

	// SO_KEEPALIVE alone arms the timer from tcp_keepalive_time (600 s here); the per-socket
	// options override it (1 s).
	assertEnd(t, r.WithSysctls, sockdiag.Established, "client after SO_KEEPALIVE")
	assert.Equal(t, sockdiag.TimerKeepalive, r.WithSysctls.Timer, r.WithSysctls.String())
	assert.Greater(t, r.WithSysctls.Expires, 590*time.Second, r.WithSysctls.String())
	assert.LessOrEqual(t, r.WithSysctls.Expires, 600*time.Second, r.WithSysctls.String())
	assert.Equal(t, sockdiag.TimerKeepalive, r.WithOptions.Timer, r.WithOptions.String())
	assert.LessOrEqual(t, r.WithOptions.Expires, keepIdle*time.Second, r.WithOptions.String())

	// The dead side never learned anything.
	assertEnd(t, r.ServerAfterKill, sockdiag.Established, "the server's end after its address went")

	// The probes, as the kernel counted them: sock_diag's retransmit count on the keepalive
	// timer and TCP_INFO's tcpi_probes agree, and rise 0, 1, 2, 3.
	var counts []int
	for _, p := range r.Probes {
		counts = append(counts, int(p.Diag.Retransmits))
		assert.Equal(t, sockdiag.TimerKeepalive, p.Diag.Timer, "probing at %v: %v", p.At, p.Diag)
		// Read one after the other, so a probe may fall between the two readings.
		assert.LessOrEqual(t, p.Diag.Retransmits, p.InfoProbes, "TCP_INFO agrees with sock_diag at %v", p.At)
		assert.LessOrEqual(t, p.InfoProbes, p.Diag.Retransmits+1, "TCP_INFO agrees with sock_diag at %v", p.At)
		assertEnd(t, p.Diag, sockdiag.Established, "while probing")
	}
	// Sampled every 20 ms while each value lasts 1 s: every value is seen, ending at 3.
	require.NotEmpty(t, counts)
	assert.LessOrEqual(t, counts[0], 1, "the first sample comes before the second probe: %v", counts)
	for i := 1; i < len(counts); i++ {
		assert.Equal(t, counts[i-1]+1, counts[i], "the probe count rises one at a time: %v", counts)
	}
	assert.Equal(t, keepCnt, counts[len(counts)-1], "TCP_KEEPCNT probes, then the end: %v", counts)
	assert.EqualValues(t, keepCnt, r.KeepaliveSent, "TcpExt TCPKeepAlive: probes sent in the client's namespace")
	// Expected after idle + cnt × intvl = 4 s; a wide range, since only the order matters.
	assert.GreaterOrEqual(t, r.Found, 3*time.Second, "found after the idle time and the probes")
	assert.Less(t, r.Found, keepaliveDeadline)

	// What the application sees.
	assert.ErrorIs(t, r.ReadErr, unix.ETIMEDOUT, "read() after the kernel gave up")
	assert.Equal(t, 0, r.SoErrorAfter, "the error is reported once")
	assert.Equal(t, 0, r.SecondRead, "then end of file")
	assert.Equal(t, sockdiag.Close, r.FDState)
	assertEnd(t, r.Gone, Gone, "the client's socket in sock_diag")
}

// Without the namespace the part says so in one line and the program goes on.
func TestKeepalivePartSkipsInOneLineWithHost(t *testing.T) {
	t.Parallel()
	out, errOut, code := labtest.RunProgram(t, nil, "keepalive", "-host")
	require.Equal(t, 0, code, "stderr: %s", errOut)
	_, part, found := strings.Cut(out, "== H. ")
	require.True(t, found, out)
	var skipped []string
	for _, l := range strings.Split(part, "\n") {
		if strings.Contains(l, "skipped") || strings.Contains(l, "namespace") {
			skipped = append(skipped, l)
		}
	}
	require.Len(t, skipped, 1, "one line about the skip:\n%s", out)
	assert.Contains(t, skipped[0], "skipped: keepalive: ")
	assert.NotContains(t, out, "SO_KEEPALIVE")
}
