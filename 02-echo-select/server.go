//go:build linux

package main

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"socklab/internal/lab"
)

// The server: one thread, one loop, many clients (UNP §6.8, "TCP echo server using select").
//
//	socket → SO_REUSEADDR → bind → listen → pipe (the self-pipe, for signals)
//	loop:  build the fd sets → select (or poll) → accept / read+echo / flush buffered output
//
// Every client socket is non-blocking (accept4 with SOCK_NONBLOCK): select says "readable" or
// "writable", never "this whole write fits", so a write may be partial and the rest waits in the
// client's own buffer until select reports the socket writable again.

// defaultMaxLine is UNP's MAXLINE: the size of each client's buffer, and so the most bytes the
// server ever holds for one client.
const defaultMaxLine = 4096

// serverConfig is what the server role's flags set.
type serverConfig struct {
	addr    netip.AddrPort
	maxLine int  // per-client buffer: read at most this much, hold at most this much
	poll    bool // wait with poll(2) instead of select(2)
	trace   bool // narrate every select/poll, read and write (the demo and -trace)
	// fillFDsTo, when > 0, occupies descriptors (copies of /dev/null) until this number is the
	// lowest free one, so the next accepted client gets it: the FD_SETSIZE lab.
	fillFDsTo int
}

// clientConn is what the server keeps per client: its socket and the bytes read from it that
// the kernel has not yet taken back (out never grows past maxLine: the memory bound).
type clientConn struct {
	fd   int
	peer netip.AddrPort
	out  []byte // len = bytes waiting to be echoed; cap = maxLine, allocated once
	eof  bool   // the client sent FIN (read returned 0): finish echoing, then close
}

// server is the select/poll echo server. Step and serve run on one goroutine; stop may be
// called from any goroutine (a signal handler, a test).
type server struct {
	n     *lab.Narrator
	cfg   serverConfig
	lfd   int
	addr  netip.AddrPort
	wakeR int // self-pipe read end: readable means "stop"
	wakeW int
	// clients by fd, and the fds in ascending order (the order select's bits come back in).
	clients map[int]*clientConn
	fds     []int
	fillers []int
	// acceptPaused is set when accept4 failed with EMFILE/ENFILE: the listener would stay
	// readable and spin the loop, so it leaves the read set until a client goes away.
	acceptPaused bool

	mu     sync.Mutex // guards wakeW against stop() racing close()
	closed bool
	tid    atomic.Int64 // the OS thread blocked in select/poll, for the EINTR test
}

// errStopped is what step returns once the self-pipe said stop and every fd is closed.
var errStopped = errors.New("server stopped")

// listenServer makes the listening socket, narrating each system call in order.
func listenServer(n *lab.Narrator, cfg serverConfig) (*server, error) {
	if cfg.maxLine <= 0 {
		cfg.maxLine = defaultMaxLine
	}
	family := unix.AF_INET
	if cfg.addr.Addr().Is6() {
		family = unix.AF_INET6
	}
	s := &server{n: n, cfg: cfg, lfd: -1, wakeR: -1, wakeW: -1, clients: map[int]*clientConn{}}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err := n.Sys(fd, err, "socket(%s, SOCK_STREAM|SOCK_CLOEXEC, 0)", familyName(family)); err != nil {
		return nil, err
	}
	s.lfd = fd
	// SO_REUSEADDR so a restarted server can bind while old connections sit in TIME_WAIT
	// (docs/04-reuseaddr.md).
	err = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	if err := n.Sys(0, err, "setsockopt(%d, SOL_SOCKET, SO_REUSEADDR, [1], 4)", fd); err != nil {
		s.close()
		return nil, err
	}
	sa := lab.SockaddrOf(cfg.addr)
	err = unix.Bind(fd, sa)
	if err := n.Sys(0, err, "bind(%d, %s)", fd, lab.Sockaddr(sa)); err != nil {
		s.close()
		return nil, err
	}
	// A non-blocking listener: a client that connects and resets before we call accept would
	// otherwise block the whole loop in accept (UNP §16.6).
	err = unix.Listen(fd, unix.SOMAXCONN)
	if err := n.Sys(0, err, "listen(%d, SOMAXCONN)", fd); err != nil {
		s.close()
		return nil, err
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		s.close()
		return nil, err
	}
	bound, err := unix.Getsockname(fd)
	if err != nil {
		s.close()
		return nil, err
	}
	s.addr = lab.AddrPortOf(bound)
	// The self-pipe trick: a signal cannot be "selected", so the signal handler writes one
	// byte into a pipe whose read end is in the read set.
	var p [2]int
	err = unix.Pipe2(p[:], unix.O_NONBLOCK|unix.O_CLOEXEC)
	if err := n.Sys(0, err, "pipe2([%d, %d], O_NONBLOCK|O_CLOEXEC)", p[0], p[1]); err != nil {
		s.close()
		return nil, err
	}
	s.wakeR, s.wakeW = p[0], p[1]
	if cfg.fillFDsTo > 0 {
		if err := s.fillFDs(cfg.fillFDsTo); err != nil {
			s.close()
			return nil, err
		}
	}
	return s, nil
}

