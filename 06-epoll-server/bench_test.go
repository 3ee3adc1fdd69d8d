//go:build linux

package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"math"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"socklab/internal/labtest"
)

// BenchmarkVersusStdlib is the chapter's performance claim: the epoll server (inline,
// level-triggered) against the idiomatic Go server (stdserver: goroutine per connection,
// io.Copy), both run as separate processes pinned with taskset, the load generator pinned to
// another core. Rounds alternate the two servers so that a noisy neighbour hurts both alike;
// the table reports medians. Ratios are epoll ÷ stdlib from the same run. At 50 connections
// it also paces the load (load -rate) to the same rate for both servers, half and three
// quarters of the slower one's full-speed rate: at full speed both servers use a full core,
// so their CPU per round trip is mostly one over the rate each reached.
//
//	go test -run '^$' -bench VersusStdlib -benchtime 1x ./06-epoll-server/
//
// SOCKLAB_BENCH_ROUNDS (default 3), SOCKLAB_BENCH_SECONDS (per measurement, default 1) and
// SOCKLAB_BENCH_IDLE (idle connections, default 5000) change the effort.
func BenchmarkVersusStdlib(b *testing.B) {
	rounds, seconds, idle := benchEffort()
	serverCPU, clientCPU := benchCPUs()
	servers := []string{"epoll", "stdlib"}
	type key struct {
		server      string
		conns, size int
	}
	samples := map[key][]measurement{}
	shared := map[string][]measurement{}
	memory := map[string][]idleMeasurement{}
	type pacedKey struct {
		size  int
		share float64
	}
	paced := map[string]map[pacedKey][]measurement{"epoll": {}, "stdlib": {}}
	pacedRate := map[pacedKey]float64{}
	for range b.N {
		for round := range rounds {
			for _, conns := range []int{1, 50, 1000} {
				for _, size := range []int{64, 4096} {
					these := servers
					if conns == 50 { // where the CPU target is: the splicing echo too
						these = []string{"epoll", "stdlib", "epoll -splice"}
					}
					for i := range these {
						srv := these[(i+round)%len(these)] // rotate who goes first
						m := measure(b, srv, serverCPU, clientCPU, conns, size, seconds)
						samples[key{srv, conns, size}] = append(samples[key{srv, conns, size}], m)
					}
				}
			}
			for i := range servers {
				srv := servers[(i+round)%2]
				shared[srv] = append(shared[srv], measure(b, srv, clientCPU, clientCPU, 50, 64, seconds))
			}
			for i := range servers {
				srv := servers[(i+round)%2]
				memory[srv] = append(memory[srv], measureIdle(b, srv, serverCPU, clientCPU, idle))
			}
		}
		// Paced: both servers offered the same round trips per second, a share of the
		// slower one's full-speed median, so that both have room to spare.
		for _, size := range []int{64, 4096} {
			full := min(median(samples[key{"epoll", 50, size}]).perSecond, median(samples[key{"stdlib", 50, size}]).perSecond)
			for _, share := range pacedShares {
				rate := math.Round(share*full/1000) * 1000
				k := pacedKey{size, share}
				pacedRate[k] = rate
				for round := range rounds {
					for i := range servers {
						srv := servers[(i+round)%2]
						paced[srv][k] = append(paced[srv][k], measureAt(b, srv, serverCPU, clientCPU, 50, size, seconds, rate))
					}
				}
			}
		}
	}

	var t strings.Builder
	fmt.Fprintf(&t, "\n%d rounds × %d s per measurement, medians; server on CPU %s, load on CPU %s (%d CPUs)\n\n",
		rounds, seconds, serverCPU, clientCPU, runtime.NumCPU())
	fmt.Fprintln(&t, "| conns | size | epoll rt/s | stdlib rt/s | epoll p50/p99 µs | stdlib p50/p99 µs | epoll CPU s/M rt | stdlib CPU s/M rt | CPU ratio |")
	fmt.Fprintln(&t, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	type barRow struct {
		label string
		value float64
	}
	var bars []barRow
	cpuRatio50 := map[int]float64{} // by message size
	for _, conns := range []int{1, 50, 1000} {
		for _, size := range []int{64, 4096} {
			e, s := median(samples[key{"epoll", conns, size}]), median(samples[key{"stdlib", conns, size}])
			ratio := e.cpuPerMillion / s.cpuPerMillion
			if conns == 50 {
				cpuRatio50[size] = ratio
			}
			fmt.Fprintf(&t, "| %d | %d B | %.0f | %.0f | %.0f / %.0f | %.0f / %.0f | %.2f | %.2f | %.2f |\n",
				conns, size, e.perSecond, s.perSecond, e.p50, e.p99, s.p50, s.p99, e.cpuPerMillion, s.cpuPerMillion, ratio)
			label := fmt.Sprintf("%4d conns %4d B", conns, size)
			if conns > 1 { // one connection costs a sleep and a wake-up per round trip: see the table
				bars = append(bars, barRow{label + " epoll ", e.cpuPerMillion}, barRow{strings.Repeat(" ", len(label)) + " stdlib", s.cpuPerMillion})
			}
		}
	}
	fmt.Fprintf(&t, "\nServer CPU seconds per million round trips, 50 and 1000 connections (longest bar = %d blocks):\n\n", chartWidth)
	maxValue := 0.0
	for _, r := range bars {
		maxValue = max(maxValue, r.value)
	}
	for _, r := range bars {
		fmt.Fprintf(&t, "%s %s %.2f\n", r.label, bar(r.value, maxValue), r.value)
	}
	splice50 := map[int]float64{}
	fmt.Fprintf(&t, "\nepoll -splice (echo by splice(2) through a pipe), 50 conns, against the same stdlib medians:\n")
	for _, size := range []int{64, 4096} {
		p, s := median(samples[key{"epoll -splice", 50, size}]), median(samples[key{"stdlib", 50, size}])
		splice50[size] = p.cpuPerMillion / s.cpuPerMillion
		fmt.Fprintf(&t, "  %4d B: %.0f rt/s, p50/p99 %.0f / %.0f µs, %.2f CPU s/M rt, CPU ratio %.2f (without -splice %.2f)\n",
			size, p.perSecond, p.p50, p.p99, p.cpuPerMillion, splice50[size], cpuRatio50[size])
	}
	if e := median(samples[key{"epoll", 50, 64}]); e.coreBusyTicks > 0 {
		fmt.Fprintf(&t, "\nSoftirq share of the server's core, 50 conns (kernel's /proc/stat ticks, summed over the rounds;\n"+
			"on loopback a send runs the client's TCP input there, and the tick is charged to the server):\n")
		for _, size := range []int{64, 4096} {
			e, s := median(samples[key{"epoll", 50, size}]), median(samples[key{"stdlib", 50, size}])
			p := median(samples[key{"epoll -splice", 50, size}])
			outside := func(m measurement) float64 { return m.cpuPerMillion * (1 - m.softirqShare()) }
			fmt.Fprintf(&t, "  %4d B: epoll %.0f %%, stdlib %.0f %%, epoll -splice %.0f %%; CPU ratio outside softirq %.2f (-splice %.2f)\n",
				size, 100*e.softirqShare(), 100*s.softirqShare(), 100*p.softirqShare(), outside(e)/outside(s), outside(p)/outside(s))
		}
	}
	es, ss := median(shared["epoll"]), median(shared["stdlib"])
	sharedRatio := es.perSecond / ss.perSecond
	fmt.Fprintf(&t, "\nOne shared core (server and load both on CPU %s), 50 conns × 64 B: epoll %.0f rt/s, stdlib %.0f rt/s, ratio %.2f\n",
		clientCPU, es.perSecond, ss.perSecond, sharedRatio)
	fmt.Fprintf(&t, "  CPU s/M rt there: epoll server %.2f + its load %.2f, stdlib server %.2f + its load %.2f\n",
		es.cpuPerMillion, es.loadCPUPerMillion, ss.cpuPerMillion, ss.loadCPUPerMillion)
	fmt.Fprintf(&t, "\nPaced, 50 conns: both servers offered the same round trips/s, a share of the slower one's full-speed rate above:\n")
	pacedRatio := map[pacedKey]float64{}
	for _, size := range []int{64, 4096} {
		for _, share := range pacedShares {
			k := pacedKey{size, share}
			e, s := median(paced["epoll"][k]), median(paced["stdlib"][k])
			pacedRatio[k] = e.cpuPerMillion / s.cpuPerMillion
			kept := ""
			if min(e.perSecond, s.perSecond) < 0.97*pacedRate[k] {
				kept = " (a server fell more than 3 % short of the offered rate)"
			}
			fmt.Fprintf(&t, "  %4d B at %2.0f %% (%.0f rt/s offered): epoll %.0f rt/s, %.2f CPU s/M rt; stdlib %.0f rt/s, %.2f CPU s/M rt; CPU ratio %.2f%s\n",
				size, 100*share, pacedRate[k], e.perSecond, e.cpuPerMillion, s.perSecond, s.cpuPerMillion, pacedRatio[k], kept)
		}
	}
	em, sm := medianIdle(memory["epoll"]), medianIdle(memory["stdlib"])
	memRatio := em.bytesPerConn / sm.bytesPerConn
	fmt.Fprintf(&t, "%d idle connections: epoll %.0f B and %.2f fds per connection, stdlib %.0f B and %.2f fds per connection (RSS growth from %d to %d), ratio %.3f\n",
		idle, em.bytesPerConn, em.fdsPerConn, sm.bytesPerConn, sm.fdsPerConn, idle/2, idle, memRatio)
	fmt.Fprintf(&t, "\nTargets: CPU/rt at 50 conns ≤ 0.85× → 64 B %.2f× (%s), 4 KiB %.2f× (%s; -splice %.2f×, %s); shared-core rt/s ≥ 1.1× → %.2f× (%s); idle memory ≤ 0.10× → %.3f× (%s)\n",
		cpuRatio50[64], verdict(cpuRatio50[64] <= 0.85), cpuRatio50[4096], verdict(cpuRatio50[4096] <= 0.85),
		splice50[4096], verdict(splice50[4096] <= 0.85), sharedRatio, verdict(sharedRatio >= 1.1), memRatio, verdict(memRatio <= 0.10))
	fmt.Fprintf(&t, "At the same paced rate, CPU/rt at 50 conns ≤ 0.85× → 64 B %s, 4 KiB %s\n",
		pacedVerdicts(pacedRatio[pacedKey{64, pacedShares[0]}], pacedRatio[pacedKey{64, pacedShares[1]}]),
		pacedVerdicts(pacedRatio[pacedKey{4096, pacedShares[0]}], pacedRatio[pacedKey{4096, pacedShares[1]}]))
	b.Log(t.String())
	b.ReportMetric(cpuRatio50[64], "cpu-ratio-50conns-64B")
	b.ReportMetric(cpuRatio50[4096], "cpu-ratio-50conns-4KiB")
	b.ReportMetric(splice50[4096], "cpu-ratio-50conns-4KiB-splice")
	b.ReportMetric(sharedRatio, "rt/s-ratio-shared-core")
	b.ReportMetric(memRatio, "idle-mem-ratio")
	for k, r := range pacedRatio {
		b.ReportMetric(r, fmt.Sprintf("cpu-ratio-paced%.0fpct-%dB", 100*k.share, k.size))
	}
	b.ReportMetric(0, "ns/op")
}

// pacedShares are the paced loads of BenchmarkVersusStdlib, as shares of the slower
// server's full-speed rate: half, and three quarters.
var pacedShares = []float64{0.5, 0.75}

// pacedVerdicts gives the paced CPU ratios at both shares and whether each is within 0.85×.
func pacedVerdicts(half, threeQuarters float64) string {
	return fmt.Sprintf("%.2f× at 50 %% (%s), %.2f× at 75 %% (%s)", half, verdict(half <= 0.85), threeQuarters, verdict(threeQuarters <= 0.85))
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT met"
}

// chartWidth is the length of the longest bar of a chart.
const chartWidth = 40

// bar draws v as a bar of blocks, scaled so that maxValue fills chartWidth.
func bar(v, maxValue float64) string {
	if maxValue <= 0 {
		return ""
	}
	n := int(v/maxValue*chartWidth + 0.5)
	return strings.Repeat("█", max(n, 1))
}

// benchEffort is how hard the benchmarks work: SOCKLAB_BENCH_ROUNDS (default 3),
// SOCKLAB_BENCH_SECONDS per measurement (default 1) and SOCKLAB_BENCH_IDLE idle connections
// (default 5000).
func benchEffort() (rounds, seconds, idle int) {
	return envInt("SOCKLAB_BENCH_ROUNDS", 3), envInt("SOCKLAB_BENCH_SECONDS", 1), envInt("SOCKLAB_BENCH_IDLE", 5000)
}

// benchCPUs are the cores the server and the load generator are pinned to: their own, 1 and
// 0, or both 0 on a machine with one CPU.
func benchCPUs() (serverCPU, clientCPU string) {
	if runtime.NumCPU() < 2 {
		return "0", "0"
	}
	return "1", "0"
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// measurement is one load run against one server process.
type measurement struct {
	perSecond, p50, p99 float64
	cpuPerMillion       float64 // server CPU seconds (user+system) per million round trips
	loadCPUPerMillion   float64 // the load generator's CPU seconds per million round trips
	switchesPerRT       float64 // server context switches (voluntary + involuntary) per round trip
	readsPerRT          float64 // server read-type system calls per round trip (/proc/PID/io syscr)
	// The server's core as /proc/stat counts it, in clock ticks: busy (user, nice, system,
	// irq, softirq, steal) and softirq alone. Zero when the server does not have a core of
	// its own. median sums them over the rounds instead: the kernel samples one category
	// per tick, and one round has only about 100 ticks.
	coreBusyTicks, coreSoftirqTicks float64
}

// softirqShare is the part of the server core's busy ticks spent in softirq.
func (m measurement) softirqShare() float64 {
	if m.coreBusyTicks == 0 {
		return 0
	}
	return m.coreSoftirqTicks / m.coreBusyTicks
}

func median(ms []measurement) measurement {
	pick := func(f func(measurement) float64) float64 {
		v := make([]float64, len(ms))
		for i, m := range ms {
			v[i] = f(m)
		}
		slices.Sort(v)
		if len(v) == 0 {
			return 0
		}
		return v[len(v)/2]
	}
	var busy, softirq float64
	for _, m := range ms {
		busy, softirq = busy+m.coreBusyTicks, softirq+m.coreSoftirqTicks
	}
	return measurement{
		coreBusyTicks:     busy,
		coreSoftirqTicks:  softirq,
		perSecond:         pick(func(m measurement) float64 { return m.perSecond }),
		p50:               pick(func(m measurement) float64 { return m.p50 }),
		p99:               pick(func(m measurement) float64 { return m.p99 }),
		cpuPerMillion:     pick(func(m measurement) float64 { return m.cpuPerMillion }),
		loadCPUPerMillion: pick(func(m measurement) float64 { return m.loadCPUPerMillion }),
		switchesPerRT:     pick(func(m measurement) float64 { return m.switchesPerRT }),
		readsPerRT:        pick(func(m measurement) float64 { return m.readsPerRT }),
	}
}

// startBenchServer starts the epoll server (inline, level-triggered, plus any flags), the
// stdlib one, or the C one (cEchoBinary).
func startBenchServer(b *testing.B, server, cpu string, flags ...string) *serverProcess {
	role := "server"
	switch server {
	case "stdlib":
		role = "stdserver"
	case "epoll -splice":
		flags = append([]string{"-splice"}, flags...)
	case "C":
		if cEchoBinary == "" || len(flags) > 0 {
			b.Fatalf("the C server needs cEchoBinary set and takes no flags (%q)", flags)
		}
		return startCommand(b, pinned(cpu, exec.Command(cEchoBinary, "0")))
	}
	return startProcess(b, cpu, append([]string{role, "-addr", "127.0.0.1:0"}, flags...)...)
}

// measure runs the load generator at full speed against a new server process.
func measure(b *testing.B, server, serverCPU, clientCPU string, conns, size, seconds int, flags ...string) measurement {
	return measureAt(b, server, serverCPU, clientCPU, conns, size, seconds, 0, flags...)
}

// measureAt is measure with the load paced to rate round trips per second (0: full speed).
func measureAt(b *testing.B, server, serverCPU, clientCPU string, conns, size, seconds int, rate float64, flags ...string) measurement {
	p := startBenchServer(b, server, serverCPU, flags...)
	defer p.stop(b, syscall.SIGTERM)
	cmd := pinned(clientCPU, labtest.ProgramCommand("load", "-addr", p.addr.String(), "-conns", strconv.Itoa(conns),
		"-size", strconv.Itoa(size), "-duration", fmt.Sprintf("%ds", seconds), "-rate", fmt.Sprint(rate), "-json"))
	// The load generator keeps its own GOMAXPROCS choice whatever a variant sets for the
	// server (the last entry wins; empty counts as unset).
	cmd.Env = append(cmd.Env, "GOMAXPROCS=")
	before, switchesBefore := cpuSeconds(b, p.cmd.Process.Pid), contextSwitches(p.cmd.Process.Pid)
	readsBefore := readCalls(p.cmd.Process.Pid)
	coreBefore := coreTicks(b, serverCPU, clientCPU)
	out, err := cmd.Output()
	coreAfter := coreTicks(b, serverCPU, clientCPU)
	after, switchesAfter := cpuSeconds(b, p.cmd.Process.Pid), contextSwitches(p.cmd.Process.Pid)
	readsAfter := readCalls(p.cmd.Process.Pid)
	if err != nil {
		b.Fatalf("load against %s: %v", server, err)
	}
	var res LoadResult
	if err := json.Unmarshal(out, &res); err != nil {
		b.Fatalf("load output %q: %v", out, err)
	}
	if res.Errors > 0 || res.RoundTrips == 0 {
		b.Fatalf("load against %s: %v", server, res)
	}
	loadCPU := (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds()
	return measurement{perSecond: res.PerSecond, p50: res.P50us, p99: res.P99us,
		cpuPerMillion:     (after - before) / float64(res.RoundTrips) * 1e6,
		loadCPUPerMillion: loadCPU / float64(res.RoundTrips) * 1e6,
		switchesPerRT:     float64(switchesAfter-switchesBefore) / float64(res.RoundTrips),
		readsPerRT:        (readsAfter - readsBefore) / float64(res.RoundTrips),
		coreBusyTicks:     coreAfter.busy - coreBefore.busy,
		coreSoftirqTicks:  coreAfter.softirq - coreBefore.softirq}
}

// cpuTicks are one CPU's counters from /proc/stat, in clock ticks (USER_HZ).
type cpuTicks struct{ busy, softirq float64 }

// coreTicks reads the server core's line of /proc/stat ("cpuN user nice system idle iowait irq
// softirq steal ...", proc_stat(5)), or zeros when the server shares its core with the load
// generator or is not pinned: then the core's ticks are not the server's alone.
//
// Why it is worth reading: on loopback, send runs the receiver's TCP input (net_rx_action in
// softirq, on the sender's core), and with tick-based accounting (CONFIG_TICK_CPU_ACCOUNTING,
// this kernel's) a tick that lands in softirq is charged to the task it interrupted as system
// time (account_system_index_time in kernel/sched/cputime.c). So part of each server's CPU is
// the delivery of its echoes to the client's socket, the same work for both servers (on a real
// network the client's host would run it, and the server's host its own socket's input).
func coreTicks(b *testing.B, serverCPU, clientCPU string) cpuTicks {
	if serverCPU == "" || serverCPU == clientCPU {
		return cpuTicks{}
	}
	raw, err := os.ReadFile("/proc/stat")
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		f := strings.Fields(line)
		if len(f) < 9 || f[0] != "cpu"+serverCPU {
			continue
		}
		var v [8]float64 // user nice system idle iowait irq softirq steal
		for i := range v {
			v[i], _ = strconv.ParseFloat(f[i+1], 64)
		}
		return cpuTicks{busy: v[0] + v[1] + v[2] + v[5] + v[6] + v[7], softirq: v[6]}
	}
	b.Fatalf("no cpu%s line in /proc/stat", serverCPU)
	return cpuTicks{}
}

// contextSwitches is the kernel's count of context switches of every thread of pid
// (voluntary_ctxt_switches + nonvoluntary_ctxt_switches in /proc/PID/task/TID/status).
func contextSwitches(pid int) int {
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	total := 0.0
	for _, t := range tasks {
		status := fmt.Sprintf("/proc/%d/task/%s/status", pid, t.Name())
		total += statusField(status, "voluntary_ctxt_switches") + statusField(status, "nonvoluntary_ctxt_switches")
	}
	return int(total)
}

// readCalls is the kernel's count of read-type system calls made by every thread of pid, dead
// or alive: syscr of /proc/PID/io (proc_pid_io(5)). vfs_read counts each read(2), including one
// that returns EAGAIN; recvmsg, sendmsg and splice are not counted.
func readCalls(pid int) float64 {
	return statusField(fmt.Sprintf("/proc/%d/io", pid), "syscr")
}

// cpuSeconds is utime+stime of every thread of pid, from /proc/PID/stat (clock ticks of 10 ms).
func cpuSeconds(b *testing.B, pid int) float64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	s := string(raw)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	// After the name: state(3) ... utime(14) stime(15), counted from field 3.
	utime, _ := strconv.ParseFloat(fields[14-3], 64)
	stime, _ := strconv.ParseFloat(fields[15-3], 64)
	return (utime + stime) / 100 // USER_HZ is 100 on Linux
}

// procStatus reads one "Name: value kB" field of /proc/PID/status.
func procStatus(pid int, field string) float64 {
	return statusField(fmt.Sprintf("/proc/%d/status", pid), field)
}

// statusField reads the number of one "Name: value [kB]" line of a /proc status file (0 when
// it is missing).
func statusField(path, field string) float64 {
	raw, _ := os.ReadFile(path)
	for _, line := range strings.Split(string(raw), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			if f := strings.Fields(rest); len(f) > 0 {
				v, _ := strconv.ParseFloat(f[0], 64)
				return v
			}
		}
	}
	return 0
}

