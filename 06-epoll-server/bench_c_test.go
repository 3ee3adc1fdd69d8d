//go:build linux

package main

import (
	"fmt"
	"math"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"socklab/internal/labtest"
)

// cEchoBinary is the C reference server (testdata/epoll_echo.c) once a benchmark has compiled
// it; startBenchServer starts it for the server name "C".
var cEchoBinary string

// BenchmarkVersusC answers the chapter's title, "as fast as C": the Go epoll server (inline,
// level-triggered, the default `server`) against the same server written in C
// (testdata/epoll_echo.c: the same system calls in the same order, compiled with cc -O2), with
// the stdlib server from BenchmarkVersusStdlib measured in the same rounds as the yardstick of
// the CPU target. Same pinning, rotation and medians as BenchmarkVersusStdlib. Without
// a C compiler it skips.
//
//	go test -run '^$' -bench VersusC -benchtime 1x -v ./06-epoll-server/
//
// SOCKLAB_BENCH_ROUNDS (default 3), SOCKLAB_BENCH_SECONDS (default 1) and SOCKLAB_BENCH_IDLE
// (default 5000) change the effort.
func BenchmarkVersusC(b *testing.B) {
	cEchoBinary = labtest.CompileC(b, "epoll_echo")
	defer func() { cEchoBinary = "" }()
	rounds, seconds, idle := benchEffort()
	serverCPU, clientCPU := benchCPUs()
	servers := []string{"epoll", "C", "stdlib"}
	type key struct {
		server      string
		conns, size int
		rate        float64 // 0: full speed
	}
	samples := map[key][]measurement{}
	shared := map[string][]measurement{}
	memory := map[string][]idleMeasurement{}
	sizes := []int{64, 4096}
	pacedRate := map[int]float64{} // by size
	for range b.N {
		for round := range rounds {
			for _, conns := range []int{50, 1000} {
				for _, size := range sizes {
					for i := range servers {
						srv := servers[(i+round)%len(servers)] // rotate who goes first
						k := key{srv, conns, size, 0}
						samples[k] = append(samples[k], measure(b, srv, serverCPU, clientCPU, conns, size, seconds))
					}
				}
			}
			for i := range servers {
				srv := servers[(i+round)%len(servers)]
				shared[srv] = append(shared[srv], measure(b, srv, clientCPU, clientCPU, 50, 64, seconds))
				memory[srv] = append(memory[srv], measureIdle(b, srv, serverCPU, clientCPU, idle))
			}
		}
		// Paced at half the slowest server's full-speed rate, as BenchmarkVersusStdlib's clean
		// comparison: every server has room to spare and does the same work.
		for _, size := range sizes {
			slowest := math.Inf(1)
			for _, srv := range servers {
				slowest = min(slowest, median(samples[key{srv, 50, size, 0}]).perSecond)
			}
			pacedRate[size] = math.Round(pacedShares[0]*slowest/1000) * 1000
			for round := range rounds {
				for i := range servers {
					srv := servers[(i+round)%len(servers)]
					k := key{srv, 50, size, pacedRate[size]}
					samples[k] = append(samples[k], measureAt(b, srv, serverCPU, clientCPU, 50, size, seconds, pacedRate[size]))
				}
			}
		}
	}

	var t strings.Builder
	fmt.Fprintf(&t, "\n%d rounds × %d s per measurement, medians; server on CPU %s, load on CPU %s (%d CPUs)\n\n",
		rounds, seconds, serverCPU, clientCPU, runtime.NumCPU())
	fmt.Fprintln(&t, "| conns | load | size | Go epoll rt/s | C rt/s | stdlib rt/s | Go epoll CPU s/M rt | C CPU s/M rt | stdlib CPU s/M rt | Go ÷ C | C ÷ stdlib | Go ÷ stdlib |")
	fmt.Fprintln(&t, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	goOverC := map[string]float64{}
	cOverStd := map[string]float64{}
	row := func(conns, size int, rate float64) {
		g, c, s := median(samples[key{"epoll", conns, size, rate}]), median(samples[key{"C", conns, size, rate}]), median(samples[key{"stdlib", conns, size, rate}])
		load := "full speed"
		if rate > 0 {
			load = fmt.Sprintf("paced, %.0f rt/s", rate)
		}
		name := fmt.Sprintf("%dconns-%dB", conns, size)
		if rate > 0 {
			name += "-paced"
		}
		goOverC[name], cOverStd[name] = g.cpuPerMillion/c.cpuPerMillion, c.cpuPerMillion/s.cpuPerMillion
		fmt.Fprintf(&t, "| %d | %s | %d B | %.0f | %.0f | %.0f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f |\n",
			conns, load, size, g.perSecond, c.perSecond, s.perSecond, g.cpuPerMillion, c.cpuPerMillion, s.cpuPerMillion,
			goOverC[name], cOverStd[name], g.cpuPerMillion/s.cpuPerMillion)
	}
	for _, conns := range []int{50, 1000} {
		for _, size := range sizes {
			row(conns, size, 0)
		}
	}
	for _, size := range sizes {
		row(50, size, pacedRate[size])
	}
	g, c, s := median(shared["epoll"]), median(shared["C"]), median(shared["stdlib"])
	fmt.Fprintf(&t, "\nOne shared core (server and load both on CPU %s), 50 conns × 64 B: Go epoll %.0f rt/s, C %.0f rt/s, stdlib %.0f rt/s; Go ÷ C %.2f\n",
		clientCPU, g.perSecond, c.perSecond, s.perSecond, g.perSecond/c.perSecond)
	gm, cm, sm := medianIdle(memory["epoll"]), medianIdle(memory["C"]), medianIdle(memory["stdlib"])
	fmt.Fprintf(&t, "%d idle connections (RSS growth per connection, from %d to %d): Go epoll %.0f B, C %.0f B, stdlib %.0f B\n",
		idle, idle/2, idle, gm.bytesPerConn, cm.bytesPerConn, sm.bytesPerConn)
	fmt.Fprintf(&t, "\nGo epoll ÷ C, CPU per round trip at 50 conns: 64 B %.2f×, 4 KiB %.2f× (paced: %.2f×, %.2f×)\n",
		goOverC["50conns-64B"], goOverC["50conns-4096B"], goOverC["50conns-64B-paced"], goOverC["50conns-4096B-paced"])
	fmt.Fprintf(&t, "The issue's CPU target (≤ 0.85× stdlib at 50 conns) met by C itself? full speed: 64 B %.2f× (%s), 4 KiB %.2f× (%s); paced: 64 B %.2f× (%s), 4 KiB %.2f× (%s)\n",
		cOverStd["50conns-64B"], verdict(cOverStd["50conns-64B"] <= 0.85), cOverStd["50conns-4096B"], verdict(cOverStd["50conns-4096B"] <= 0.85),
		cOverStd["50conns-64B-paced"], verdict(cOverStd["50conns-64B-paced"] <= 0.85), cOverStd["50conns-4096B-paced"], verdict(cOverStd["50conns-4096B-paced"] <= 0.85))
	b.Log(t.String())
	for name, r := range goOverC {
		b.ReportMetric(r, "cpu-go/c-"+name)
	}
	b.ReportMetric(g.perSecond/c.perSecond, "rt/s-go/c-shared-core")
	b.ReportMetric(0, "ns/op")
}

// The C reference server is a fair yardstick only if it is as correct as the Go server: it
// echoes every byte under load and through backpressure (the kernel's queues show it holding
// output; the stream then arrives byte for byte, up to its FIN), and SIGTERM ends it with
// status 0.
func TestCReferenceServerEchoesExactly(t *testing.T) {
	t.Parallel()
	p := startCommand(t, exec.Command(labtest.CompileC(t, "epoll_echo"), "0"))
	for _, size := range []int{64, 4096} {
		res, err := RunLoad(LoadConfig{Addr: p.addr, Conns: 50, Size: size, Duration: 100 * time.Millisecond})
		require.NoError(t, err)
		assert.Positive(t, res.RoundTrips, "%d B", size)
		assert.Zero(t, res.Errors, "%d B", size)
	}
	fd, _, settled := backpressure(t, p.addr, 64<<10)
	total := settled.sent + 1<<20
	echoed, err := exchangeUntilEOF(fd, settled.sent, total, 30*time.Second)
	require.NoError(t, err)
	assert.Equal(t, total, echoed, "every byte sent comes back, then EOF")
	assert.Equal(t, 0, p.stop(t, syscall.SIGTERM))
}