func familyName(f int) string {
	if f == unix.AF_INET6 {
		return "AF_INET6"
	}
	return "AF_INET"
}

// fillFDs raises the soft RLIMIT_NOFILE if needed (never above the hard limit) and opens
// copies of /dev/null until target is the lowest free descriptor.
func (s *server) fillFDs(target int) error {
	var lim unix.Rlimit
	err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim)
	if err := s.n.Sys(0, err, "getrlimit(RLIMIT_NOFILE, {rlim_cur=%d, rlim_max=%d})", lim.Cur, lim.Max); err != nil {
		return err
	}
	want := uint64(target) + 64 // room for the clients after the fillers
	if lim.Cur < want {
		if lim.Max < want {
			return fmt.Errorf("-fill-fds-to %d needs RLIMIT_NOFILE ≥ %d but the hard limit is %d", target, want, lim.Max)
		}
		lim.Cur = want
		err = unix.Setrlimit(unix.RLIMIT_NOFILE, &lim)
		if err := s.n.Sys(0, err, "setrlimit(RLIMIT_NOFILE, {rlim_cur=%d, rlim_max=%d})", lim.Cur, lim.Max); err != nil {
			return err
		}
	} else {
		s.n.Say("The soft limit is already %d (Go raises it to the hard limit at start-up), enough for fd %d.", lim.Cur, target)
	}
	null, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	s.fillers = append(s.fillers, null)
	for range target { // bounded: each dup takes one more number below target
		fd, err := unix.FcntlInt(uintptr(null), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("dup /dev/null: %w", err)
		}
		if fd >= target {
			unix.Close(fd)
			break
		}
		s.fillers = append(s.fillers, fd)
	}
	s.n.Say("opened /dev/null as fd %d and copied it with fcntl(F_DUPFD_CLOEXEC) up to fd %d: the next fd is %d", null, s.fillers[len(s.fillers)-1], target)
	return nil
}

// interest is one fd the loop waits on, and for what.
type interest struct {
	fd          int
	read, write bool
}

// ready is one fd the kernel reported, and how.
type ready struct {
	fd          int
	read, write bool
}

// interests lists what to wait for this round: the self-pipe, the listener (unless accept is
// paused), and each client — for reading only while its buffer has room and it has not sent
// FIN (that is the memory bound: a full buffer stops reading, so the kernel's receive queue
// fills and TCP's window closes on the sender: backpressure 背压), for writing only while
// bytes wait in its buffer.
func (s *server) interests() []interest {
	list := []interest{{fd: s.wakeR, read: true}}
	if !s.acceptPaused {
		list = append(list, interest{fd: s.lfd, read: true})
	}
	for _, fd := range s.fds {
		c := s.clients[fd]
		in := interest{fd: fd, read: !c.eof && len(c.out) < cap(c.out), write: len(c.out) > 0}
		if in.read || in.write {
			list = append(list, in)
		}
	}
	return list
}

// waitSelect is FD_ZERO, FD_SET for each interest, select(maxfd+1, ...), then FD_ISSET for each
// interest: O(maxfd) in the kernel and O(n) here on every call.
func (s *server) waitSelect(list []interest) ([]ready, error) {
	var rset, wset unix.FdSet
	rset.Zero()
	wset.Zero()
	maxfd := -1
	for _, in := range list {
		if in.fd >= unix.FD_SETSIZE { // never: accept refuses such fds; the check keeps FD_SET in range
			return nil, fmt.Errorf("fd %d ≥ FD_SETSIZE in the select loop", in.fd)
		}
		if in.read {
			rset.Set(in.fd)
		}
		if in.write {
			wset.Set(in.fd)
		}
		maxfd = max(maxfd, in.fd)
	}
	before := ""
	if s.cfg.trace {
		before = fmt.Sprintf("select(%d, %s, %s, NULL, NULL)", maxfd+1, fdSetString(&rset, maxfd), fdSetString(&wset, maxfd))
	}
	n, err := unix.Select(maxfd+1, &rset, &wset, nil, nil)
	if s.cfg.trace || err != nil {
		if before == "" {
			before = fmt.Sprintf("select(%d, ...)", maxfd+1)
		}
		s.n.Sys(n, err, "%s", before)
	}
	if err != nil {
		return nil, err
	}
	var out []ready
	for _, in := range list {
		r := ready{fd: in.fd, read: in.read && rset.IsSet(in.fd), write: in.write && wset.IsSet(in.fd)}
		if r.read || r.write {
			out = append(out, r)
		}
	}
	if s.cfg.trace {
		s.n.Result("ready: in %s, out %s", fdSetString(&rset, maxfd), fdSetString(&wset, maxfd))
	}
	return out, nil
}

