//go:build linux

package main

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// The benchmarks send a page-cached file with the sending and receiving threads pinned to
// different cores, and report medians over b.N runs (use -benchtime 5x):
//
//	SOCKLAB_BENCH_MIB=512 go test -run '^$' -bench . -benchtime 5x ./07-sendfile-splice/
//
// Each benchmark runs over three routes (sub-benchmarks):
//   - "veth-rps": a veth pair to a second namespace whose receive processing the kernel steers
//     (RPS) to the receiver's CPU for data and to the sender's CPU for ACKs, the way each of two
//     machines would process its own receive work (wire_test.go) — at the price of an IPI per
//     steered packet, which on a VM costs the sender more than the work it moves away;
//   - "veth": the same pair without RPS, the control;
//   - "loopback": 127.0.0.1.
//
// Without RPS (veth, loopback) the transmitting CPU also runs the receive half of TCP in the
// sender's context. The veth routes are skipped outside a private namespace. None of the three
// is a real network: docs/07-sendfile-splice.md, "The numbers", compares them.
//
// SOCKLAB_BENCH_MIB sets the file size (default 512, as in the issue; 64 for a quick run);
// SOCKLAB_BENCH_ROUTE=veth-rps, veth or loopback runs one route only; SOCKLAB_BENCH_NOPIN=1
// leaves the threads unpinned (veth-rps still steers to CPUs 0 and 1); SOCKLAB_BENCH_RECV=read
// makes the send benchmarks' receiver read(2) instead of splice.

func benchFile(b *testing.B) (string, int64) {
	b.Helper()
	mib := int64(512)
	if v := os.Getenv("SOCKLAB_BENCH_MIB"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n <= 0 || n > 16<<10 {
			b.Fatalf("SOCKLAB_BENCH_MIB=%q: want a size in MiB, 1..16384", v)
		}
		mib = n
	}
	path := filepath.Join(b.TempDir(), "bench.bin")
	if _, err := makeFile(path, mib<<20, 1); err != nil {
		b.Fatal(err)
	}
	return path, mib << 20
}

// cores picks the sender's and the receiver's CPU: different cores when there are two, unless
// SOCKLAB_BENCH_NOPIN is set (to compare: on loopback the receive path's softirq work runs on
// whichever CPU transmitted, so pinning decides whose thread pays for it).
func cores() (send, recv int) {
	if runtime.NumCPU() >= 2 && os.Getenv("SOCKLAB_BENCH_NOPIN") == "" {
		return 0, 1
	}
	return -1, -1
}

// benchRecv is the receiver the send benchmarks use: splice to /dev/null, or with
// SOCKLAB_BENCH_RECV=read, read(2) into a 64 KiB buffer (no hashing).
func benchRecv(cpu int) RecvOptions {
	if os.Getenv("SOCKLAB_BENCH_RECV") == "read" {
		return RecvOptions{Method: RecvRead, Buf: 64 << 10, NoHash: true, CPU: cpu}
	}
	return RecvOptions{Method: RecvSplice, CPU: cpu}
}

// sample is one transfer's cost.
type sample struct {
	mbps            float64
	sendCPU, recCPU float64 // CPU seconds per GiB, of the sending and receiving threads
	// Whole-CPU counters (wire_test.go), per GiB, when the threads are pinned: softirq time
	// on the sender's CPU (/proc/stat, in any context — the sender's, idle's, ksoftirqd's) and
	// RPS IPIs that woke the receiver's CPU (/proc/net/softnet_stat).
	sendCPUSoftirq, rpsIPIs float64
	sendHrtimers            float64 // HRTIMER softirqs on the sender's CPU (/proc/softirqs): pacing timers
}

// route is how a benchmark's bytes travel: over loopback or over a veth wire.
type route struct {
	name string
	dial dialFunc
	skip string // why the route is unavailable, or ""
}

// routes builds the benchmark's routes (see the top of this file); the wires are torn down
// when b ends.
func routes(b *testing.B) []route {
	all := []string{"veth-rps", "veth", "loopback"}
	if only := os.Getenv("SOCKLAB_BENCH_ROUTE"); only != "" {
		if !slices.Contains(all, only) {
			b.Fatalf("SOCKLAB_BENCH_ROUTE=%q: want one of %v", only, all)
		}
		all = []string{only}
	}
	var rs []route
	for _, name := range all {
		r := route{name: name, dial: dialLoopback}
		if name != "loopback" {
			if runtime.NumCPU() < 2 {
				r.skip = "the wire is measured with two CPUs; this machine has one"
			} else if w, err := newWire(0, 1, name == "veth-rps"); err != nil {
				r.skip = "no veth wire: " + err.Error()
			} else {
				b.Cleanup(w.close)
				r.dial = w.dial
			}
		}
		rs = append(rs, r)
	}
	return rs
}

