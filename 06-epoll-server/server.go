//go:build linux

package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"socklab/internal/lab"
)

// ServerConfig is what the server role's flags set.
type ServerConfig struct {
	Addr netip.AddrPort
	// EdgeTriggered registers every fd with EPOLLET: each report means "something changed",
	// so accept and read must drain to EAGAIN (epoll(7), "Level-triggered and edge-triggered").
	EdgeTriggered bool
	// Workers is 0 to handle events on the event-loop thread, or the size of the worker pool;
	// then every connection is armed EPOLLONESHOT and re-armed by the worker that handled it.
	Workers int
	// Work is simulated CPU work per message (per read), to show when a pool pays off.
	Work time.Duration
	// ChunkSize is the most one read takes, and so the most output a connection may have
	// pending in the server: while output is pending the server does not read (backpressure).
	ChunkSize int
	// Backlog is listen(2)'s backlog.
	Backlog int
	// NoFile, when > 0, sets the soft RLIMIT_NOFILE first, at most the hard limit (a low value
	// shows EMFILE handling).
	NoFile int
	// GoSyscall enters read and sendmsg on connections through Go's Syscall, as unix.Read
	// does, instead of RawSyscall (readNonblocking): the slower way, kept to compare.
	GoSyscall bool
	// NoYield keeps the event loop from yielding to Go's scheduler every yieldEvery (see
	// yieldIfDue): the slower way, kept to compare.
	NoYield bool
	// Splice echoes through a pipe with splice(2) (-splice): socket → pipe → socket, so the
	// bytes stay in the kernel's pages and are never copied to or from user space. It is
	// what the stdlib server's io.Copy does between two TCP connections.
	Splice bool
}

// DefaultChunk is the default read size and per-connection output bound.
const DefaultChunk = 64 << 10

// Stats are the server's counters. They are the program's own bookkeeping: tests assert the
// kernel's view and use these only to explain.
type Stats struct {
	Accepted      atomic.Int64 // connections accepted and served
	Closed        atomic.Int64 // connections closed by the server
	Shed          atomic.Int64 // connections accepted and closed at once because of EMFILE/ENFILE
	Resets        atomic.Int64 // ECONNRESET / EPIPE seen on read or send
	Backpressured atomic.Int64 // times a connection stopped being read because its output was full
	Overlaps      atomic.Int64 // times two workers held one connection (must stay 0)
	Wakeups       atomic.Int64 // epoll_wait calls that returned events
}

// conn is one accepted connection. In worker mode exactly one goroutine owns it at a time:
// the worker that got its EPOLLONESHOT report, until that worker re-arms it.
type conn struct {
	fd  int
	gen int32  // distinguishes this connection from a later one given the same fd number
	out []byte // output the kernel would not take yet (nil when none: idle costs nothing)
	// pipe holds the output the kernel would not take yet in -splice mode, or is nil: a
	// connection owns a pipe only while its output is pending.
	pipe  *pipe
	armed uint32 // the interest list entry's current events (inline mode only)
	// owned is set while a worker handles the connection. Besides detecting overlaps, the
	// atomic gives the race detector (and the memory model) the ordering that epoll's
	// re-arm gives the kernel: what one worker wrote is visible to the next.
	owned atomic.Bool
}

// Server is the epoll echo server.
type Server struct {
	cfg   ServerConfig
	n     *lab.Narrator // setup and shutdown narration
	trace *lab.Narrator // per-event narration (demo only; nil when serving for real)
	// traceEINTR also narrates interrupted waits (server -trace only: in the demo they would
	// make the transcript depend on when a signal happened to arrive).
	traceEINTR bool

	lfd, epfd, wakefd int
	// mu guards what goroutines other than the event loop use while it runs: wakefd (Wake),
	// and the listener's interest, which a worker's close or the accept back-off timer re-arms
	// (paused). shutdown takes it to close the fds.
	mu        sync.Mutex
	paused    bool // listener disarmed: no fd was free for the reserve, or accept4 failed oddly
	reservefd int  // an fd kept open to give back when accept hits EMFILE (event loop only)
	// Addr is the address the listener is bound to (the port bind picked, for port 0).
	Addr netip.AddrPort

	conns   []atomic.Pointer[conn] // indexed by fd
	nextGen int32
	jobs    chan job
	workers sync.WaitGroup
	// Stats are the server's own counters, safe to read while it runs.
	Stats Stats
}

type job struct {
	c      *conn
	events uint32
}

// Listen sets up the listening socket, the epoll instance and the wake-up eventfd, narrating
// each system call to n. The server does not run until Serve.
func Listen(cfg ServerConfig, n *lab.Narrator) (*Server, error) {
	if cfg.ChunkSize <= 0 {
		cfg.ChunkSize = DefaultChunk
	}
	if cfg.Backlog <= 0 {
		cfg.Backlog = 4096
	}
	s := &Server{cfg: cfg, n: n, lfd: -1, epfd: -1, wakefd: -1, reservefd: -1}
	if err := s.setup(); err != nil {
		s.closeAll()
		return nil, err
	}
	return s, nil
}