// waitPoll is the same wait with poll(2): an array of {fd, events} with no FD_SETSIZE limit,
// but still O(n) per call — the kernel polls every entry and we scan every revents.
func (s *server) waitPoll(list []interest) ([]ready, error) {
	pfds := make([]unix.PollFd, len(list))
	for i, in := range list {
		pfds[i].Fd = int32(in.fd)
		if in.read {
			pfds[i].Events |= unix.POLLIN
		}
		if in.write {
			pfds[i].Events |= unix.POLLOUT
		}
	}
	before := ""
	if s.cfg.trace {
		before = fmt.Sprintf("poll(%s, %d, -1)", pollString(pfds, false), len(pfds))
	}
	n, err := unix.Poll(pfds, -1)
	if s.cfg.trace || err != nil {
		if before == "" {
			before = fmt.Sprintf("poll([...], %d, -1)", len(pfds))
		}
		s.n.Sys(n, err, "%s", before)
	}
	if err != nil {
		return nil, err
	}
	var out []ready
	for _, p := range pfds {
		// POLLHUP and POLLERR are reported even when not asked for; a read then returns 0
		// or the error, which is how the loop learns of them.
		r := ready{fd: int(p.Fd),
			read:  p.Revents&(unix.POLLIN|unix.POLLHUP|unix.POLLERR) != 0,
			write: p.Revents&unix.POLLOUT != 0}
		if r.read || r.write {
			out = append(out, r)
		}
	}
	if s.cfg.trace {
		s.n.Result("revents: %s", pollString(pfds, true))
	}
	return out, nil
}

// step is one turn of the loop: wait, then act on every ready fd. It returns errStopped once
// the self-pipe became readable and every fd is closed.
func (s *server) step() error {
	list := s.interests()
	var (
		got []ready
		err error
	)
	if s.cfg.poll {
		got, err = s.waitPoll(list)
	} else {
		got, err = s.waitSelect(list)
	}
	if errors.Is(err, unix.EINTR) {
		// A signal handler ran while we waited (Go's runtime sends signals of its own too);
		// select and poll are never restarted automatically (signal(7)): just wait again.
		return nil
	}
	if err != nil {
		return err
	}
	for _, r := range got {
		switch {
		case r.fd == s.wakeR:
			s.n.Say("the self-pipe is readable: a stop was requested; closing every fd")
			s.close()
			return errStopped
		case r.fd == s.lfd:
			s.accept()
		default:
			c := s.clients[r.fd]
			if c == nil {
				continue
			}
			if r.read {
				s.readFrom(c)
			}
			if s.clients[r.fd] == c && r.write {
				s.flush(c)
			}
		}
	}
	return nil
}

// serve runs step until stop is requested, on one locked OS thread (so a test can interrupt
// exactly that thread's select with a signal).
func (s *server) serve() error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	s.tid.Store(int64(unix.Gettid()))
	for {
		if err := s.step(); err != nil {
			if errors.Is(err, errStopped) {
				return nil
			}
			s.close()
			return err
		}
	}
}

