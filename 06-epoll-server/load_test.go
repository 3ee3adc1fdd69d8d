//go:build linux

package main

import (
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"socklab/internal/labtest"
	"socklab/internal/sockdiag"
)

// The load generator's ping-pong completes round trips without errors against every mode,
// 64 B and 4 KiB (counts, not speeds: speeds live in the benchmarks).
func TestLoadGeneratorPingPong(t *testing.T) {
	t.Parallel()
	for _, cfg := range []ServerConfig{{}, {EdgeTriggered: true}, {Workers: 2}} {
		for _, size := range []int{64, 4096} {
			t.Run(fmt.Sprintf("%s/%dB", cfg.Mode(), size), func(t *testing.T) {
				t.Parallel()
				s := startServer(t, cfg)
				res, err := RunLoad(LoadConfig{Addr: s.Addr, Conns: 8, Size: size, Duration: 100 * time.Millisecond})
				require.NoError(t, err)
				assert.Positive(t, res.RoundTrips)
				assert.Zero(t, res.Errors)
				assert.Positive(t, res.P50us)
				assert.GreaterOrEqual(t, res.P99us, res.P50us)
			})
		}
	}
}

// Idle mode holds its connections open: the kernel shows each with a server-side fd.
func TestLoadGeneratorHoldsIdleConnections(t *testing.T) {
	t.Parallel()
	s := startServer(t, ServerConfig{})
	const conns = 100
	done := make(chan error, 1)
	ready := make(chan int, 1)
	stop := make(chan struct{})
	var stopOnce sync.Once
	halt := func() { stopOnce.Do(func() { close(stop) }) }
	t.Cleanup(halt) // also when the test fails before it stops the load itself
	go func() {
		_, err := RunLoad(LoadConfig{Addr: s.Addr, Conns: conns, Size: 1, Duration: time.Minute, Idle: true,
			Ready: func(n int) { ready <- n }, Stop: stopSignal(stop)})
		done <- err
	}()
	// RunLoad calls Ready only once every connection is open; if it fails first, it returns.
	select {
	case n := <-ready:
		require.Equal(t, conns, n)
	case err := <-done:
		t.Fatalf("RunLoad returned before its connections were ready: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatalf("RunLoad opened no %d connections within 20 s", conns)
	}
	labtest.WaitFor(t, 10*time.Second, "the server to hold every idle connection", func() (bool, string) {
		socks, err := sockdiag.Dump(sockdiag.TCP, sockdiag.Filter{Local: s.Addr, States: []sockdiag.State{sockdiag.Established}})
		n := 0
		for _, so := range socks {
			if so.HasFD() {
				n++
			}
		}
		return err == nil && n == conns, fmt.Sprint(n, err)
	})
	halt()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(20 * time.Second):
		t.Fatal("RunLoad did not return within 20 s of Stop")
	}
}

// The load role prints JSON the benchmark parses.
func TestLoadRoleJSON(t *testing.T) {
	t.Parallel()
	s := startServer(t, ServerConfig{})
	out, stderr, code := labtest.RunProgram(t, nil, "load", "-addr", s.Addr.String(), "-conns", "2", "-duration", "50ms", "-json")
	require.Equal(t, 0, code, stderr)
	var res LoadResult
	require.NoError(t, json.Unmarshal([]byte(out), &res))
	assert.Equal(t, 2, res.Conns)
	assert.Positive(t, res.RoundTrips)
	assert.Zero(t, res.Errors)
}
