//go:build linux

package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Method is one way of sending a file over a socket.
type Method string

// The six methods, in the order the demo shows them.
const (
	ReadWrite Method = "readwrite" // pread64 into a buffer, write it out: two copies per byte
	Sendfile  Method = "sendfile"  // sendfile(2): page cache → socket inside the kernel
	Splice    Method = "splice"    // splice(2): file → pipe → socket, pages moved by reference
	MmapWrite Method = "mmap"      // mmap(2) the file, write(2) from the mapping: one copy
	Writev    Method = "writev"    // writev(2): header and mapped body in one gather write
	IOCopy    Method = "iocopy"    // Go's io.Copy(*net.TCPConn, *os.File): the runtime picks
)

// Methods lists every method.
var Methods = []Method{ReadWrite, Sendfile, Splice, MmapWrite, Writev, IOCopy}

// ParseMethod checks a -method value.
func ParseMethod(s string) (Method, bool) {
	for _, m := range Methods {
		if string(m) == s {
			return m, true
		}
	}
	return "", false
}

// Every transfer starts with a 16-byte header: the magic "SOCKLAB7" and the body length
// (big-endian), so the receiver knows how much to expect and can tell a short transfer from a
// complete one. Writev sends it in the same call as the body; the other methods write it first.
const headerLen = 16

var headerMagic = []byte("SOCKLAB7")

func makeHeader(bodyLen int64) []byte {
	h := make([]byte, headerLen)
	copy(h, headerMagic)
	binary.BigEndian.PutUint64(h[8:], uint64(bodyLen))
	return h
}

// SendOptions says what to send and how.
type SendOptions struct {
	Method   Method
	Path     string
	Offset   int64 // first byte of the file to send (may be past 2 GiB or 4 GiB)
	Length   int64 // bytes to send; -1 means to the end of the file
	Buf      int   // readwrite: buffer size for pread64/write
	Pipe     int   // splice: pipe size to request with F_SETPIPE_SZ; 0 keeps the default
	NonBlock bool  // make the socket O_NONBLOCK: calls return EAGAIN and the loop polls
	CPU      int   // pin the sending thread to this CPU; -1 leaves it free
	// Congestion, when set, is the TCP congestion control to use (setsockopt
	// TCP_CONGESTION, tcp(7)); "" keeps the namespace's default. It changes what the sender
	// pays per segment: BBR paces every segment with a timer, CUBIC and Reno do not
	// (docs/07-sendfile-splice.md, "The numbers").
	Congestion string

	started func(tid int) // tests: called on the sending thread before the first call
}

// SendReport is what one send did. Sent, Calls and UserBytes are the program's own counts;
// IO is the kernel's account of the same thread.
type SendReport struct {
	Method    Method
	Want      int64 // body bytes announced in the header
	Sent      int64 // body bytes the socket accepted
	Elapsed   time.Duration
	CPU       CPU
	Pinned    bool
	Calls     *callLog
	UserBytes int64    // file bytes handed to the socket from this program's memory
	IO        KernelIO // kernel task I/O accounting of the sending thread (see KernelIO)
	IOOK      bool     // false when /proc/thread-self/io was unreadable
	PipeSize  int      // splice: the pipe size the kernel granted (F_GETPIPE_SZ)
	// Congestion is the congestion control the kernel used for the socket
	// (getsockopt TCP_CONGESTION after the send).
	Congestion string
	FileSize   int64 // st_size
	DiskBytes  int64 // st_blocks × 512: what the file really occupies (sparse files: little)
}

// errFileShrank marks a file that got shorter while it was being sent.
var errFileShrank = errors.New("the file shrank during the send (another process truncated it)")

// SendError is a send that stopped early: which call, how far it got, and why.
type SendError struct {
	Call       string
	Sent, Want int64
	Err        error
	Why        string
}

func (e *SendError) Error() string {
	s := fmt.Sprintf("%s failed after %d of %d bytes: %v", e.Call, e.Sent, e.Want, e.Err)
	if e.Why != "" {
		s += " (" + e.Why + ")"
	}
	return s
}

func (e *SendError) Unwrap() error { return e.Err }

// sender is the state of one send: the socket, the file window still to go, the call log.
type sender struct {
	o          SendOptions
	sock, file int
	off, end   int64 // file bytes [off, end) are still to be sent
	sent, want int64
	header     []byte
	log        *callLog
	user       int64
}