// accept takes one connection off the accept queue.
func (s *server) accept() {
	nfd, sa, err := unix.Accept4(s.lfd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
	peer := lab.AddrPortOf(sa)
	s.n.Sys(nfd, err, "accept4(%d, %s, SOCK_NONBLOCK|SOCK_CLOEXEC)", s.lfd, lab.Sockaddr(sa))
	switch {
	case errors.Is(err, unix.EMFILE), errors.Is(err, unix.ENFILE):
		s.n.Say("out of file descriptors: the listener leaves the read set until a client goes away (the waiting client stays in the accept queue)")
		s.acceptPaused = true
		return
	case err != nil:
		// EAGAIN / ECONNABORTED: the client went away between select and accept (UNP §16.6).
		return
	}
	if !s.cfg.poll && nfd >= unix.FD_SETSIZE {
		// An fd_set is FD_SETSIZE (1024) bits: FD_SET(1024) writes past its end (in C,
		// silent memory corruption; in Go, an index-out-of-range panic). Refuse the client.
		s.n.Say("refusing %v: fd %d ≥ FD_SETSIZE (%d), select(2) cannot watch it", peer, nfd, unix.FD_SETSIZE)
		err := unix.Close(nfd)
		s.n.Sys(0, err, "close(%d)", nfd)
		return
	}
	c := &clientConn{fd: nfd, peer: peer, out: make([]byte, 0, s.cfg.maxLine)}
	s.clients[nfd] = c
	i, _ := slices.BinarySearch(s.fds, nfd)
	s.fds = slices.Insert(s.fds, i, nfd)
	s.n.Say("client %v is fd %d (%d connected)", peer, nfd, len(s.clients))
}

// readFrom reads what fits in the client's buffer and echoes it at once; what the kernel does
// not take stays buffered for the next "writable".
func (s *server) readFrom(c *clientConn) {
	room := c.out[len(c.out):cap(c.out)]
	n, err := unix.Read(c.fd, room)
	if s.cfg.trace || n <= 0 {
		s.n.Sys(n, err, "read(%d, %s, %d)", c.fd, quote(room, n), len(room))
	}
	switch {
	case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EINTR):
		return // spurious readiness: try again next round
	case err != nil:
		// ECONNRESET: the client reset the connection (e.g. SO_LINGER 0); anything buffered
		// for it can never be delivered.
		s.remove(c, "the client reset the connection: "+errnoName(err))
		return
	case n == 0:
		// FIN: the client will send no more. It may still be reading (a client that did
		// shutdown(SHUT_WR)), so buffered bytes are flushed before close.
		c.eof = true
		if len(c.out) == 0 {
			s.remove(c, "read returned 0: the client closed its sending side")
		}
		return
	}
	c.out = c.out[:len(c.out)+n]
	s.flush(c)
}

// flush writes as much of the client's buffer as the kernel takes.
func (s *server) flush(c *clientConn) {
	if len(c.out) == 0 {
		return
	}
	n, err := unix.Write(c.fd, c.out)
	if s.cfg.trace || err != nil {
		s.n.Sys(n, err, "write(%d, %s, %d)", c.fd, quote(c.out, n), len(c.out))
	}
	switch {
	case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EINTR):
		return
	case err != nil:
		// EPIPE or ECONNRESET: the client is gone (Go ignores SIGPIPE for sockets).
		s.remove(c, "write failed: "+errnoName(err))
		return
	}
	rest := copy(c.out, c.out[n:])
	c.out = c.out[:rest]
	if rest > 0 && s.cfg.trace {
		s.n.Say("partial write: %d of %d bytes taken; %d wait in fd %d's buffer for writefds", n, n+rest, rest, c.fd)
	}
	if rest == 0 && c.eof {
		s.remove(c, "the client closed its sending side and everything was echoed")
	}
}

// remove closes a client's socket and forgets it.
func (s *server) remove(c *clientConn, why string) {
	err := unix.Close(c.fd)
	s.n.Sys(0, err, "close(%d)", c.fd)
	delete(s.clients, c.fd)
	if i, ok := slices.BinarySearch(s.fds, c.fd); ok {
		s.fds = slices.Delete(s.fds, i, i+1)
	}
	s.acceptPaused = false // a descriptor is free again
	s.n.Say("client %v (fd %d) removed: %s (%d connected)", c.peer, c.fd, why, len(s.clients))
}

// stop asks the loop to close everything and return; safe from any goroutine, and harmless
// after the server closed.
func (s *server) stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		k, err := unix.Write(s.wakeW, []byte{1}) // the pipe is non-blocking; one byte is enough
		s.n.Sys(k, err, "write(%d, \"\\1\", 1)  /* self-pipe */", s.wakeW)
	}
}

// close closes every fd the server holds: clients, listener, self-pipe, fillers.
func (s *server) close() {
	for _, fd := range s.fds {
		unix.Close(s.clients[fd].fd)
	}
	s.clients, s.fds = map[int]*clientConn{}, nil
	for _, fd := range s.fillers {
		unix.Close(fd)
	}
	s.fillers = nil
	if s.lfd >= 0 {
		unix.Close(s.lfd)
		s.lfd = -1
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		s.closed = true
		if s.wakeR >= 0 {
			unix.Close(s.wakeR)
			unix.Close(s.wakeW)
		}
	}
}