func (s *Server) setup() error {
	n, cfg := s.n, s.cfg
	if cfg.NoFile > 0 {
		// Only the soft limit: an unprivileged process may lower it and raise it again.
		var lim unix.Rlimit
		if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
			return err
		}
		lim.Cur = uint64(cfg.NoFile)
		err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim)
		if n.Sys(0, err, "setrlimit(RLIMIT_NOFILE, {rlim_cur=%d, rlim_max=%d})", lim.Cur, lim.Max) != nil {
			return fmt.Errorf("setrlimit(RLIMIT_NOFILE) to %d (hard limit %d): %w", lim.Cur, lim.Max, err)
		}
	}
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	// No fd number can reach the soft limit, so a slice indexed by fd holds every connection.
	s.conns = make([]atomic.Pointer[conn], lim.Cur)

	family := unix.AF_INET
	if cfg.Addr.Addr().Is6() {
		family = unix.AF_INET6
	}
	var err error
	s.lfd, err = unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if n.Sys(s.lfd, err, "socket(%s, SOCK_STREAM|SOCK_CLOEXEC, 0)", familyName(family)) != nil {
		return err
	}
	err = unix.SetsockoptInt(s.lfd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	if n.Sys(0, err, "setsockopt(%d, SOL_SOCKET, SO_REUSEADDR, [1])", s.lfd) != nil {
		return err
	}
	sa := lab.SockaddrOf(cfg.Addr)
	err = unix.Bind(s.lfd, sa)
	if n.Sys(0, err, "bind(%d, %s)", s.lfd, lab.Sockaddr(sa)) != nil {
		return fmt.Errorf("bind %v: %w", cfg.Addr, err)
	}
	err = unix.Listen(s.lfd, cfg.Backlog)
	if n.Sys(0, err, "listen(%d, %d)", s.lfd, cfg.Backlog) != nil {
		return err
	}
	bound, err := unix.Getsockname(s.lfd)
	if err != nil {
		return err
	}
	s.Addr = lab.AddrPortOf(bound)
	n.Result("listening on %s", s.Addr)

	// The listening socket is made non-blocking the classic way, with fcntl: an accept()
	// after a stale readiness report must return EAGAIN, not block the whole loop.
	flags, err := unix.FcntlInt(uintptr(s.lfd), unix.F_GETFL, 0)
	if n.Sys(flags, err, "fcntl(%d, F_GETFL)", s.lfd) != nil {
		return err
	}
	_, err = unix.FcntlInt(uintptr(s.lfd), unix.F_SETFL, flags|unix.O_NONBLOCK)
	if n.Sys(0, err, "fcntl(%d, F_SETFL, %s)", s.lfd, openFlags(flags|unix.O_NONBLOCK)) != nil {
		return err
	}

	s.epfd, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if n.Sys(s.epfd, err, "epoll_create1(EPOLL_CLOEXEC)") != nil {
		return err
	}
	// An eventfd is how another thread (the signal handler's goroutine) wakes epoll_wait.
	s.wakefd, err = unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if n.Sys(s.wakefd, err, "eventfd2(0, EFD_NONBLOCK|EFD_CLOEXEC)") != nil {
		return err
	}
	// The reserve fd: one descriptor kept for the day accept() fails with EMFILE.
	s.reservefd, err = unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if n.Sys(s.reservefd, err, `open("/dev/null", O_RDONLY|O_CLOEXEC) (the reserve fd)`) != nil {
		return err
	}

	listenEvents := uint32(unix.EPOLLIN)
	if cfg.EdgeTriggered {
		listenEvents |= unix.EPOLLET
	}
	for _, r := range []struct {
		fd     int
		events uint32
	}{{s.lfd, listenEvents}, {s.wakefd, unix.EPOLLIN}} {
		ev := unix.EpollEvent{Events: r.events, Fd: int32(r.fd)}
		err = unix.EpollCtl(s.epfd, unix.EPOLL_CTL_ADD, r.fd, &ev)
		if n.Sys(0, err, "epoll_ctl(%d, EPOLL_CTL_ADD, %d, {%s})", s.epfd, r.fd, EventString(r.events)) != nil {
			return err
		}
	}
	return nil
}

// Wake asks Serve to shut down, from any goroutine: write(eventfd, 1) makes it readable,
// which ends the epoll_wait the loop sleeps in.
func (s *Server) Wake() error {
	// The lock keeps Wake from writing to the eventfd's number after shutdown closed it (and
	// the number went to some other file).
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.wakefd < 0 {
		return nil // already shut down
	}
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1) // the counter is a uint64 in host byte order (eventfd(2))
	_, err := unix.Write(s.wakefd, one[:])
	if errors.Is(err, unix.EAGAIN) { // counter saturated: a wake-up is already pending
		err = nil
	}
	return err
}

