//go:build linux

package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"socklab/internal/lab"
)

// serverRole is `server`: the epoll echo server, until SIGINT or SIGTERM.
func serverRole(args []string, stdout, stderr io.Writer) error {
	fs := lab.NewFlagSet("server", stderr)
	addr := fs.String("addr", "127.0.0.1:9000", "address to listen on (IP:PORT; port 0 picks one)")
	et := fs.Bool("et", false, "edge-triggered (EPOLLET): drain accept and read to EAGAIN")
	workers := fs.Int("workers", 0, "0 handles events on the event loop; N>0 hands them to N workers (EPOLLONESHOT)")
	work := fs.Duration("work", 0, "simulated CPU work per message (e.g. 50us)")
	chunk := fs.Int("chunk", DefaultChunk, "bytes per read = most output pending per connection (backpressure bound)")
	backlog := fs.Int("backlog", 4096, "listen(2) backlog (the kernel caps it at net.core.somaxconn)")
	nofile := fs.Int("nofile", 0, "set the soft RLIMIT_NOFILE to this first, at most the hard limit (a low one shows EMFILE handling)")
	goSyscall := fs.Bool("gosyscall", false, "enter read and sendmsg through Go's Syscall, as unix.Read does (slower; to compare)")
	noYield := fs.Bool("noyield", false, "never yield the event loop to Go's scheduler (slower: sysmon preempts it; to compare)")
	splice := fs.Bool("splice", false, "echo through a pipe with splice(2): the bytes never enter user space (as io.Copy does)")
	trace := fs.Bool("trace", false, "print every epoll_wait result and system call on connections (slow)")
	if err := lab.ParseFlags(fs, args); err != nil {
		return err
	}
	ap, err := lab.ParseAddrPort("addr", *addr)
	if err != nil {
		return err
	}
	switch {
	case *workers < 0 || *workers > 1024:
		return lab.Usagef("-workers %d: want 0 (inline) to 1024", *workers)
	case *work < 0 || *work > time.Second:
		return lab.Usagef("-work %v: want 0 to 1s of CPU per message", *work)
	case *chunk < 1 || *chunk > 16<<20:
		return lab.Usagef("-chunk %d: want 1 to 16777216 bytes", *chunk)
	case *backlog < 1 || *backlog > math.MaxInt32:
		// listen(2) takes an int: a larger value would reach the kernel truncated.
		return lab.Usagef("-backlog %d: want 1 to %d (the kernel caps it at net.core.somaxconn anyway: "+
			"cat /proc/sys/net/core/somaxconn)", *backlog, math.MaxInt32)
	case *nofile != 0 && (*nofile < 16 || *nofile > 1<<20):
		return lab.Usagef("-nofile %d: want 16 to 1048576 (the server itself needs about a dozen fds)", *nofile)
	}
	if *nofile > 0 {
		// setrlimit(2) refuses a soft limit above the hard one with a bare EINVAL; say why here.
		var lim unix.Rlimit
		if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err == nil && uint64(*nofile) > lim.Max {
			return lab.Usagef("-nofile %d: above the hard limit of %d (ulimit -Hn); want 16 to %d, or raise the hard limit as root",
				*nofile, lim.Max, lim.Max)
		}
	}
	cfg := ServerConfig{Addr: ap, EdgeTriggered: *et, Workers: *workers, Work: *work,
		ChunkSize: *chunk, Backlog: *backlog, NoFile: *nofile, GoSyscall: *goSyscall, NoYield: *noYield, Splice: *splice}
	n := lab.NewNarrator(stdout, false)
	secondP(n)
	openRuntimePoller()
	s, err := Listen(cfg, n)
	if err != nil {
		return err
	}
	if *trace {
		s.trace, s.traceEINTR = n, true
	}
	// SIGINT/SIGTERM arrive on a Go channel; the goroutine that receives them writes the
	// eventfd, which wakes epoll_wait on the loop's thread.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case sig := <-sigs:
			n.Say("got %v: waking epoll_wait through the eventfd", sig)
			_ = s.Wake()
		case <-done:
		}
	}()
	n.Say("serving: %s; Ctrl-C stops", cfg.Mode())
	if err := s.Serve(); err != nil {
		return err
	}
	n.Say("sockets still open at exit (from /proc/self/fd): %d", openSockets())
	return nil
}