// congestionControls are the TCP congestion controls the sender is measured with, each a
// sub-benchmark under its route: CUBIC (Linux's default algorithm) and the namespace's
// default if that differs (a new namespace inherits the host's: BBR on this course's VM), or
// the comma-separated list in SOCKLAB_BENCH_CC. BBR paces its segments with a timer, and on
// loopback that costs the sender more than the copies zero-copy saves (docs/07, "The
// numbers").
func congestionControls(b *testing.B) []string {
	if v := os.Getenv("SOCKLAB_BENCH_CC"); v != "" {
		return strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == ' ' })
	}
	ccs := []string{"cubic"}
	if raw, err := os.ReadFile("/proc/sys/net/ipv4/tcp_congestion_control"); err == nil {
		if def := strings.TrimSpace(string(raw)); def != "" && def != "cubic" {
			ccs = append(ccs, def)
		}
	}
	return ccs
}

// onRoutes runs f as one sub-benchmark per route and congestion control ("loopback/cubic").
func onRoutes(b *testing.B, f func(b *testing.B, dial dialFunc, cc string)) {
	ccs := congestionControls(b)
	for _, r := range routes(b) {
		b.Run(r.name, func(b *testing.B) {
			if r.skip != "" {
				b.Skip(r.skip)
			}
			for _, cc := range ccs {
				b.Run(cc, func(b *testing.B) { f(b, r.dial, cc) })
			}
		})
	}
}