// Serve runs the event loop until Wake is called, then closes every fd it opened and returns.
func (s *Server) Serve() error {
	if s.cfg.Workers > 0 {
		s.jobs = make(chan job, 4*s.cfg.Workers)
		for i := range s.cfg.Workers {
			s.workers.Add(1)
			go s.worker(i + 1)
		}
	}
	err := s.loop()
	if s.jobs != nil {
		close(s.jobs)
		s.workers.Wait()
	}
	s.shutdown()
	return err
}

func (s *Server) loop() error {
	events := make([]unix.EpollEvent, 256)
	var e *echoer
	if s.cfg.Workers == 0 {
		e = s.newEchoer() // inline mode: one read buffer (and pipe) for every connection
		defer e.close()
	}
	lastYield := time.Now()
	for {
		n, err := unix.EpollWait(s.epfd, events, -1)
		if err == unix.EINTR {
			// A signal interrupted the wait (Go's scheduler preempts threads with SIGURG);
			// epoll_wait is never restarted automatically, whatever SA_RESTART says (signal(7)).
			if s.trace != nil && s.traceEINTR {
				s.trace.Sys(-1, err, "epoll_wait(%d, ..., %d, -1)", s.epfd, len(events))
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("epoll_wait: %w", err)
		}
		s.Stats.Wakeups.Add(1)
		if !s.cfg.NoYield {
			lastYield = yieldIfDue(lastYield, time.Now())
		}
		if s.trace != nil {
			s.trace.Sys(n, nil, "epoll_wait(%d, %s, %d, -1)", s.epfd, EventsString(events[:n]), len(events))
		}
		for _, ev := range events[:n] {
			switch fd := int(ev.Fd); {
			case fd == s.wakefd && ev.Pad == 0:
				return nil
			case fd == s.lfd && ev.Pad == 0:
				s.acceptReady()
			default:
				c := s.lookup(ev)
				if c == nil {
					// A report for a connection that is gone. Defence in depth: one
					// epoll_wait reports an entry once, and the server closes a connection
					// (after EPOLL_CTL_DEL) only while handling its own report, so none comes.
					continue
				}
				if s.jobs != nil {
					s.jobs <- job{c, ev.Events}
					continue
				}
				open, wantOut := s.serveConn(c, ev.Events, e)
				if open {
					s.arm(c, wantOut)
				}
			}
		}
	}
}

// yieldEvery is how often the event loop yields to Go's scheduler: well under the 10 ms after
// which the runtime preempts a goroutine (forcePreemptNS in runtime/proc.go).
const yieldEvery = 4 * time.Millisecond

// yieldIfDue calls runtime.Gosched when yieldEvery has passed between last and now, and
// returns the time of the latest yield. Why: the event loop never parks in Go's scheduler (it waits in
// epoll_wait, a system call), so its P's scheduling tick never changes. The runtime's monitor
// thread, sysmon, takes a goroutine that has held one tick for 10 ms for a CPU hog: it
// preempts it with a SIGURG if it runs Go code, or takes its P if it is in a system call
// (the thread must then find a P again on return). Each time it takes a P, sysmon resets its
// own sleep from 10 ms to 20 µs and wakes about 50 times in the next millisecond (sysmon
// and retake in runtime/proc.go). On this course's VM that
// was about 1 100 sysmon wake-ups and 55 SIGURGs a second under load (counted with perf
// stat); yielding every 4 ms leaves about 125 and none, for about 300 more futex calls a second
// (Gosched wakes an idle thread to look for work: wakep).
// BenchmarkServerVariants measures it (-noyield to compare).
func yieldIfDue(last, now time.Time) time.Time {
	if now.Sub(last) < yieldEvery {
		return last
	}
	runtime.Gosched()
	return now
}

func (s *Server) worker(id int) {
	defer s.workers.Done()
	e := s.newEchoer()
	defer e.close()
	for j := range s.jobs {
		c := j.c
		if c.owned.Swap(true) {
			s.Stats.Overlaps.Add(1) // EPOLLONESHOT makes this impossible; counted to prove it
		}
		if s.trace != nil {
			s.trace.Say("worker %d takes fd %d {%s}", id, c.fd, EventString(j.events))
		}
		open, wantOut := s.serveConn(c, j.events, e)
		c.owned.Store(false)
		if s.trace != nil && open {
			s.trace.Say("worker %d is done with fd %d and re-arms it", id, c.fd)
		}
		if open {
			s.arm(c, wantOut) // EPOLL_CTL_MOD re-arms the one-shot entry: the fd is reported again
		}
	}
}

// lookup finds the connection an event is about, or nil if that connection is gone: epoll_data
// carries the fd and a generation, because fd numbers are reused at once after close().
func (s *Server) lookup(ev unix.EpollEvent) *conn {
	fd := int(ev.Fd)
	if fd < 0 || fd >= len(s.conns) {
		return nil
	}
	c := s.conns[fd].Load()
	if c == nil || c.gen != ev.Pad {
		return nil
	}
	return c
}

// acceptReady accepts after the listener was reported readable: one connection in
// level-triggered mode (the kernel reports again while the accept queue is not empty), every
// waiting connection in edge-triggered mode (no report comes for those already queued).
func (s *Server) acceptReady() {
	for {
		nfd, err := acceptNoAddr(s.lfd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		if s.trace != nil {
			s.trace.Sys(nfd, err, "accept4(%d, NULL, NULL, SOCK_NONBLOCK|SOCK_CLOEXEC)", s.lfd)
		}
		switch {
		case err == nil:
			s.register(nfd)
		case err == unix.EAGAIN:
			return
		case err == unix.EINTR, err == unix.ECONNABORTED:
			continue // the connection was reset while queued; try the next
		case err == unix.EMFILE, err == unix.ENFILE:
			if !s.shed() {
				return
			}
			continue
		default:
			// Something else (EPERM from a security module, ENOBUFS, ENOMEM) may leave the
			// connection queued: level-triggered, the listener would be reported again at
			// once and the loop would spin printing this. Stop listening for a moment instead.
			s.n.Say("accept4: %v; not accepting for %v", err, acceptBackoff)
			s.mu.Lock()
			s.pauseListenerLocked()
			s.mu.Unlock()
			time.AfterFunc(acceptBackoff, s.resumeListener)
			return
		}
		if !s.cfg.EdgeTriggered {
			return
		}
	}
}

// acceptNoAddr is accept4(lfd, NULL, NULL, flags): the server has no use for the peer's
// address, and accept(2) fills it in only when asked. unix.Accept4 always asks, and returns
// it as a Sockaddr: two heap objects per connection (its RawSockaddrAny buffer escapes, 112 B,
// and the SockaddrInet4, 32 B) that the server would throw away at once. Go collects them
// only when its heap has grown enough (at first 4 MB), so until then they stay in the
// server's memory: they were about two thirds of its RSS growth per idle connection
// (BenchmarkVersusC, docs/06-epoll-server.md "As fast as C?").
func acceptNoAddr(lfd, flags int) (int, error) {
	nfd, _, errno := unix.Syscall6(unix.SYS_ACCEPT4, uintptr(lfd), 0, 0, uintptr(flags), 0, 0)
	if errno != 0 {
		return -1, errno
	}
	return int(nfd), nil
}

// acceptBackoff is how long the listener stays disarmed after an unexpected accept4 error.
const acceptBackoff = 100 * time.Millisecond

// shed handles EMFILE/ENFILE: the connection waiting in the accept queue keeps the listener
// readable, so a level-triggered loop that just retries spins at 100% CPU. Give back the
// reserve fd, accept the connection, close it (the client sees an orderly close instead of
// hanging), and take the reserve again. It reports whether a connection was shed and the
// reserve is back, so that the accept loop may go on.
//
// If the reserve cannot be taken again, the listener is disarmed until a connection closes
// (reserveOrPause). Edge-triggered, that is what brings the report back: the connection still
// queued would get none, and a close re-arms the listener with EPOLL_CTL_MOD, which looks at
// the accept queue at once (TestEMFILEWithoutReservePausesListener).
func (s *Server) shed() bool {
	if s.reservefd < 0 && !s.reserveOrPause() {
		return false
	}
	err := unix.Close(s.reservefd)
	if s.trace != nil {
		s.trace.Sys(0, err, "close(%d)  (the reserve fd, to accept and shed)", s.reservefd)
	}
	s.reservefd = -1
	nfd, err := acceptNoAddr(s.lfd, unix.SOCK_CLOEXEC)
	if s.trace != nil {
		s.trace.Sys(nfd, err, "accept4(%d, NULL, NULL, SOCK_CLOEXEC)", s.lfd)
	}
	if err == nil {
		err := unix.Close(nfd)
		if s.trace != nil {
			s.trace.Sys(0, err, "close(%d)  (shed: the client reads EOF)", nfd)
		}
		s.Stats.Shed.Add(1)
	}
	return s.reserveOrPause() && err == nil
}

// openReserve opens the reserve fd again; it stays -1 if no fd is free.
func (s *Server) openReserve() {
	fd, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if s.trace != nil {
		s.trace.Sys(fd, err, `open("/dev/null", O_RDONLY|O_CLOEXEC)  (the reserve fd)`)
	}
	if err == nil {
		s.reservefd = fd
	}
}

// reserveOrPause opens the reserve fd again or, when no fd is free, disarms the listener
// until a connection closes, and reports whether the reserve is back. Both happen under mu,
// and close frees its fd before it takes mu (resumeListener): a close that came first left
// an fd for the open here, and one that comes later finds paused set and re-arms. Testing
// for a free fd first and setting paused later, without the lock, lost that re-arm when a
// worker closed its connection in between, leaving the listener disarmed with an fd free.
// (Should another goroutine take that fd first — a worker's pipe2 with -splice — the
// listener stays paused until the next connection closes.)
func (s *Server) reserveOrPause() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.openReserve()
	if s.reservefd >= 0 {
		return true
	}
	s.pauseListenerLocked()
	return false
}

// pauseListenerLocked disarms the listener (no events) until resumeListener; s.mu is held.
func (s *Server) pauseListenerLocked() {
	if s.paused {
		return
	}
	ev := unix.EpollEvent{Events: 0, Fd: int32(s.lfd)}
	err := unix.EpollCtl(s.epfd, unix.EPOLL_CTL_MOD, s.lfd, &ev)
	if s.trace != nil {
		s.trace.Sys(0, err, "epoll_ctl(%d, EPOLL_CTL_MOD, %d, {%s})  (listener paused)", s.epfd, s.lfd, EventString(0))
	}
	s.paused = err == nil
}

// resumeListener re-arms a paused listener: after a connection closed (an fd is free), or
// when the accept back-off ends. EPOLL_CTL_MOD checks readiness at once, so connections
// that queued meanwhile are reported straight away, also edge-triggered.
func (s *Server) resumeListener() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.paused || s.epfd < 0 { // not paused, or shut down before the back-off timer fired
		return
	}
	events := s.readEvents() &^ (unix.EPOLLRDHUP | unix.EPOLLONESHOT)
	ev := unix.EpollEvent{Events: events, Fd: int32(s.lfd)}
	err := unix.EpollCtl(s.epfd, unix.EPOLL_CTL_MOD, s.lfd, &ev)
	if s.trace != nil {
		s.trace.Sys(0, err, "epoll_ctl(%d, EPOLL_CTL_MOD, %d, {%s})  (listener re-armed)", s.epfd, s.lfd, EventString(events))
	}
	s.paused = err != nil
}