// Send sends the header and the file window over the connected socket sock with o.Method.
// The socket is left open: closing it is the caller's (the receiver reads until EOF).
func Send(sock int, o SendOptions) (*SendReport, error) {
	if _, ok := ParseMethod(string(o.Method)); !ok {
		return nil, fmt.Errorf("unknown method %q", o.Method)
	}
	// open(2) and fstat(2): the size decides the header and the loop's end.
	file, err := unix.Open(o.Path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, openError(o.Path, err)
	}
	defer unix.Close(file)
	var st unix.Stat_t
	if err := unix.Fstat(file, &st); err != nil {
		return nil, fmt.Errorf("fstat %s: %w", o.Path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, fmt.Errorf("%s is not a regular file (sendfile, splice and mmap need a file with a page cache)", o.Path)
	}
	length := o.Length
	if length < 0 {
		length = st.Size - o.Offset
	}
	if o.Offset < 0 || length < 0 || o.Offset+length > st.Size {
		return nil, fmt.Errorf("window %d+%d is outside %s, which has %d bytes", o.Offset, length, o.Path, st.Size)
	}
	if o.Method == ReadWrite && o.Buf <= 0 {
		return nil, fmt.Errorf("readwrite needs a buffer size > 0, got %d", o.Buf)
	}
	if o.NonBlock {
		if err := unix.SetNonblock(sock, true); err != nil {
			return nil, fmt.Errorf("fcntl(O_NONBLOCK): %w", err)
		}
	}
	s := &sender{o: o, sock: sock, file: file, off: o.Offset, end: o.Offset + length,
		want: length, header: makeHeader(length), log: newCallLog()}
	r := &SendReport{Method: o.Method, Want: length, FileSize: st.Size, DiskBytes: st.Blocks * 512, Calls: s.log}
	if o.Congestion != "" {
		err := unix.SetsockoptString(sock, unix.IPPROTO_TCP, unix.TCP_CONGESTION, o.Congestion)
		s.log.add("setsockopt", 0, err, "setsockopt(%d, IPPROTO_TCP, TCP_CONGESTION, %q)", sock, o.Congestion)
		if err != nil {
			return nil, congestionError(o.Congestion, err)
		}
	}
	defer func() { r.Congestion, _ = unix.GetsockoptString(sock, unix.IPPROTO_TCP, unix.TCP_CONGESTION) }()

	onOwnThread(o.CPU, func(pinned bool) {
		if o.started != nil {
			o.started(unix.Gettid())
		}
		meter := openIOMeter()
		cpu0, t0 := threadCPU(), time.Now()
		err = s.run(r)
		r.Elapsed = time.Since(t0)
		cpu1 := threadCPU()
		r.IO, r.IOOK = meter.stop()
		r.CPU = CPU{User: cpu1.User - cpu0.User, Sys: cpu1.Sys - cpu0.Sys}
		r.Pinned = pinned
	})
	r.Sent, r.UserBytes = s.sent, s.user
	return r, err
}

func openError(path string, err error) error {
	if errors.Is(err, unix.EACCES) {
		// Not wrapped: the shared hint for EACCES is about ports, not files.
		return fmt.Errorf("open %s: permission denied (hint: ls -l %s; the sender needs read permission)", path, path)
	}
	return fmt.Errorf("open %s: %w", path, err)
}

func (s *sender) run(r *SendReport) error {
	if s.o.Method == Writev {
		return s.sendWritev() // the header rides in the same call as the body
	}
	if err := s.writeAll("write", s.header, false); err != nil {
		return err
	}
	switch s.o.Method {
	case ReadWrite:
		return s.sendReadWrite()
	case Sendfile:
		return s.sendSendfile()
	case Splice:
		return s.sendSplice(r)
	case MmapWrite:
		return s.sendMmap()
	case IOCopy:
		return s.sendIOCopy()
	}
	return nil
}

// readwrite: pread64(2) copies page-cache bytes into our buffer, write(2) copies them again
// into the socket's buffer. Two copies and two calls per buffer.
func (s *sender) sendReadWrite() error {
	buf := make([]byte, s.o.Buf)
	for s.off < s.end {
		want := int(min(int64(len(buf)), s.end-s.off))
		n, err := unix.Pread(s.file, buf[:want], s.off)
		s.log.add("pread64", n, err, "pread64(%d, buf, %d, %d)", s.file, want, s.off)
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return s.fail("pread64", err)
		case n == 0:
			return s.shrank("pread64 returned 0")
		}
		s.off += int64(n)
		if err := s.writeAll("write", buf[:n], true); err != nil {
			return err
		}
	}
	return nil
}