func countFDs(pid int) int {
	entries, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	return len(entries)
}

type idleMeasurement struct{ bytesPerConn, fdsPerConn float64 }

func medianIdle(ms []idleMeasurement) idleMeasurement {
	var a, f []float64
	for _, m := range ms {
		a, f = append(a, m.bytesPerConn), append(f, m.fdsPerConn)
	}
	slices.Sort(a)
	slices.Sort(f)
	if len(a) == 0 {
		return idleMeasurement{}
	}
	return idleMeasurement{a[len(a)/2], f[len(f)/2]}
}

// measureIdle reports what one more idle connection costs a fresh server: its resident memory
// (VmRSS) and descriptor count are read once n/2 idle connections are open and settled, and
// again with n, and the growth between the two is divided by n/2. Measuring from the first
// half rather than from a fresh start leaves out what the server spends once, on its first
// connections, which divided by n would pass for a cost per connection: from a fresh start
// the Go server measured 120-134 B per connection, from the first half 70-79 B.
func measureIdle(b *testing.B, server, serverCPU, clientCPU string, n int) idleMeasurement {
	p := startBenchServer(b, server, serverCPU)
	defer p.stop(b, syscall.SIGTERM)
	pid := p.cmd.Process.Pid
	half, base := n/2, countFDs(pid)
	var rss, fds [2]float64
	for i := range 2 {
		stop := holdIdle(b, p.addr, clientCPU, half)
		defer stop()
		fds[i] = float64(settledFDs(b, server, pid, base+(i+1)*half))
		rss[i] = procStatus(pid, "VmRSS")
	}
	return idleMeasurement{bytesPerConn: (rss[1] - rss[0]) * 1024 / float64(half), fdsPerConn: (fds[1] - fds[0]) / float64(half)}
}