func (s *Server) register(fd int) {
	if fd >= len(s.conns) { // only if someone raised our RLIMIT_NOFILE from outside
		unix.Close(fd)
		s.Stats.Shed.Add(1)
		return
	}
	s.nextGen++
	if s.nextGen <= 0 {
		s.nextGen = 1 // generation 0 marks the listener and the eventfd
	}
	c := &conn{fd: fd, gen: s.nextGen}
	c.armed = s.readEvents()
	s.conns[fd].Store(c)
	ev := unix.EpollEvent{Events: c.armed, Fd: int32(fd), Pad: c.gen}
	if err := unix.EpollCtl(s.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		s.conns[fd].Store(nil)
		unix.Close(fd)
		return
	}
	if s.trace != nil {
		s.trace.Sys(0, nil, "epoll_ctl(%d, EPOLL_CTL_ADD, %d, {%s})", s.epfd, fd, EventString(c.armed))
	}
	s.Stats.Accepted.Add(1)
}

// readEvents is the interest of a connection the server wants to read from.
func (s *Server) readEvents() uint32 {
	ev := uint32(unix.EPOLLIN | unix.EPOLLRDHUP)
	if s.cfg.EdgeTriggered {
		ev |= unix.EPOLLET
	}
	if s.cfg.Workers > 0 {
		ev |= unix.EPOLLONESHOT
	}
	return ev
}