// sendfile(2): one call moves up to count bytes from the file's page cache to the socket; the
// kernel advances *offset (a 64-bit loff_t: offsets past 2 GiB and 4 GiB are fine). It may
// send less than asked (a signal, or EAGAIN on a non-blocking socket), so loop until done.
func (s *sender) sendSendfile() error {
	const maxChunk = 1 << 30 // sendfile moves at most 0x7ffff000 bytes per call anyway
	for s.off < s.end {
		count := int(min(s.end-s.off, maxChunk))
		off := s.off
		n, err := unix.Sendfile(s.sock, s.file, &off, count)
		s.log.add("sendfile", n, err, "sendfile(%d, %d, [%d], %d)", s.sock, s.file, s.off, count)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			if err := s.waitWritable(); err != nil {
				return err
			}
			continue
		case err != nil:
			return s.fail("sendfile", err)
		case n == 0:
			return s.shrank("sendfile returned 0")
		}
		s.off += int64(n)
		s.sent += int64(n)
	}
	return nil
}

// splice(2) needs a pipe on one side: file → pipe moves page references into the pipe, pipe →
// socket hands them to TCP. F_SETPIPE_SZ makes the pipe (and so each step) bigger.
func (s *sender) sendSplice(r *SendReport) error {
	var p [2]int
	err := unix.Pipe2(p[:], unix.O_CLOEXEC)
	s.log.add("pipe2", 0, err, "pipe2([%d, %d], O_CLOEXEC)", p[0], p[1])
	if err != nil {
		return s.fail("pipe2", err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	if s.o.Pipe > 0 {
		got, err := unix.FcntlInt(uintptr(p[1]), unix.F_SETPIPE_SZ, s.o.Pipe)
		s.log.add("fcntl", got, err, "fcntl(%d, F_SETPIPE_SZ, %d)", p[1], s.o.Pipe)
		if err != nil {
			return s.fail("fcntl(F_SETPIPE_SZ)", err) // EPERM above /proc/sys/fs/pipe-max-size
		}
	}
	pipeSize, err := unix.FcntlInt(uintptr(p[1]), unix.F_GETPIPE_SZ, 0)
	s.log.add("fcntl", pipeSize, err, "fcntl(%d, F_GETPIPE_SZ)", p[1])
	if err != nil {
		return s.fail("fcntl(F_GETPIPE_SZ)", err)
	}
	r.PipeSize = pipeSize
	for s.off < s.end {
		count := int(min(s.end-s.off, int64(pipeSize)))
		more := 0
		if s.off+int64(count) < s.end {
			more = unix.SPLICE_F_MORE // more is coming: let TCP fill whole segments
		}
		off := s.off
		n, err := unix.Splice(s.file, &off, p[1], nil, count, unix.SPLICE_F_MOVE|more)
		s.log.add("splice", int(n), err, "splice(%d, [%d], %d, NULL, %d, %s)", s.file, s.off, p[1], count, spliceFlags(more))
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return s.fail("splice", err)
		case n == 0:
			return s.shrank("splice from the file returned 0")
		}
		s.off += n
		for left := n; left > 0; {
			m, err := unix.Splice(p[0], nil, s.sock, nil, int(left), unix.SPLICE_F_MOVE|more)
			s.log.add("splice", int(m), err, "splice(%d, NULL, %d, NULL, %d, %s)", p[0], s.sock, left, spliceFlags(more))
			switch {
			case err == unix.EINTR:
				continue
			case err == unix.EAGAIN:
				if err := s.waitWritable(); err != nil {
					return err
				}
				continue
			case err != nil:
				return s.fail("splice", err)
			}
			left -= m
			s.sent += m
		}
	}
	return nil
}

func spliceFlags(more int) string {
	if more != 0 {
		return "SPLICE_F_MOVE|SPLICE_F_MORE"
	}
	return "SPLICE_F_MOVE"
}

// mapWindow maps the file window read-only. mmap offsets must be page-aligned, so the map
// starts at the page holding s.off and the body starts delta bytes in.
func (s *sender) mapWindow() (mapping, body []byte, err error) {
	if s.want == 0 {
		return nil, nil, nil // mmap of length 0 is EINVAL; there is nothing to map
	}
	page := int64(unix.Getpagesize())
	start := s.off &^ (page - 1)
	delta := s.off - start
	mapping, err = unix.Mmap(s.file, start, int(delta+s.want), unix.PROT_READ, unix.MAP_SHARED)
	var addr uintptr
	if err == nil {
		addr = uintptr(unsafe.Pointer(&mapping[0]))
	}
	s.log.addAddr("mmap", addr, err, "mmap(NULL, %d, PROT_READ, MAP_SHARED, %d, %d)", delta+s.want, s.file, start)
	if err != nil {
		return nil, nil, s.fail("mmap", err)
	}
	// Tell the kernel we read front to back: bigger read-ahead, pages freed behind us.
	err = unix.Madvise(mapping, unix.MADV_SEQUENTIAL)
	s.log.add("madvise", 0, err, "madvise(addr, %d, MADV_SEQUENTIAL)", len(mapping))
	return mapping, mapping[delta:], nil
}

func (s *sender) unmap(mapping []byte) {
	if mapping != nil {
		err := unix.Munmap(mapping)
		s.log.add("munmap", 0, err, "munmap(addr, %d)", len(mapping))
	}
}

// mmap + write: the file's pages are mapped into our address space (no copy), and write(2)
// copies them from there into the socket buffer (one copy). We never touch the mapping
// ourselves: if the file shrinks, touching a page past the new end raises SIGBUS, while the
// kernel's copy inside write(2) fails with EFAULT instead.
func (s *sender) sendMmap() error {
	mapping, body, err := s.mapWindow()
	if err != nil {
		return err
	}
	defer s.unmap(mapping)
	s.off = s.end
	return s.writeAll("write", body, true)
}

// writev: the header (in ordinary memory) and the mapped body go out in one gather write.
func (s *sender) sendWritev() error {
	mapping, body, err := s.mapWindow()
	if err != nil {
		return err
	}
	defer s.unmap(mapping)
	iovs := [][]byte{s.header, body}
	headerLeft := len(s.header)
	for len(iovs) > 0 {
		n, err := unix.Writev(s.sock, iovs)
		s.log.add("writev", n, err, "writev(%d, [{%s, %d}, {addr, %d}], 2)", s.sock, quoteBytes(iovs[0]), len(iovs[0]), iovLen(iovs, 1))
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			if err := s.waitWritable(); err != nil {
				return err
			}
			continue
		case err != nil:
			return s.fail("writev", err)
		}
		h := min(n, headerLeft)
		headerLeft -= h
		s.sent += int64(n - h)
		s.user += int64(n - h)
		iovs = advance(iovs, n)
	}
	s.off = s.end
	return nil
}