// holdIdle starts `load -idle` with n connections to addr and returns once it holds them all;
// stop ends it.
func holdIdle(b *testing.B, addr netip.AddrPort, clientCPU string, n int) (stop func()) {
	load := pinned(clientCPU, labtest.ProgramCommand("load", "-addr", addr.String(), "-conns", strconv.Itoa(n), "-idle", "-duration", "5m"))
	out, err := load.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := load.Start(); err != nil {
		b.Fatal(err)
	}
	stop = func() { _ = load.Process.Signal(syscall.SIGTERM); _ = load.Wait() }
	sc := bufio.NewScanner(out)
	if !sc.Scan() || !strings.HasPrefix(sc.Text(), "holding") {
		stop()
		b.Fatalf("load -idle: %q", sc.Text())
	}
	return stop
}

// settledFDs waits until the server's descriptor count is at least want and has stopped
// growing (the stdlib server takes 3 per connection: the socket and the pipe io.Copy splices
// through), and returns it.
func settledFDs(b *testing.B, server string, pid, want int) int {
	last, stable := -1, 0
	ok := labtest.Poll(30*time.Second, func() (bool, string) {
		fds := countFDs(pid)
		if fds == last && fds >= want {
			stable++
		} else {
			last, stable = fds, 0
		}
		return stable >= 5, ""
	})
	if !ok {
		b.Fatalf("%s never settled at %d descriptors or more (last %d)", server, want, last)
	}
	return last
}