// arm sets the connection's interest: readable, or — while output is pending — writable only.
// Not asking for EPOLLIN then is the backpressure: the kernel's receive buffer fills, its
// window closes, and the client's send() blocks, while the server holds at most one chunk.
// (EPOLLRDHUP is left out too: level-triggered, it would be reported again and again.)
func (s *Server) arm(c *conn, wantOut bool) {
	events := s.readEvents()
	if wantOut {
		events = unix.EPOLLOUT | events&(unix.EPOLLET|unix.EPOLLONESHOT)
	}
	if s.cfg.Workers == 0 { // inline mode: skip the system call when nothing changes
		if events == c.armed {
			return
		}
		c.armed = events
	}
	ev := unix.EpollEvent{Events: events, Fd: int32(c.fd), Pad: c.gen}
	err := unix.EpollCtl(s.epfd, unix.EPOLL_CTL_MOD, c.fd, &ev)
	if s.trace != nil {
		s.trace.Sys(0, err, "epoll_ctl(%d, EPOLL_CTL_MOD, %d, {%s})", s.epfd, c.fd, EventString(events))
	}
}

// serveConn handles one readiness report for a connection and reports whether it is still
// open and whether it now waits for EPOLLOUT.
func (s *Server) serveConn(c *conn, events uint32, e *echoer) (open, wantOut bool) {
	if c.out != nil || c.pipe != nil {
		// Output was pending, so the fd was armed for EPOLLOUT only.
		if open, pending := s.flush(c, e); !open || pending {
			return open, pending
		}
		// Drained: fall through and read again (data may have waited all along; in
		// edge-triggered mode no new report would come for it).
	}
	for {
		var n int
		var err error
		spliced := s.cfg.Splice && s.havePipe(e)
		if spliced {
			n, err = spliceNonblocking(c.fd, e.pipe.w, len(e.buf))
			if s.trace != nil {
				s.trace.Sys(n, err, "splice(%d, NULL, %d, NULL, %d, SPLICE_F_MOVE|SPLICE_F_NONBLOCK)", c.fd, e.pipe.w, len(e.buf))
			}
		} else {
			n, err = s.read(c.fd, e.buf)
			if s.trace != nil {
				s.trace.Sys(n, err, "read(%d, ..., %d)", c.fd, len(e.buf))
			}
		}
		switch {
		case err == nil && n > 0:
			s.simulateWork()
			var pending bool
			if spliced {
				open, pending = s.spliceOut(c, e, n)
			} else {
				open, pending = s.send(c, e.buf[:n])
			}
			if !open || pending {
				return open, pending
			}
			if !s.cfg.EdgeTriggered {
				return true, false // level-triggered: the kernel reports again if more is waiting
			}
		case err == nil: // read() = 0: the peer sent FIN (EPOLLRDHUP said so) and all is echoed
			s.close(c)
			return false, false
		case err == unix.EAGAIN:
			return true, false
		case err == unix.EINTR:
		default: // ECONNRESET: the peer sent RST
			s.Stats.Resets.Add(1)
			s.close(c)
			return false, false
		}
	}
}

