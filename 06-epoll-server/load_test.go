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
		socks, err := serverEnds(s.Addr)
		n := heldByFD(socks)
		return err == nil && n == conns, fmt.Sprint(n, err)
	})
	halt()
	awaitLoad(t, done, 20*time.Second)
}

// awaitLoad waits at most within for RunLoad's result on done and requires it to be nil.
func awaitLoad(t *testing.T, done <-chan error, within time.Duration) {
	t.Helper()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(within):
		t.Fatalf("RunLoad did not return within %v", within)
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

// A paced load keeps to its rate, as the kernel counts it: the server's sockets
// (tcpi_bytes_received, TCP_INFO through sock_diag) take 300 messages no faster than
// 1 000 round trips/s allows, where an unpaced load sends that many within milliseconds.
func TestLoadGeneratorKeepsToItsRate(t *testing.T) {
	t.Parallel()
	s := startServer(t, ServerConfig{})
	const conns, size, rate, messages = 10, 100, 1000.0, 300
	done := make(chan error, 1)
	go func() {
		_, err := RunLoad(LoadConfig{Addr: s.Addr, Conns: conns, Size: size, Duration: 1500 * time.Millisecond, Rate: rate})
		done <- err
	}()
	// received sums what the server's end of each connection has received so far.
	received := func() (open int, bytes uint64, err error) {
		socks, err := serverEnds(s.Addr)
		for _, so := range socks {
			if so.Info != nil {
				open, bytes = open+1, bytes+so.Info.Bytes_received
			}
		}
		return open, bytes, err
	}
	var first uint64
	labtest.WaitFor(t, 10*time.Second, "the server's end of every connection", func() (bool, string) {
		open, bytes, err := received()
		first = bytes
		return err == nil && open == conns, fmt.Sprint(open, " open, ", err)
	})
	began := time.Now()
	labtest.WaitFor(t, 10*time.Second, fmt.Sprint(messages, " more messages"), func() (bool, string) {
		_, bytes, err := received()
		return err == nil && bytes-first >= messages*size, fmt.Sprint(bytes-first, " bytes, ", err)
	})
	// On its schedule each connection is at most one message ahead of any window, so 300
	// messages take at least (300-10)/1000 s = 290 ms; less margin for the first sample.
	took := time.Since(began)
	assert.GreaterOrEqual(t, took, 250*time.Millisecond, "paced at %v round trips/s", rate)
	awaitLoad(t, done, 30*time.Second) // its duration is 1.5 s
}