// pinned runs cmd under taskset -c cpu (all its threads inherit the mask), when cpu is set
// and taskset exists.
func pinned(cpu string, cmd *exec.Cmd) *exec.Cmd {
	if cpu == "" {
		return cmd
	}
	taskset, err := exec.LookPath("taskset")
	if err != nil {
		return cmd
	}
	exe := cmd.Path
	if exe == "/proc/self/exe" { // the program itself (ProgramCommand): under taskset it would be taskset
		if exe, err = os.Executable(); err != nil {
			return cmd
		}
	}
	cmd.Path = taskset
	cmd.Args = append([]string{"taskset", "-c", cpu, exe}, cmd.Args[1:]...)
	return cmd
}

// BenchmarkWorkerPool shows when the worker pool pays: with no work per message it only adds a
// hand-off (a channel send and a wake-up per event, and an epoll_ctl to re-arm); with CPU work
// per message, two workers use both cores where the event loop uses one. Nothing is pinned
// here, so the server may use every core.
//
//	go test -run '^$' -bench WorkerPool -benchtime 1x -v ./06-epoll-server/
func BenchmarkWorkerPool(b *testing.B) {
	rounds, seconds, _ := benchEffort()
	type cfg struct{ work, workers string }
	var cfgs []cfg
	for _, work := range []string{"0", "50us"} {
		for _, workers := range []string{"0", "2"} {
			cfgs = append(cfgs, cfg{work, workers})
		}
	}
	samples := map[cfg][]measurement{}
	for range b.N {
		for round := range rounds {
			for i := range cfgs {
				c := cfgs[(i+round)%len(cfgs)]
				samples[c] = append(samples[c], measure(b, "epoll", "", "", 50, 64, seconds, "-work", c.work, "-workers", c.workers))
			}
		}
	}
	var t strings.Builder
	fmt.Fprintf(&t, "\n50 conns × 64 B, %d rounds × %d s, medians, nothing pinned (%d CPUs)\n\n", rounds, seconds, runtime.NumCPU())
	fmt.Fprintln(&t, "| -work | -workers | rt/s | p50/p99 µs | server CPU s/M rt |")
	fmt.Fprintln(&t, "|---|---:|---:|---:|---:|")
	for _, c := range cfgs {
		m := median(samples[c])
		fmt.Fprintf(&t, "| %s | %s | %.0f | %.0f / %.0f | %.2f |\n", c.work, c.workers, m.perSecond, m.p50, m.p99, m.cpuPerMillion)
	}
	b.Log(t.String())
	b.ReportMetric(0, "ns/op")
}