// sendFlags: MSG_NOSIGNAL turns "peer is gone" into EPIPE instead of SIGPIPE, whose default
// action kills a C server (send(2)). Go's runtime ignores SIGPIPE on sockets, but the flag is
// what makes this code correct in any language.
const sendFlags = unix.MSG_NOSIGNAL

// send writes p, keeping what the kernel will not take yet in c.out.
func (s *Server) send(c *conn, p []byte) (open, pending bool) {
	for len(p) > 0 {
		n, err := s.sendmsg(c.fd, p, sendFlags)
		if s.trace != nil {
			s.trace.Sys(n, err, "sendmsg(%d, ..., %d bytes, MSG_NOSIGNAL)", c.fd, len(p))
		}
		switch {
		case err == nil:
			p = p[n:]
		case err == unix.EINTR:
		case err == unix.EAGAIN:
			c.out = append([]byte(nil), p...) // at most one chunk: no read until it drains
			s.Stats.Backpressured.Add(1)
			return true, true
		default: // EPIPE or ECONNRESET: the peer reset the connection while we were writing
			s.Stats.Resets.Add(1)
			s.close(c)
			return false, false
		}
	}
	return true, false
}

// spliceOut moves the n bytes that the event loop's (or worker's) pipe holds into the
// connection's socket. If the socket takes only part of them, the connection keeps the pipe
// with the rest, and the echoer makes a new pipe when it next needs one.
func (s *Server) spliceOut(c *conn, e *echoer, n int) (open, pending bool) {
	c.pipe, e.pipe = e.pipe, nil
	c.pipe.pending = n
	open, pending = s.drainPipe(c)
	if pending {
		s.Stats.Backpressured.Add(1)
	} else if open {
		e.takeBack(c)
	}
	return open, pending
}

// drainPipe splices the connection's pending bytes from its pipe into its socket.
// splice(2) has no MSG_NOSIGNAL: its EPIPE comes with a SIGPIPE (TestSendAfterResetReturnsErrno),
// so a C server must ignore SIGPIPE; Go's runtime ignores it for fds other than 1 and 2
// (os/signal, "SIGPIPE").
func (s *Server) drainPipe(c *conn) (open, pending bool) {
	for c.pipe.pending > 0 {
		n, err := spliceNonblocking(c.pipe.r, c.fd, c.pipe.pending)
		if s.trace != nil {
			s.trace.Sys(n, err, "splice(%d, NULL, %d, NULL, %d, SPLICE_F_MOVE|SPLICE_F_NONBLOCK)", c.pipe.r, c.fd, c.pipe.pending)
		}
		switch {
		case err == nil:
			c.pipe.pending -= n
		case err == unix.EINTR:
		case err == unix.EAGAIN:
			return true, true
		default: // EPIPE or ECONNRESET
			s.Stats.Resets.Add(1)
			s.close(c) // closes the pipe too: what it holds is for a peer that is gone
			return false, false
		}
	}
	return true, false
}

// flush sends pending output after EPOLLOUT.
func (s *Server) flush(c *conn, e *echoer) (open, pending bool) {
	if c.pipe != nil {
		open, pending = s.drainPipe(c)
		if open && !pending {
			e.takeBack(c)
		}
		return open, pending
	}
	p := c.out
	c.out = nil
	open, pending = s.send(c, p)
	if pending {
		s.Stats.Backpressured.Add(-1) // still the same episode
	}
	return open, pending
}