func iovLen(iovs [][]byte, i int) int {
	if i < len(iovs) {
		return len(iovs[i])
	}
	return 0
}

// advance drops n written bytes from the front of iovs, as a partial writev requires.
func advance(iovs [][]byte, n int) [][]byte {
	for len(iovs) > 0 && n >= len(iovs[0]) {
		n -= len(iovs[0])
		iovs = iovs[1:]
	}
	if len(iovs) > 0 {
		iovs[0] = iovs[0][n:]
	}
	return iovs
}

// io.Copy(*net.TCPConn, io.LimitReader(*os.File)): Go notices both ends and calls sendfile(2)
// itself (offset NULL: the file position, hence the lseek), on its non-blocking socket: partial
// sends, EAGAIN, a wait in the netpoller, again. The calls happen inside
// the runtime, so the program cannot count them: the kernel's syscr can (see KernelIO).
func (s *sender) sendIOCopy() error {
	fileDup, err := unix.Dup(s.file) // os.File takes ownership; keep our fd for the caller
	if err != nil {
		return s.fail("dup", err)
	}
	f := os.NewFile(uintptr(fileDup), s.o.Path)
	defer f.Close()
	if _, err := f.Seek(s.off, io.SeekStart); err != nil {
		return s.fail("lseek", err)
	}
	sockDup, err := unix.Dup(s.sock)
	if err != nil {
		return s.fail("dup", err)
	}
	sf := os.NewFile(uintptr(sockDup), "socket")
	conn, err := net.FileConn(sf) // dups again and sets O_NONBLOCK (shared by every dup)
	sf.Close()
	if err != nil {
		return s.fail("net.FileConn", err)
	}
	defer conn.Close()
	n, err := io.Copy(conn, io.LimitReader(f, s.end-s.off))
	s.sent += n
	s.off += n
	if err != nil {
		return s.fail("io.Copy", err)
	}
	if s.off < s.end {
		return s.shrank("io.Copy stopped early")
	}
	return nil
}