// BenchmarkServerVariants measures the three ways the Go program runs its event loop that
// are not the lesson but cost CPU: read and sendmsg through RawSyscall (the default) or Go's
// Syscall (-gosyscall); a second P when pinned to one CPU (the role's default, roles.go
// secondP) or GOMAXPROCS=1; and a yield to Go's scheduler every 4 ms (the default,
// server.go yieldIfDue) or none (-noyield). One variant is the server as first written,
// with none of the three. Two more change the lesson's choices: -splice echoes by splice(2)
// instead of read and sendmsg (no copy of the bytes in or out of user space), and -et is
// edge-triggered, so each message is read until EAGAIN (epoll(7)): is ET cheaper than LT's
// second look at every reported socket? Each variant serves 50 connections where the issue
// sets targets: 64 B and 4 KiB on its own core, 64 B on the load's core; rounds rotate the
// order. Context switches are the kernel's count for every thread of the server (voluntary +
// involuntary, /proc/PID/task/*/status); read calls are its count of read(2) (readCalls).
//
//	go test -run '^$' -bench ServerVariants -benchtime 1x -v ./06-epoll-server/
func BenchmarkServerVariants(b *testing.B) {
	rounds, seconds, _ := benchEffort()
	serverCPU, clientCPU := benchCPUs()
	type variant struct {
		name, gomaxprocs string // "" = the role's choice (2 when pinned)
		flags            []string
	}
	variants := []variant{
		{"default: RawSyscall, 2 Ps, yields", "", nil},
		{"-noyield", "", []string{"-noyield"}},
		{"GOMAXPROCS=1", "1", nil},
		{"-gosyscall", "", []string{"-gosyscall"}},
		{"first version: -gosyscall -noyield GOMAXPROCS=1", "1", []string{"-gosyscall", "-noyield"}},
		{"-splice", "", []string{"-splice"}},
		{"-et", "", []string{"-et"}},
	}
	// The two CPU targets are on the server's own core (64 B and 4 KiB), the throughput target on
	// the load's core (64 B).
	type placement struct {
		name, cpu string
		size      int
	}
	placements := []placement{{"own core", serverCPU, 64}, {"own core", serverCPU, 4096}, {"shared core", clientCPU, 64}}
	type key struct {
		variant string
		pl      placement
	}
	samples := map[key][]measurement{}
	for range b.N {
		for round := range rounds {
			for _, pl := range placements {
				for i := range variants {
					v := variants[(i+round)%len(variants)]
					b.Setenv("GOMAXPROCS", v.gomaxprocs) // "" counts as unset; restored when b ends
					m := measure(b, "epoll", pl.cpu, clientCPU, 50, pl.size, seconds, v.flags...)
					samples[key{v.name, pl}] = append(samples[key{v.name, pl}], m)
				}
			}
		}
	}
	var t strings.Builder
	fmt.Fprintf(&t, "\n50 conns, %d rounds × %d s, medians; load on CPU %s, server on CPU %s (own core) or %s (shared core)\n\n",
		rounds, seconds, clientCPU, serverCPU, clientCPU)
	fmt.Fprintln(&t, "| server | size | variant | rt/s | server CPU s/M rt | context switches per rt | read calls per rt | load CPU s/M rt |")
	fmt.Fprintln(&t, "|---|---:|---|---:|---:|---:|---:|---:|")
	for _, pl := range placements {
		for _, v := range variants {
			m := median(samples[key{v.name, pl}])
			fmt.Fprintf(&t, "| %s | %d B | %s | %.0f | %.2f | %.3f | %.2f | %.2f |\n", pl.name, pl.size, v.name, m.perSecond, m.cpuPerMillion, m.switchesPerRT, m.readsPerRT, m.loadCPUPerMillion)
		}
	}
	b.Log(t.String())
	at := func(v int, pl placement) measurement { return median(samples[key{variants[v].name, pl}]) }
	own4K, shared := placements[1], placements[2]
	b.ReportMetric(at(0, own4K).cpuPerMillion/at(1, own4K).cpuPerMillion, "own-core-4KiB-cpu-yield/noyield")
	b.ReportMetric(at(0, own4K).cpuPerMillion/at(4, own4K).cpuPerMillion, "own-core-4KiB-cpu-default/first")
	b.ReportMetric(at(0, shared).perSecond/at(4, shared).perSecond, "shared-core-rt/s-default/first")
	b.ReportMetric(at(5, own4K).cpuPerMillion/at(0, own4K).cpuPerMillion, "own-core-4KiB-cpu-splice/default")
	b.ReportMetric(at(6, own4K).cpuPerMillion/at(0, own4K).cpuPerMillion, "own-core-4KiB-cpu-et/lt")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkReadEntry measures what RawSyscall saves per call (server.go, readNonblocking):
// read(2) on an empty non-blocking socket, which returns EAGAIN at once, entered through
// unix.Read (Syscall: the scheduler is told the thread may block) and through RawSyscall.
//
//	go test -run '^$' -bench ReadEntry ./06-epoll-server/
func BenchmarkReadEntry(b *testing.B) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	buf := make([]byte, 64)
	for _, entry := range []struct {
		name string
		read func(int, []byte) (int, error)
	}{{"Syscall", unix.Read}, {"RawSyscall", readNonblocking}} {
		b.Run(entry.name, func(b *testing.B) {
			for b.Loop() {
				if _, err := entry.read(fds[0], buf); err != unix.EAGAIN {
					b.Fatalf("read on an empty socket: %v, want EAGAIN", err)
				}
			}
		})
	}
}