// Mode describes the configuration in words.
func (c ServerConfig) Mode() string {
	trig := "level-triggered"
	if c.EdgeTriggered {
		trig = "edge-triggered (EPOLLET)"
	}
	pool := "inline on the event loop"
	if c.Workers > 0 {
		pool = fmt.Sprintf("%d workers, EPOLLONESHOT", c.Workers)
	}
	s := trig + ", " + pool
	if c.Work > 0 {
		s += fmt.Sprintf(", %v of work per message", c.Work)
	}
	if c.Splice {
		s += ", echo by splice(2) through a pipe"
	}
	return s
}

// openSockets counts this process's descriptors that are sockets, as the kernel lists them.
func openSockets() int {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1
	}
	count := 0
	for _, e := range entries {
		if target, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && strings.HasPrefix(target, "socket:") {
			count++
		}
	}
	return count
}

// stdServerRole is `stdserver`: the idiomatic Go echo server the benchmark compares against —
// a goroutine per connection and io.Copy, on Go's own netpoller (which is epoll too).
func stdServerRole(args []string, stdout, stderr io.Writer) error {
	fs := lab.NewFlagSet("stdserver", stderr)
	addr := fs.String("addr", "127.0.0.1:9000", "address to listen on (IP:PORT)")
	if err := lab.ParseFlags(fs, args); err != nil {
		return err
	}
	ap, err := lab.ParseAddrPort("addr", *addr)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", ap.String())
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "    -> listening on %s\n", ln.Addr())
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	go func() { <-sigs; ln.Close() }()
	var delay time.Duration
	for {
		c, err := ln.Accept()
		switch {
		case errors.Is(err, net.ErrClosed):
			return nil // closed by the signal
		case errors.Is(err, unix.EMFILE), errors.Is(err, unix.ENFILE), errors.Is(err, unix.ENOBUFS), errors.Is(err, unix.ENOMEM):
			// Out of descriptors or memory: the connection stays queued, so retrying at once
			// would spin. Wait and retry, 5 ms doubling up to 1 s, as net/http's Server does.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			fmt.Fprintf(stderr, "accept: %v; retrying in %v\n", err, delay)
			time.Sleep(delay) // a back-off, not synchronisation: a signal's Close ends the next Accept
			continue
		case err != nil:
			return fmt.Errorf("accept: %w", err)
		}
		delay = 0
		go func() {
			defer c.Close()
			_, _ = io.Copy(c, c)
		}()
	}
}

// stopSignal turns a channel that delivers once into one that is closed then.
func stopSignal[T any](in <-chan T) <-chan struct{} {
	out := make(chan struct{})
	go func() { <-in; close(out) }()
	return out
}