func (s *Server) simulateWork() {
	if s.cfg.Work <= 0 {
		return
	}
	// Busy work, not a sleep: it stands for parsing or computing, which holds a CPU.
	deadline := time.Now().Add(s.cfg.Work)
	x := uint64(1)
	for time.Now().Before(deadline) {
		for range 64 {
			x = x*6364136223846793005 + 1442695040888963407
		}
	}
	workSink.Add(x)
}

var workSink atomic.Uint64

func (s *Server) close(c *conn) {
	s.conns[c.fd].Store(nil)
	if c.pipe != nil {
		if s.trace != nil {
			s.trace.Say("close(%d), close(%d): the connection's pipe, with %d bytes it can no longer send", c.pipe.r, c.pipe.w, c.pipe.pending)
		}
		c.pipe.close()
		c.pipe = nil
	}
	// Deleting before close matters when the fd was dup'ed: epoll watches the open file, and
	// close() removes the entry only when the last descriptor of it goes (epoll(7), Q6).
	err := unix.EpollCtl(s.epfd, unix.EPOLL_CTL_DEL, c.fd, nil)
	if s.trace != nil {
		s.trace.Sys(0, err, "epoll_ctl(%d, EPOLL_CTL_DEL, %d, NULL)", s.epfd, c.fd)
	}
	err = unix.Close(c.fd)
	if s.trace != nil {
		s.trace.Sys(0, err, "close(%d)", c.fd)
	}
	s.Stats.Closed.Add(1)
	s.resumeListener() // an fd is free again: listen for connections again if paused
}

// shutdown closes every connection and then the server's own fds.
func (s *Server) shutdown() {
	open := 0
	for i := range s.conns {
		if c := s.conns[i].Load(); c != nil {
			s.conns[i].Store(nil)
			if c.pipe != nil {
				c.pipe.close()
			}
			unix.Close(c.fd)
			open++
		}
	}
	s.n.Say("closed %d open connection(s); accepted %d, shed %d (EMFILE), resets %d, backpressure %d",
		open, s.Stats.Accepted.Load(), s.Stats.Shed.Load(), s.Stats.Resets.Load(), s.Stats.Backpressured.Load())
	s.closeAll()
}

func (s *Server) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, fd := range []*int{&s.lfd, &s.reservefd, &s.wakefd, &s.epfd} {
		if *fd >= 0 {
			err := unix.Close(*fd)
			s.n.Sys(0, err, "close(%d)", *fd)
			*fd = -1
		}
	}
}

// EventString renders an epoll event mask as strace does: EPOLLIN|EPOLLRDHUP.
func EventString(ev uint32) string {
	var names []string
	for _, f := range []struct {
		bit  uint32
		name string
	}{
		{unix.EPOLLIN, "EPOLLIN"}, {unix.EPOLLOUT, "EPOLLOUT"}, {unix.EPOLLRDHUP, "EPOLLRDHUP"},
		{unix.EPOLLERR, "EPOLLERR"}, {unix.EPOLLHUP, "EPOLLHUP"},
		{unix.EPOLLONESHOT, "EPOLLONESHOT"}, {unix.EPOLLET, "EPOLLET"},
	} {
		if ev&f.bit != 0 {
			names = append(names, f.name)
			ev &^= f.bit
		}
	}
	if ev != 0 || len(names) == 0 {
		names = append(names, fmt.Sprintf("%#x", ev))
	}
	return strings.Join(names, "|")
}

// EventsString renders epoll_wait's result array: [{EPOLLIN, fd 7}, ...].
func EventsString(evs []unix.EpollEvent) string {
	parts := make([]string, len(evs))
	for i, ev := range evs {
		parts[i] = fmt.Sprintf("{%s, fd %d}", EventString(ev.Events), ev.Fd)
	}
	return "[" + strings.Join(parts, ", ") + "]"
}

func familyName(f int) string {
	if f == unix.AF_INET6 {
		return "AF_INET6"
	}
	return "AF_INET"
}

func openFlags(f int) string {
	var names []string
	acc := f & unix.O_ACCMODE
	switch acc {
	case unix.O_RDONLY:
		names = append(names, "O_RDONLY")
	case unix.O_WRONLY:
		names = append(names, "O_WRONLY")
	case unix.O_RDWR:
		names = append(names, "O_RDWR")
	}
	if f&unix.O_NONBLOCK != 0 {
		names = append(names, "O_NONBLOCK")
	}
	return strings.Join(names, "|")
}

// read and sendmsg are the connection I/O: readNonblocking and sendmsgNonblocking, or with
// -gosyscall the x/sys calls that go through Syscall.
func (s *Server) read(fd int, p []byte) (int, error) {
	if s.cfg.GoSyscall {
		return unix.Read(fd, p)
	}
	return readNonblocking(fd, p)
}