// writeAll writes p to the socket, looping over partial writes and EAGAIN. body says whether
// p is file bytes (counted as sent and as having passed through user memory).
func (s *sender) writeAll(call string, p []byte, body bool) error {
	for len(p) > 0 {
		n, err := unix.Write(s.sock, p)
		if body {
			s.log.add(call, n, err, "write(%d, buf, %d)", s.sock, len(p))
		} else {
			s.log.add(call, n, err, "write(%d, %s, %d)", s.sock, quoteBytes(p), len(p))
		}
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			if err := s.waitWritable(); err != nil {
				return err
			}
			continue
		case err != nil:
			return s.fail(call, err)
		}
		p = p[n:]
		if body {
			s.sent += int64(n)
			s.user += int64(n)
		}
	}
	return nil
}

// waitWritable blocks in ppoll(2) until the non-blocking socket has room again.
func (s *sender) waitWritable() error {
	const timeoutMs = 60_000 // a receiver that reads nothing for a minute is gone
	fds := []unix.PollFd{{Fd: int32(s.sock), Events: unix.POLLOUT}}
	for {
		n, err := unix.Poll(fds, timeoutMs)
		s.log.add("ppoll", n, err, "ppoll([{fd=%d, events=POLLOUT}], 1, {tv_sec=%d}, NULL)", s.sock, timeoutMs/1000)
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return s.fail("ppoll", err)
		case n == 0:
			return s.fail("ppoll", unix.ETIMEDOUT)
		}
		return nil
	}
}

// fail explains an error the way a student needs it.
func (s *sender) fail(call string, err error) error {
	e := &SendError{Call: call, Sent: s.sent, Want: s.want, Err: err}
	switch {
	case errors.Is(err, unix.EPIPE), errors.Is(err, unix.ECONNRESET):
		e.Why = "the receiver closed the connection before the whole file arrived; " +
			"Go ignores the SIGPIPE that came with it, a C program must ignore it itself"
	case errors.Is(err, unix.EFAULT):
		var st unix.Stat_t
		if unix.Fstat(s.file, &st) == nil && st.Size < s.end {
			e.Err = fmt.Errorf("%w: %w", errFileShrank, err)
			e.Why = fmt.Sprintf("the file is now %d bytes: the mapped pages past its end are gone, "+
				"so the kernel's copy failed; touching them in user space would raise SIGBUS", st.Size)
		}
	}
	return e
}

// shrank reports a file that ended before the announced length.
func (s *sender) shrank(what string) error {
	var st unix.Stat_t
	why := what
	if unix.Fstat(s.file, &st) == nil {
		why += fmt.Sprintf("; the file is now %d bytes", st.Size)
	}
	return &SendError{Call: s.o.Method.String(), Sent: s.sent, Want: s.want, Err: errFileShrank, Why: why}
}

func (m Method) String() string { return string(m) }

// congestionError explains why setsockopt(TCP_CONGESTION) refused name (tcp(7)): ENOENT, no
// such algorithm in this kernel; EPERM, an algorithm an unprivileged process may not choose.
func congestionError(name string, err error) error {
	switch {
	case errors.Is(err, unix.ENOENT):
		return fmt.Errorf("congestion control %q: not in this kernel (hint: see /proc/sys/net/ipv4/tcp_available_congestion_control)", name)
	case errors.Is(err, unix.EPERM):
		return fmt.Errorf("congestion control %q: not permitted (hint: unprivileged processes may choose only those in /proc/sys/net/ipv4/tcp_allowed_congestion_control; the lab's private namespace may choose any)", name)
	}
	return fmt.Errorf("setsockopt(TCP_CONGESTION, %q): %w", name, err)
}