// runServer is the server role: flags, listen, and the loop until SIGINT/SIGTERM.
func runServer(args []string, stdout, _ io.Writer) error {
	fs := lab.NewFlagSet("server", stdout)
	addrFlag := fs.String("addr", "127.0.0.1:9000", "address to listen on (IP:PORT; port 0 picks one)")
	maxLine := fs.Int("max-line", defaultMaxLine, "per-client buffer in bytes: the most the server holds for one client")
	usePoll := fs.Bool("poll", false, "wait with poll(2) instead of select(2)")
	trace := fs.Bool("trace", false, "print every select/poll, read and write")
	fill := fs.Int("fill-fds-to", 0, "occupy fds with /dev/null until this one is the lowest free (try 1024)")
	if err := lab.ParseFlags(fs, args); err != nil {
		return err
	}
	addr, err := lab.ParseAddrPort("addr", *addrFlag)
	if err != nil {
		return err
	}
	if *maxLine < 1 || *maxLine > 1<<20 {
		return lab.Usagef("-max-line %d out of range (want 1 to 1048576 bytes)", *maxLine)
	}
	if *fill < 0 || *fill > 1<<20 {
		return lab.Usagef("-fill-fds-to %d out of range (want 0 to 1048576)", *fill)
	}
	n := lab.NewNarrator(stdout, false)
	cfg := serverConfig{addr: addr, maxLine: *maxLine, poll: *usePoll, trace: *trace, fillFDsTo: *fill}
	s, err := listenServer(n, cfg)
	if err != nil {
		return err
	}
	loop := "select"
	if cfg.poll {
		loop = "poll"
	}
	n.Say("listening on %v (%s loop, max-line %d); Ctrl-C to stop", s.addr, loop, cfg.maxLine)

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, unix.SIGINT, unix.SIGTERM)
	defer signal.Stop(sigs)
	done := make(chan struct{})
	defer close(done)
	go func() { // the "signal handler": its only job is the self-pipe byte
		select {
		case sig := <-sigs:
			if us, ok := sig.(unix.Signal); ok {
				n.Say("got %s", unix.SignalName(us))
			}
			s.stop()
		case <-done:
		}
	}()
	return s.serve()
}

// fdSetString prints an fd_set as strace does: [3 4 7].
func fdSetString(set *unix.FdSet, maxfd int) string {
	var fds []string
	for fd := 0; fd <= maxfd; fd++ {
		if set.IsSet(fd) {
			fds = append(fds, strconv.Itoa(fd))
		}
	}
	return "[" + abbreviate(fds) + "]"
}

// pollString prints a pollfd array: [{3, POLLIN} {5, POLLIN|POLLOUT}] before the call, and
// [{fd=5, revents=POLLOUT}] for what came back.
func pollString(pfds []unix.PollFd, revents bool) string {
	var items []string
	for _, p := range pfds {
		ev := p.Events
		key := "events"
		if revents {
			if p.Revents == 0 {
				continue
			}
			ev, key = p.Revents, "revents"
		}
		if revents {
			items = append(items, fmt.Sprintf("{fd=%d, %s=%s}", p.Fd, key, pollEvents(ev)))
		} else { // shorter than strace's "events=", to keep a line within 80 columns
			items = append(items, fmt.Sprintf("{%d, %s}", p.Fd, pollEvents(ev)))
		}
	}
	return "[" + abbreviate(items) + "]"
}

func pollEvents(ev int16) string {
	var names []string
	for _, f := range []struct {
		bit  int16
		name string
	}{{unix.POLLIN, "POLLIN"}, {unix.POLLOUT, "POLLOUT"}, {unix.POLLERR, "POLLERR"}, {unix.POLLHUP, "POLLHUP"}, {unix.POLLNVAL, "POLLNVAL"}} {
		if ev&f.bit != 0 {
			names = append(names, f.name)
		}
	}
	return strings.Join(names, "|")
}

// abbreviate keeps narration of a thousand idle clients on one line.
func abbreviate(items []string) string {
	const keep = 8
	if len(items) > keep+2 {
		return strings.Join(items[:keep], " ") + fmt.Sprintf(" ... (%d in all) ", len(items)) + items[len(items)-1]
	}
	return strings.Join(items, " ")
}

// quote shows the first bytes of a buffer as strace does: "hello\n".
func quote(b []byte, n int) string {
	if n <= 0 {
		return "\"\""
	}
	s := strconv.Quote(string(b[:min(n, 24)]))
	if n > 24 {
		s += "..."
	}
	return s
}

func errnoName(err error) string {
	var e unix.Errno
	if errors.As(err, &e) {
		return lab.ErrnoString(e)
	}
	return err.Error()
}