func (s *Server) sendmsg(fd int, p []byte, flags int) (int, error) {
	if s.cfg.GoSyscall {
		return unix.SendmsgN(fd, p, nil, nil, flags)
	}
	return sendmsgNonblocking(fd, p, flags)
}

// readNonblocking is read(2) on a non-blocking socket, and sendmsgNonblocking is
// sendmsg(2) of one buffer: the same system calls as unix.Read and unix.SendmsgN, entered
// with RawSyscall instead of Syscall. Syscall first tells Go's scheduler that the thread may
// block (entersyscall, then exitsyscall on return) so that the runtime can hand this
// thread's P to another thread meanwhile. On a non-blocking socket neither call waits for
// the network (EAGAIN instead); it may only sleep briefly on the socket's lock or for
// memory, and for that the bookkeeping is not worth its cost: about 65 ns a call on this
// course's VM (BenchmarkReadEntry), two calls per echoed message. epoll_wait, which does
// block, keeps Syscall. The unsafe.Pointer conversions sit in the call expression, where the
// compiler keeps the buffer alive for the call (package unsafe, rule 4). Unlike unix.Read,
// RawSyscall tells the race detector nothing, so raceWrote and raceRead do (race.go).
func readNonblocking(fd int, p []byte) (int, error) {
	n, _, errno := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
	if errno != 0 {
		return -1, errno // as unix.Read and unix.SendmsgN report a failed call
	}
	raceWrote(p[:n])
	return int(n), nil
}

func sendmsgNonblocking(fd int, p []byte, flags int) (int, error) {
	raceRead(p)
	iov := unix.Iovec{Base: unsafe.SliceData(p)}
	iov.SetLen(len(p))
	msg := unix.Msghdr{Iov: &iov, Iovlen: 1}
	n, _, errno := unix.RawSyscall(unix.SYS_SENDMSG, uintptr(fd), uintptr(unsafe.Pointer(&msg)), uintptr(flags))
	if errno != 0 {
		return -1, errno // as unix.Read and unix.SendmsgN report a failed call
	}
	return int(n), nil
}

// echoer is what one goroutine that serves connections (the event loop, or one worker)
// echoes through: a read buffer and, in -splice mode, a pipe.
type echoer struct {
	buf  []byte
	pipe *pipe // empty whenever the echoer holds it; nil until made or after a connection kept it
}

func (s *Server) newEchoer() *echoer {
	return &echoer{buf: make([]byte, s.cfg.ChunkSize)}
}

// havePipe makes the echoer's pipe if it has none. When it cannot (EMFILE, ENFILE), the
// echo falls back to read and sendmsg for this message.
func (s *Server) havePipe(e *echoer) bool {
	if e.pipe == nil {
		var err error
		e.pipe, err = newPipe()
		if s.trace != nil {
			if err == nil {
				s.trace.Sys(0, nil, "pipe2([%d, %d], O_NONBLOCK|O_CLOEXEC)", e.pipe.r, e.pipe.w)
			} else {
				s.trace.Sys(-1, err, "pipe2(..., O_NONBLOCK|O_CLOEXEC)")
			}
		}
	}
	return e.pipe != nil
}

// takeBack takes a connection's pipe once it is empty again: it becomes the echoer's pipe, or
// is closed if the echoer has made another meanwhile.
func (e *echoer) takeBack(c *conn) {
	if e.pipe == nil {
		e.pipe = c.pipe
	} else {
		c.pipe.close()
	}
	c.pipe = nil
}

func (e *echoer) close() {
	if e.pipe != nil {
		e.pipe.close()
		e.pipe = nil
	}
}

// pipe is a pipe(2) that -splice mode echoes through: splice(2) moves the request from the
// socket's receive queue into the pipe and on into the socket's send queue as references to
// the same pages. A pipe holds at most 16 pages by default (pipe(7), "Pipe capacity"), so it
// also bounds a connection's pending output.
type pipe struct {
	r, w    int
	pending int // bytes in the pipe (0 whenever an echoer holds it)
}

func newPipe() (*pipe, error) {
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		return nil, err
	}
	return &pipe{r: fds[0], w: fds[1]}, nil
}

func (p *pipe) close() {
	unix.Close(p.r)
	unix.Close(p.w)
}

// spliceNonblocking is splice(2) between a non-blocking socket and a pipe, entered with
// RawSyscall for the reason readNonblocking is. SPLICE_F_NONBLOCK makes the pipe side not
// wait either; SPLICE_F_MOVE is only a hint (splice(2)).
func spliceNonblocking(from, to, n int) (int, error) {
	r, _, errno := unix.RawSyscall6(unix.SYS_SPLICE, uintptr(from), 0, uintptr(to), 0, uintptr(n),
		unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
	if errno != 0 {
		return -1, errno
	}
	return int(r), nil
}