func measureOnce(b *testing.B, dial dialFunc, so SendOptions, ro RecvOptions) sample {
	before := readCPUCounters(so.CPU, ro.CPU)
	out, err := transferOver(dial, 0, 0, so, ro, nil)
	after := readCPUCounters(so.CPU, ro.CPU)
	if err == nil {
		err = errors.Join(out.SendErr, out.RecvErr)
	}
	if err != nil {
		b.Fatal(err)
	}
	gib := float64(out.Send.Sent) / (1 << 30)
	s := sample{
		mbps:    mbps(out.Send.Sent, out.Recv.Elapsed),
		sendCPU: out.Send.CPU.Total().Seconds() / gib,
		recCPU:  out.Recv.CPU.Total().Seconds() / gib,
	}
	if before.ok && after.ok {
		s.sendCPUSoftirq = (after.sendSoftirq - before.sendSoftirq) / gib
		s.rpsIPIs = float64(after.recvIPIs-before.recvIPIs) / gib
		s.sendHrtimers = float64(after.sendHrtimers-before.sendHrtimers) / gib
	}
	return s
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func report(b *testing.B, samples []sample) {
	var mb, sc, rc, sq, ipi, hr []float64
	for _, s := range samples {
		mb, sc, rc = append(mb, s.mbps), append(sc, s.sendCPU), append(rc, s.recCPU)
		sq, ipi, hr = append(sq, s.sendCPUSoftirq), append(ipi, s.rpsIPIs), append(hr, s.sendHrtimers)
	}
	b.ReportMetric(median(mb), "MB/s-median")
	b.ReportMetric(median(sc), "send-cpu-s/GiB")
	b.ReportMetric(median(rc), "recv-cpu-s/GiB")
	b.ReportMetric(median(sq), "send-core-softirq-s/GiB")
	b.ReportMetric(median(ipi), "rps-ipi/GiB")
	b.ReportMetric(median(hr), "send-core-hrtimer-softirqs/GiB")
	b.ReportMetric(0, "ns/op") // wall time per op is in MB/s; ns/op of a 512 MiB op is noise
}

// Each method sends the whole file; the receiver splices to /dev/null (the cheapest receiver,
// so the sender is what is measured) unless SOCKLAB_BENCH_RECV=read.
func BenchmarkSendMethods(b *testing.B) {
	path, size := benchFile(b)
	sendCPU, recvCPU := cores()
	onRoutes(b, func(b *testing.B, dial dialFunc, cc string) {
		for _, m := range Methods {
			b.Run(string(m), func(b *testing.B) {
				b.SetBytes(size)
				so := SendOptions{Method: m, Path: path, Length: -1, Buf: 64 << 10, CPU: sendCPU, Congestion: cc}
				var samples []sample
				for b.Loop() {
					samples = append(samples, measureOnce(b, dial, so, benchRecv(recvCPU)))
				}
				report(b, samples)
			})
		}
		b.Run("splice-1MiB-pipe", func(b *testing.B) {
			b.SetBytes(size)
			so := SendOptions{Method: Splice, Pipe: 1 << 20, Path: path, Length: -1, CPU: sendCPU, Congestion: cc}
			var samples []sample
			for b.Loop() {
				samples = append(samples, measureOnce(b, dial, so, benchRecv(recvCPU)))
			}
			report(b, samples)
		})
	})
}

// The receive side: sendfile sends, the receiver either read(2)s into a 64 KiB buffer (no
// hashing: the copy alone) or splices socket → pipe → /dev/null.
func BenchmarkReceive(b *testing.B) {
	path, size := benchFile(b)
	sendCPU, recvCPU := cores()
	onRoutes(b, func(b *testing.B, dial dialFunc, cc string) {
		for _, ro := range []RecvOptions{
			{Method: RecvRead, Buf: 64 << 10, NoHash: true, CPU: recvCPU},
			{Method: RecvSplice, CPU: recvCPU},
		} {
			b.Run(ro.Method, func(b *testing.B) {
				b.SetBytes(size)
				so := SendOptions{Method: Sendfile, Path: path, Length: -1, CPU: sendCPU, Congestion: cc}
				var samples []sample
				for b.Loop() {
					samples = append(samples, measureOnce(b, dial, so, ro))
				}
				report(b, samples)
			})
		}
	})
}

// The targets as ratios within one run, the methods interleaved so that a busy
// neighbour on this shared 2-core VM slows them alike: sendfile and splice sender CPU per GiB
// over read+write's (target ≤ 0.4), and sendfile throughput over io.Copy's (target ≥ 0.95).
// The absolute sender CPU of read+write and sendfile is reported too, so that a ratio can be
// read next to what it divides.
func BenchmarkTargetRatios(b *testing.B) {
	path, size := benchFile(b)
	sendCPU, recvCPU := cores()
	onRoutes(b, func(b *testing.B, dial dialFunc, cc string) {
		type config struct {
			name string
			so   SendOptions
		}
		base := SendOptions{Path: path, Length: -1, Buf: 64 << 10, CPU: sendCPU, Congestion: cc}
		with := func(m Method, pipe int) SendOptions { so := base; so.Method, so.Pipe = m, pipe; return so }
		compared := []config{
			{"readwrite", with(ReadWrite, 0)},
			{"sendfile", with(Sendfile, 0)},
			{"splice", with(Splice, 0)},          // the default 64 KiB pipe
			{"splice-1MiB", with(Splice, 1<<20)}, // F_SETPIPE_SZ: 16 times fewer splice calls
			{"iocopy", with(IOCopy, 0)},
		}
		got := map[string][]sample{}
		b.SetBytes(size * int64(len(compared)))
		for b.Loop() {
			for _, c := range compared {
				got[c.name] = append(got[c.name], measureOnce(b, dial, c.so, benchRecv(recvCPU)))
			}
		}
		med := func(name string, f func(sample) float64) float64 {
			var xs []float64
			for _, s := range got[name] {
				xs = append(xs, f(s))
			}
			return median(xs)
		}
		cpu := func(s sample) float64 { return s.sendCPU }
		thr := func(s sample) float64 { return s.mbps }
		for _, name := range []string{"readwrite", "sendfile", "splice", "splice-1MiB"} {
			b.ReportMetric(med(name, thr), name+"-MB/s")
			b.ReportMetric(med(name, cpu), name+"-send-cpu-s/GiB")
		}
		for _, name := range []string{"sendfile", "splice", "splice-1MiB"} {
			b.ReportMetric(med(name, cpu)/med("readwrite", cpu), name+"/readwrite-cpu")
		}
		b.ReportMetric(med("sendfile", thr)/med("iocopy", thr), "sendfile/iocopy-MB/s")
		b.ReportMetric(0, "ns/op")
	})
}