// loadRole is `load`: the load generator.
func loadRole(args []string, stdout, stderr io.Writer) error {
	fs := lab.NewFlagSet("load", stderr)
	addr := fs.String("addr", "127.0.0.1:9000", "server address (IP:PORT)")
	conns := fs.Int("conns", 50, "connections")
	size := fs.Int("size", 64, "message size in bytes")
	duration := fs.Duration("duration", 3*time.Second, "how long to run (idle mode: how long to hold)")
	idle := fs.Bool("idle", false, "open the connections and hold them idle instead of ping-pong")
	asJSON := fs.Bool("json", false, "print the result as one JSON object")
	rate := fs.Float64("rate", 0, "pace to this many round trips/s over all connections (0: as fast as echoes come back)")
	if err := lab.ParseFlags(fs, args); err != nil {
		return err
	}
	ap, err := lab.ParseDialAddr("addr", *addr)
	if err != nil {
		return err
	}
	switch {
	case *conns < 1 || *conns > 100000:
		return lab.Usagef("-conns %d: want 1 to 100000", *conns)
	case *size < 1 || *size > 1<<20:
		return lab.Usagef("-size %d: want 1 to 1048576 bytes", *size)
	case *duration <= 0:
		return lab.Usagef("-duration %v: want a positive duration, e.g. 3s", *duration)
	case !(*rate >= 0 && *rate <= 1e8): // also rejects NaN
		return lab.Usagef("-rate %v: want 0 (unpaced) to 100000000 round trips per second, e.g. 100000", *rate)
	}
	// On stderr: stdout carries the result (-json) or the "holding" line scripts wait for.
	secondP(lab.NewNarrator(stderr, false))
	openRuntimePoller() // the load generator may run out of descriptors too (-conns)
	cfg := LoadConfig{Addr: ap, Conns: *conns, Size: *size, Duration: *duration, Idle: *idle, Rate: *rate}
	if *idle {
		// Hold until the duration ends or a signal comes, whichever is first.
		sigs := make(chan os.Signal, 1)
		signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
		defer signal.Stop(sigs)
		cfg.Stop = stopSignal(sigs)
		cfg.Ready = func(open int) { fmt.Fprintf(stdout, "holding %d idle connections\n", open) }
	}
	res, err := RunLoad(cfg)
	if err != nil {
		return err
	}
	if *idle {
		fmt.Fprintf(stdout, "closing %d idle connections\n", *conns)
		return nil
	}
	if *asJSON {
		return json.NewEncoder(stdout).Encode(res)
	}
	fmt.Fprintln(stdout, res)
	return nil
}

// secondP gives the Go runtime a second P when the process may run on one CPU only (taskset
// -c N, or a 1-CPU machine) and GOMAXPROCS is not set, and says so. Go then starts with one
// P. The epoll server's loop (and the load generator's, which is built the same way and
// gets the same treatment) blocks in epoll_wait through Syscall, and with no idle P the
// runtime's sysmon takes the P from a thread that has spent 20 µs in a system call and may
// wake another thread to hold it (retake and handoffp in runtime/proc.go); with a second P
// idle it leaves the P alone for 10 ms. BenchmarkServerVariants measures it. The stdserver
// role keeps Go's default: a second P made the goroutine-per-connection server slower, not
// faster (docs/06-epoll-server.md, "Results"). Setting GOMAXPROCS (even to 1) keeps the
// runtime's own choice; calling runtime.GOMAXPROCS also stops the runtime from following
// later changes of a cgroup CPU limit, which is why it happens only when pinned.
func secondP(n *lab.Narrator) {
	var cpus unix.CPUSet
	if os.Getenv("GOMAXPROCS") != "" || unix.SchedGetaffinity(0, &cpus) != nil || cpus.Count() != 1 || runtime.GOMAXPROCS(0) >= 2 {
		return
	}
	runtime.GOMAXPROCS(2)
	n.Say("runnable on one CPU: GOMAXPROCS 1 -> 2, so a thread blocked in epoll_wait keeps its P (GOMAXPROCS=1 in the environment to compare)")
}

// openRuntimePoller makes Go's runtime open its own epoll instance (and the eventfd it wakes
// it with) now, at start. The runtime opens them the first time a goroutine waits on a timer
// (netpollGenericInit, called when a timer is first added: runtime/time.go), and nothing in
// the epoll server or the load generator does that; but the runtime's own background
// scavenger does, some time after a garbage collection. If no descriptor is free at that
// moment the runtime cannot go on: "runtime: epollcreate failed with 24", "fatal error:
// runtime: netpollinit failed". A server that runs out of descriptors and handles EMFILE
// would die of it anyway; one stuck at its limit did, in a mutation of
// TestEMFILEWithoutReservePausesListener, which now checks that the fd is open before the
// limit is reached. A timer that never fires is enough to make the runtime open it.
func openRuntimePoller() {
	time.AfterFunc(time.Hour, func() {}).Stop()
}
