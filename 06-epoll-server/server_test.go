//go:build linux

package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"socklab/internal/lab"
	"socklab/internal/labtest"
	"socklab/internal/netlab"
	"socklab/internal/sockdiag"
)

// startServer runs an in-process server until the test ends.
func startServer(t *testing.T, cfg ServerConfig) *Server {
	t.Helper()
	s, stop := serveInProcess(t, cfg)
	t.Cleanup(func() { require.NoError(t, stop()) })
	return s
}

// serveInProcess starts an in-process server and returns it with stop, which wakes it and
// waits a bounded time for Serve to return (stopServer). Calling stop again returns the
// first call's result.
func serveInProcess(t *testing.T, cfg ServerConfig) (*Server, func() error) {
	t.Helper()
	if !cfg.Addr.IsValid() {
		cfg.Addr = loopback
	}
	s, err := Listen(cfg, lab.Quiet())
	require.NoError(t, err)
	served := make(chan error, 1)
	go func() { served <- s.Serve() }()
	var once sync.Once
	var stopErr error
	return s, func() error {
		once.Do(func() { stopErr = stopServer(s, served) })
		return stopErr
	}
}

// echoOnce sends msg on a new connection and checks the exact echo.
func echoOnce(t *testing.T, addr netip.AddrPort, msg string) {
	t.Helper()
	fd, _ := labtest.Dial(t, addr)
	_, err := unix.Write(fd, []byte(msg))
	require.NoError(t, err)
	got, err := readFull(fd, len(msg), 10*time.Second)
	require.NoError(t, err)
	assert.Equal(t, msg, string(got))
}

// Many clients at once, each streaming random bytes in random-sized writes while reading the
// echo back: every client must get exactly its own bytes, in every server mode.
func TestManyClientsGetExactEchoes(t *testing.T) {
	t.Parallel()
	modes := []struct {
		name string
		cfg  ServerConfig
	}{
		{"inline-LT", ServerConfig{}},
		{"inline-ET", ServerConfig{EdgeTriggered: true}},
		{"workers-LT", ServerConfig{Workers: 4}},
		{"workers-ET", ServerConfig{Workers: 4, EdgeTriggered: true}},
		{"workers-work", ServerConfig{Workers: 3, Work: 20 * time.Microsecond}},
		{"small-chunks", ServerConfig{ChunkSize: 100}},
		// The slower ways kept for BenchmarkServerVariants must echo as exactly.
		{"inline-first-version", ServerConfig{GoSyscall: true, NoYield: true}},
		// -splice: the same bytes, through a pipe instead of a buffer.
		{"inline-LT-splice", ServerConfig{Splice: true}},
		{"inline-ET-splice", ServerConfig{EdgeTriggered: true, Splice: true}},
		{"workers-LT-splice", ServerConfig{Workers: 4, Splice: true}},
		{"small-chunks-splice", ServerConfig{ChunkSize: 100, Splice: true}},
	}
	for _, mode := range modes {
		t.Run(mode.name, func(t *testing.T) {
			t.Parallel()
			s := startServer(t, mode.cfg)
			const clients, perClient = 40, 96 << 10
			var wg sync.WaitGroup
			errs := make(chan error, clients)
			for i := range clients {
				wg.Add(1)
				go func() {
					defer wg.Done()
					errs <- streamEcho(s.Addr, perClient, uint64(i))
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				assert.NoError(t, err)
			}
			assert.Zero(t, s.Stats.Overlaps.Load(), "two workers held one connection")
		})
	}
}

// EPOLLONESHOT keeps every connection with one worker at a time. Small chunks and CPU work
// between each read and its send make two workers holding one connection show in the bytes:
// both read a chunk, and whichever finishes its work first sends first, out of order. Without
// EPOLLONESHOT this fails (the level-triggered loop hands a connection to a second worker while
// the first still works on it); TestManyClientsGetExactEchoes's larger chunks mostly do not.
func TestWorkersNeverShareAConnection(t *testing.T) {
	t.Parallel()
	s := startServer(t, ServerConfig{Workers: 4, ChunkSize: 64, Work: 200 * time.Microsecond})
	const clients, perClient = 8, 16 << 10
	errs := make(chan error, clients)
	for i := range clients {
		go func() { errs <- streamEcho(s.Addr, perClient, uint64(1000+i)) }()
	}
	for range clients {
		assert.NoError(t, <-errs)
	}
}

// streamEcho writes n random bytes in random pieces while a second goroutine reads the echo,
// and compares.
func streamEcho(addr netip.AddrPort, n int, seed uint64) error {
	c, err := net.Dial("tcp", addr.String())
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	rng := rand.New(rand.NewPCG(seed, 6))
	data := make([]byte, n)
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	writeErr := make(chan error, 1)
	go func() {
		rest := data
		for len(rest) > 0 {
			k := min(len(rest), 1+rng.IntN(8192))
			if _, err := c.Write(rest[:k]); err != nil {
				writeErr <- err
				return
			}
			rest = rest[k:]
		}
		writeErr <- nil
	}()
	got := make([]byte, n)
	_, rerr := io.ReadFull(c, got)
	if werr := <-writeErr; werr != nil {
		return fmt.Errorf("write: %w", werr)
	}
	if rerr != nil {
		return fmt.Errorf("read: %w", rerr)
	}
	if !bytes.Equal(got, data) {
		return errors.New("echo differs from what was sent")
	}
	return nil
}

// A client that sends, half-closes (EPOLLRDHUP on the server) and then reads gets every byte
// back and then EOF: the server closes only after echoing all it read.
func TestHalfClosedClientGetsFullEchoThenEOF(t *testing.T) {
	t.Parallel()
	for _, cfg := range []ServerConfig{{}, {EdgeTriggered: true}, {Workers: 2}, {Splice: true}} {
		t.Run(cfg.Mode(), func(t *testing.T) {
			t.Parallel()
			s := startServer(t, cfg)
			c, err := net.Dial("tcp", s.Addr.String())
			require.NoError(t, err)
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(20 * time.Second))
			data := bytes.Repeat([]byte("half-close "), 30000)
			go func() {
				_, _ = c.Write(data)
				_ = c.(*net.TCPConn).CloseWrite()
			}()
			got, err := io.ReadAll(c) // ends only at the server's FIN
			require.NoError(t, err)
			assert.Equal(t, len(data), len(got))
			assert.True(t, bytes.Equal(data, got))
		})
	}
}

// A client that sends but never reads: the server stops reading it once one chunk of output is
// pending, so the data piles up in the kernel's queues — the server socket's Recv-Q grows — and
// the client's send() finally returns EAGAIN. The bytes the server process holds are computed
// from the kernel's counts alone: sent − every queue between the two processes. (Part F.)
func TestSlowReaderGetsBackpressure(t *testing.T) {
	t.Parallel()
	for _, cfg := range []ServerConfig{{ChunkSize: 16 << 10}, {ChunkSize: 16 << 10, EdgeTriggered: true}, {ChunkSize: 16 << 10, Workers: 2},
		{ChunkSize: 16 << 10, Splice: true}} {
		t.Run(cfg.Mode(), func(t *testing.T) {
			t.Parallel()
			r, err := slowReader(quiet(), cfg)
			require.NoError(t, err)
			q := r.Queues
			t.Logf("sent %d B; client Send-Q %d, server Recv-Q %d, server Send-Q %d, client Recv-Q %d; server holds %d B",
				r.Sent, q.ClientSendQ, q.ServerRecvQ, q.ServerSendQ, q.ClientRecvQ, r.Held)
			assert.Positive(t, q.ServerRecvQ, "the server stopped draining its receive queue")
			assert.GreaterOrEqual(t, r.Held, 0)
			assert.LessOrEqual(t, r.Held, cfg.ChunkSize, "the server holds at most one chunk")
			assert.Equal(t, "still served", r.Other, "the stuck client blocks nobody")
		})
	}
}

// With -splice, what the server holds of a client that never reads is in a pipe, not in its
// memory: the bytes that the kernel's queues say the server took and did not pass on
// (sent − every queue between the two processes) are exactly the bytes the server's pipes
// hold, by FIONREAD on each of them. The server runs as its own process so that its pipes are
// the only ones looked at.
func TestSpliceHoldsPendingOutputInAPipe(t *testing.T) {
	t.Parallel()
	p := startServerProcess(t, "-splice", "-chunk", "16384")
	fd := labtest.Socket(t, p.addr, unix.SOCK_STREAM)
	for _, opt := range []int{unix.SO_RCVBUF, unix.SO_SNDBUF} {
		require.NoError(t, unix.SetsockoptInt(fd, unix.SOL_SOCKET, opt, 64<<10))
	}
	require.NoError(t, unix.Connect(fd, lab.SockaddrOf(p.addr)))
	require.NoError(t, unix.SetNonblock(fd, true))
	settled, err := sendUntilSettled(fd, labtest.LocalAddr(t, fd), p.addr, nil)
	require.NoError(t, err)
	held := settled.queues.held(settled.sent)
	inPipes := pipeBytes(t, p.cmd.Process.Pid)
	t.Logf("sent %d B, queues %+v: the server holds %d B; its pipes hold %d B", settled.sent, settled.queues, held, inPipes)
	assert.Positive(t, held, "the server took more than it could send on")
	assert.LessOrEqual(t, held, 16384, "at most one chunk")
	assert.Equal(t, held, inPipes, "what the server holds is in its pipes")
}

// pipeBytes sums FIONREAD over the pipes that process pid made itself: opening /proc/PID/fd/N
// opens the same pipe, as a FIFO is opened (proc(5)). Pipes it inherited (its standard
// streams, or whatever the shell that started the tests left open, which may belong to
// another user) survived exec, so their descriptors lack O_CLOEXEC in /proc/PID/fdinfo/N;
// the server makes every pipe with O_CLOEXEC.
func pipeBytes(t *testing.T, pid int) int {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	seen := map[string]bool{}
	total := 0
	for _, e := range entries {
		target, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil || !strings.HasPrefix(target, "pipe:") || seen[target] || !closeOnExec(pid, e.Name()) {
			continue // closed meanwhile, not a pipe, the other end of one already counted, or inherited
		}
		seen[target] = true
		pfd, err := unix.Open(filepath.Join(dir, e.Name()), unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		require.NoError(t, err)
		n, err := unix.IoctlGetInt(pfd, unix.TIOCINQ) // FIONREAD (ioctl_tty(2)); pipes answer it too (pipe_ioctl, fs/pipe.c)
		unix.Close(pfd)
		require.NoError(t, err)
		total += n
	}
	require.NotEmpty(t, seen, "the server has no pipe open")
	return total
}

// closeOnExec reports whether /proc/PID/fdinfo/FD lists O_CLOEXEC among the descriptor's flags
// (an octal number on the "flags:" line, proc(5)).
func closeOnExec(pid int, fd string) bool {
	info, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%s", pid, fd))
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(info), "\n") {
		if v, ok := strings.CutPrefix(line, "flags:"); ok {
			flags, err := strconv.ParseUint(strings.TrimSpace(v), 8, 64)
			return err == nil && flags&unix.O_CLOEXEC != 0
		}
	}
	return false
}

// streamByte is byte i of the stream the backpressure tests send: a hash of the offset, so a
// byte lost, repeated or reordered anywhere changes the bytes that follow it.
func streamByte(i int) byte {
	return byte(uint64(i) * 0x9E3779B97F4A7C15 >> 56)
}

// backpressure connects a client with 64 KiB buffers to the server at addr and sends the
// stream (streamByte) without reading, until send() returns EAGAIN and the kernel's queues stay
// still (sendUntilSettled). Then it checks, from the kernel's queues alone, that the server is
// backpressured: the client's Recv-Q and the server's Send-Q hold echo nobody read, and the
// server process holds output the kernel would not take (held, part F) — more than 0 bytes,
// which only a send() that hit EAGAIN leaves, and at most one chunk.
func backpressure(t *testing.T, addr netip.AddrPort, chunk int) (fd int, client netip.AddrPort, settled settledSend) {
	t.Helper()
	fd = labtest.Socket(t, addr, unix.SOCK_STREAM)
	for _, opt := range []int{unix.SO_RCVBUF, unix.SO_SNDBUF} {
		require.NoError(t, unix.SetsockoptInt(fd, unix.SOL_SOCKET, opt, 64<<10))
	}
	require.NoError(t, unix.Connect(fd, lab.SockaddrOf(addr)))
	require.NoError(t, unix.SetNonblock(fd, true))
	client = labtest.LocalAddr(t, fd)
	settled, err := sendUntilSettled(fd, client, addr, streamByte)
	require.NoError(t, err)
	q := settled.queues
	held := q.held(settled.sent)
	t.Logf("sent %d B; client Send-Q %d, server Recv-Q %d, server Send-Q %d, client Recv-Q %d; server holds %d B",
		settled.sent, q.ClientSendQ, q.ServerRecvQ, q.ServerSendQ, q.ClientRecvQ, held)
	require.Positive(t, q.ClientRecvQ, "the client's Recv-Q holds echo it has not read")
	require.Positive(t, q.ServerSendQ, "the server's Send-Q holds echo the client cannot take")
	require.Positive(t, held, "the server holds output its send() could not hand to the kernel")
	require.LessOrEqual(t, held, chunk, "at most one chunk")
	return fd, client, settled
}

// exchangeUntilEOF drives the non-blocking client fd of a backpressured connection to its end:
// it reads the echo, checking every byte against streamByte from offset 0, while it sends the
// stream on from offset sent up to total, then half-closes (SHUT_WR) and reads until the
// server's FIN. It returns how many bytes of echo arrived before EOF.
func exchangeUntilEOF(fd, sent, total int, timeout time.Duration) (int, error) {
	in := make([]byte, 64<<10)
	out := make([]byte, 32<<10)
	received, shut, start := 0, false, sent
	deadline := time.Now().Add(timeout)
	// Every pass moves bytes or waits in poll(2) for the socket; the deadline ends it sooner.
	for range 10_000_000 {
		if !shut && sent == total {
			if err := unix.Shutdown(fd, unix.SHUT_WR); err != nil {
				return received, err
			}
			shut = true
		}
		left := time.Until(deadline)
		if left <= 0 {
			return received, fmt.Errorf("after %v: %d of %d bytes echoed, %d sent", timeout, received, total, sent)
		}
		events := int16(unix.POLLIN)
		if !shut {
			events |= unix.POLLOUT
		}
		pfd := []unix.PollFd{{Fd: int32(fd), Events: events}}
		if _, err := unix.Poll(pfd, int(min(left, time.Second).Milliseconds())+1); err != nil && err != unix.EINTR {
			return received, err
		}
		if pfd[0].Revents&(unix.POLLIN|unix.POLLHUP|unix.POLLERR) != 0 {
			n, err := unix.Read(fd, in)
			switch {
			case err == unix.EAGAIN || err == unix.EINTR:
			case err != nil:
				return received, fmt.Errorf("read after %d bytes of echo: %w", received, err)
			case n == 0:
				return received, nil // the server's FIN
			default:
				for i, b := range in[:n] {
					if want := streamByte(received + i); b != want {
						return received + i, fmt.Errorf("byte %d of the echo is %#02x, want %#02x (%d bytes sent before the exchange)",
							received+i, b, want, start)
					}
				}
				received += n
			}
		}
		if !shut && pfd[0].Revents&unix.POLLOUT != 0 {
			k := min(len(out), total-sent)
			for i := range k {
				out[i] = streamByte(sent + i)
			}
			n, err := unix.SendmsgN(fd, out[:k], nil, nil, unix.MSG_NOSIGNAL)
			if err != nil && err != unix.EAGAIN && err != unix.EINTR {
				return received, fmt.Errorf("send after %d bytes: %w", sent, err)
			}
			sent += max(n, 0)
		}
	}
	return received, fmt.Errorf("no EOF after %d bytes of echo", received)
}

// Output the server had to hold back reaches the client later, byte for byte. A client that
// never reads drives the server into backpressure, which the kernel's queues show (backpressure:
// the server holds output, so some send() hit EAGAIN and kept the rest in c.out, or with -splice
// in the connection's pipe); then the client reads everything while it sends 1 MiB more,
// half-closes, and compares every byte of the echo up to the server's FIN. The tests that read
// while they write (TestManyClientsGetExactEchoes) seldom make the server hold anything, so a
// byte lost on the EAGAIN path would pass them.
func TestBackpressuredOutputArrivesExactly(t *testing.T) {
	t.Parallel()
	for _, mode := range []struct {
		name string
		cfg  ServerConfig
	}{
		{"inline-LT", ServerConfig{ChunkSize: 16 << 10}},
		{"inline-ET", ServerConfig{ChunkSize: 16 << 10, EdgeTriggered: true}},
		{"workers", ServerConfig{ChunkSize: 16 << 10, Workers: 2}},
		{"splice", ServerConfig{ChunkSize: 16 << 10, Splice: true}},
		{"small-chunks", ServerConfig{ChunkSize: 100}},
		{"small-chunks-splice", ServerConfig{ChunkSize: 100, Splice: true}},
	} {
		t.Run(mode.name, func(t *testing.T) {
			t.Parallel()
			s := startServer(t, mode.cfg)
			fd, _, settled := backpressure(t, s.Addr, mode.cfg.ChunkSize)
			total := settled.sent + 1<<20
			echoed, err := exchangeUntilEOF(fd, settled.sent, total, 30*time.Second)
			require.NoError(t, err)
			assert.Equal(t, total, echoed, "every byte sent comes back, then EOF")
		})
	}
}

// With -splice, a connection's pending output waits in its own pipe, and the pipe goes back to
// the event loop only once it is empty. That needs a flush after EPOLLOUT to meet EAGAIN again
// with bytes still in the pipe, which the other tests never arrange: the server's send buffer
// autotunes to megabytes, and EPOLLOUT comes only once a third of it is free. Here the test's
// own namespace caps every send buffer at 8 KiB (net.ipv4.tcp_wmem, per namespace, tcp(7)) and
// the clients' receive buffers are small, so the window is small and one splice can stop part
// way. (Counted once with a temporary counter: 213 such flushes in one run. With the small send
// buffer alone there were none.) Several connections stream at once: a pipe handed back too
// early loses its bytes or carries them into another connection's echo (that mutation fails
// here, with wrong bytes and stalled echoes). Every echo must arrive byte for byte, up to the
// server's FIN.
func TestSplicePipeStaysWithItsConnectionUntilEmpty(t *testing.T) {
	t.Parallel()
	if !labtest.Env.Private {
		t.Skip("needs a private network namespace to shrink tcp_wmem in (never on the host)")
	}
	h, err := netlab.NewHost("small-sndbuf")
	require.NoError(t, err)
	defer h.Close()
	const conns, total = 4, 1 << 20
	var s *Server
	var fds []int
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	err = h.Do(func() error {
		if err := netlab.SetSysctl("net.ipv4.tcp_wmem", "4096 8192 8192"); err != nil {
			return err
		}
		var err error
		if s, err = Listen(ServerConfig{Addr: loopback, Splice: true}, lab.Quiet()); err != nil {
			return err
		}
		for range conns {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return err
			}
			fds = append(fds, fd)
			// A small receive window too: without it one splice from the pipe went out
			// whole, however small the send buffer (see above).
			if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4096); err != nil {
				return err
			}
			if err := unix.Connect(fd, lab.SockaddrOf(s.Addr)); err != nil {
				return err
			}
		}
		return nil
	})
	if s != nil { // serve and stop it even if a connect failed, so that its fds are closed
		served := make(chan error, 1)
		go func() { served <- s.Serve() }()
		defer func() { require.NoError(t, stopServer(s, served)) }()
	}
	require.NoError(t, err)
	// The kernel's view of a socket made in that namespace: its send buffer is tcp_wmem's
	// default there, under one 64 KiB chunk.
	sndbuf, err := unix.GetsockoptInt(fds[0], unix.SOL_SOCKET, unix.SO_SNDBUF)
	require.NoError(t, err)
	require.LessOrEqual(t, sndbuf, 16<<10, "SO_SNDBUF in the small-sndbuf namespace")

	errs := make(chan error, conns)
	for _, fd := range fds {
		require.NoError(t, unix.SetNonblock(fd, true))
		go func() {
			echoed, err := exchangeUntilEOF(fd, 0, total, 30*time.Second)
			if err == nil && echoed != total {
				err = fmt.Errorf("%d of %d bytes echoed before EOF", echoed, total)
			}
			errs <- err
		}()
	}
	for range conns {
		assert.NoError(t, <-errs)
	}
}

// A client that resets the connection while the server has output pending for it: the
// server is backpressured first (backpressure: the kernel's queues show it holds output its
// send() could not hand over, and its Send-Q is full), so its next send() or splice() into the
// socket meets the RST. The server gets ECONNRESET/EPIPE, closes its end — its descriptor
// leaves /proc/self/fd — and goes on serving.
func TestResetMidWriteIsSurvived(t *testing.T) {
	t.Parallel()
	for _, cfg := range []ServerConfig{{ChunkSize: 16 << 10}, {ChunkSize: 16 << 10, Workers: 2}, {ChunkSize: 16 << 10, Splice: true}} {
		t.Run(cfg.Mode(), func(t *testing.T) {
			t.Parallel()
			s := startServer(t, cfg)
			fd, client, _ := backpressure(t, s.Addr, cfg.ChunkSize)
			srv, found, err := sockdiag.Find(s.Addr, client)
			require.NoError(t, err)
			require.True(t, found && srv.HasFD(), "the server's end: %v", srv)
			inode := srv.Inode
			// SO_LINGER {on, 0}: close() sends RST instead of FIN.
			require.NoError(t, unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0}))
			labtest.CloseNow(t, fd)
			// The RST moves the server's socket to CLOSE at once (sock_diag stops listing it);
			// that the server closed its descriptor shows in /proc/self/fd.
			labtest.WaitFor(t, 10*time.Second, "the server to close its end", func() (bool, string) {
				return !holdsSocket(inode), fmt.Sprintf("socket:[%d] still has an fd", inode)
			})
			echoOnce(t, s.Addr, "after the reset")
			assert.Positive(t, s.Stats.Resets.Load())
		})
	}
}

// The errno a writer gets after the peer's RST, with MSG_NOSIGNAL: ECONNRESET first (the
// pending socket error), then EPIPE — never a signal. splice(2) into the socket gets EPIPE
// and a SIGPIPE.
func TestSendAfterResetReturnsErrno(t *testing.T) {
	t.Parallel()
	lfd, addr := labtest.Listen(t, labtest.Loopback4, 4)
	cfd, caddr := labtest.Dial(t, addr)
	sfd, _ := labtest.Accept(t, lfd, 5*time.Second)
	require.NoError(t, unix.SetsockoptLinger(cfd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0}))
	labtest.CloseNow(t, cfd)
	labtest.WaitGone(t, caddr, addr, 5*time.Second)
	labtest.WaitFor(t, 5*time.Second, "the server end to see the RST", func() (bool, string) {
		st, err := sockdiag.StateOf(sfd)
		return err == nil && st == sockdiag.Close, fmt.Sprint(st, err)
	})
	send := func() error {
		_, err := unix.SendmsgN(sfd, []byte("x"), nil, nil, unix.MSG_NOSIGNAL)
		return err
	}
	err1, signalled1 := sigpipeRaisedBy(t, send)
	err2, signalled2 := sigpipeRaisedBy(t, send)
	assert.ErrorIs(t, err1, unix.ECONNRESET)
	assert.ErrorIs(t, err2, unix.EPIPE)
	assert.False(t, signalled1 || signalled2, "MSG_NOSIGNAL: no SIGPIPE")

	// splice(2) takes no MSG_NOSIGNAL: the -splice echo's EPIPE comes with a SIGPIPE, which
	// Go's runtime ignores (fd > 2) and a C server must ignore itself (SIG_IGN).
	p, err := newPipe()
	require.NoError(t, err)
	defer p.close()
	_, err = unix.Write(p.w, []byte("x"))
	require.NoError(t, err)
	err3, signalled3 := sigpipeRaisedBy(t, func() error {
		_, err := spliceNonblocking(p.r, sfd, 1)
		return err
	})
	assert.ErrorIs(t, err3, unix.EPIPE)
	assert.True(t, signalled3, "splice into a reset socket raises SIGPIPE")
}

// sigpipeRaisedBy runs f on one OS thread with SIGPIPE blocked and reports f's error and
// whether f raised SIGPIPE. The kernel sends SIGPIPE to the thread that wrote (send_sig in
// sk_stream_error, net/core/stream.c), so a blocked one waits in the thread's pending set,
// where rt_sigpending sees it and rt_sigtimedwait takes it away (sigpending(2),
// sigwaitinfo(2)); other tests' threads cannot add to that set.
func sigpipeRaisedBy(t *testing.T, f func() error) (err error, raised bool) {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var pipeOnly, old, pending unix.Sigset_t
	pipeOnly.Val[0] = 1 << (unix.SIGPIPE - 1)
	require.NoError(t, unix.PthreadSigmask(unix.SIG_BLOCK, &pipeOnly, &old))
	defer func() { require.NoError(t, unix.PthreadSigmask(unix.SIG_SETMASK, &old, nil)) }()
	err = f()
	const sigsetSize = 8 // the kernel's sigset_t: 64 signals
	_, _, errno := unix.RawSyscall(unix.SYS_RT_SIGPENDING, uintptr(unsafe.Pointer(&pending)), sigsetSize, 0)
	require.Zero(t, errno)
	raised = pending.Val[0]&pipeOnly.Val[0] != 0
	if raised {
		var zero unix.Timespec
		sig, _, errno := unix.RawSyscall6(unix.SYS_RT_SIGTIMEDWAIT, uintptr(unsafe.Pointer(&pipeOnly)), 0,
			uintptr(unsafe.Pointer(&zero)), sigsetSize, 0, 0)
		require.Zero(t, errno)
		require.Equal(t, uintptr(unix.SIGPIPE), sig)
	}
	return err, raised
}

// --- the server as a separate process ----------------------------------------------------

// serverProcess is the `server` role running in a child process.
type serverProcess struct {
	cmd    *exec.Cmd
	addr   netip.AddrPort
	out    *bytes.Buffer
	mu     *sync.Mutex
	waited chan error
}

func (p *serverProcess) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// startServerProcess starts `server -addr 127.0.0.1:0 args...` and waits for its address.
func startServerProcess(t testing.TB, args ...string) *serverProcess {
	t.Helper()
	return startProcess(t, "", append([]string{"server", "-addr", "127.0.0.1:0"}, args...)...)
}

// startProcess starts the program with args (a role that prints "-> listening on ADDR"),
// pinned to cpu with taskset(1) when cpu is not empty, and waits for its address.
func startProcess(t testing.TB, cpu string, args ...string) *serverProcess {
	t.Helper()
	return startCommand(t, pinned(cpu, labtest.ProgramCommand(args...)))
}

// startCommand starts cmd, a server that prints "-> listening on ADDR" (a role of the
// program, or the C reference server), and waits for its address.
func startCommand(t testing.TB, cmd *exec.Cmd) *serverProcess {
	t.Helper()
	pr, pw, err := os.Pipe()
	require.NoError(t, err)
	p := &serverProcess{cmd: cmd, out: &bytes.Buffer{}, mu: &sync.Mutex{}, waited: make(chan error, 1)}
	cmd.Stdout, cmd.Stderr = pw, pw
	require.NoError(t, cmd.Start())
	pw.Close()
	addrCh := make(chan netip.AddrPort, 1)
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		defer pr.Close()
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			line := sc.Text()
			_, _ = lockedWriter{p.mu, p.out}.Write([]byte(line + "\n"))
			if rest, ok := strings.CutPrefix(strings.TrimSpace(line), "-> listening on "); ok {
				if ap, err := netip.ParseAddrPort(rest); err == nil {
					addrCh <- ap
				}
			}
		}
	}()
	go func() {
		err := cmd.Wait()
		<-copied
		p.waited <- err
	}()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
		}
		select {
		case <-p.waited:
		case <-time.After(10 * time.Second):
		}
	})
	select {
	case p.addr = <-addrCh:
	case err := <-p.waited:
		p.waited <- err
		t.Fatalf("server exited before listening: %v\n%s", err, p.output())
	case <-time.After(20 * time.Second):
		t.Fatalf("server did not report its address:\n%s", p.output())
	}
	return p
}

// stop sends sig and returns the exit status.
func (p *serverProcess) stop(t testing.TB, sig os.Signal) int {
	t.Helper()
	require.NoError(t, p.cmd.Process.Signal(sig))
	select {
	case err := <-p.waited:
		p.waited <- err
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		require.NoError(t, err)
		return 0
	case <-time.After(20 * time.Second):
		t.Fatalf("server did not exit after %v:\n%s", sig, p.output())
		return -1
	}
}

// threadsAllSleeping reports whether every thread of pid is sleeping (state S in
// /proc/PID/task/TID/stat): a loop spinning on a readiness report would stay runnable (R).
func threadsAllSleeping(pid int) (bool, string) {
	dirs, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", pid))
	if err != nil || len(dirs) == 0 {
		return false, fmt.Sprint("no threads: ", err)
	}
	var states []string
	all := true
	for _, f := range dirs {
		b, err := os.ReadFile(f)
		if err != nil {
			return false, err.Error()
		}
		// The state follows the command name in parentheses, which may contain spaces.
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 || i+2 >= len(s) {
			return false, s
		}
		st := s[i+2 : i+3]
		states = append(states, st)
		if st != "S" {
			all = false
		}
	}
	return all, strings.Join(states, "")
}

// dialNoWait connects a blocking socket; connect returns once the handshake is done, even if
// the server never accepts.
func dialNoWait(t *testing.T, addr netip.AddrPort) (int, netip.AddrPort) {
	t.Helper()
	return labtest.Dial(t, addr)
}

// dialAccepted connects to addr and waits until the kernel shows the server's end of the
// connection held by a descriptor (sock_diag: accepted, not just queued).
func dialAccepted(t *testing.T, addr netip.AddrPort) int {
	t.Helper()
	fd, local := dialNoWait(t, addr)
	labtest.WaitFor(t, 5*time.Second, "accept", func() (bool, string) {
		s, found, _ := sockdiag.Find(addr, local)
		return found && s.HasFD(), s.String()
	})
	return fd
}

// With RLIMIT_NOFILE at 24 the server runs out of descriptors after about a dozen connections.
// The rest are accepted with the reserve fd and closed at once: the accept queue empties, those
// clients see EOF, no thread spins, and the server serves again once fds are free.
func TestEMFILEShedsWithoutSpinning(t *testing.T) {
	t.Parallel()
	// -splice: with no fd left for a pipe, the echo falls back to read and sendmsg.
	// -trace: the shedding is narrated too.
	for _, mode := range [][]string{nil, {"-et"}, {"-splice"}, {"-trace"}} {
		t.Run(strings.Join(append([]string{"mode"}, mode...), ""), func(t *testing.T) {
			t.Parallel()
			p := startServerProcess(t, append([]string{"-nofile", "24", "-backlog", "64"}, mode...)...)
			const clients = 40
			fds := make([]int, clients)
			locals := make([]netip.AddrPort, clients)
			for i := range fds {
				fds[i], locals[i] = dialNoWait(t, p.addr)
			}
			// Every client is either served (its server end has an fd) or shed (closed by the
			// server: the client's end is in CLOSE_WAIT). The accept queue is empty.
			var served, shed []int
			labtest.WaitFor(t, 10*time.Second, "every client to be served or shed", func() (bool, string) {
				served, shed = nil, nil
				for i := range fds {
					c, found, err := sockdiag.Find(locals[i], p.addr)
					if err != nil || !found {
						return false, fmt.Sprint("client ", i, " not found ", err)
					}
					switch {
					case c.State == sockdiag.CloseWait:
						shed = append(shed, i)
					case c.State == sockdiag.Established:
						s, found, _ := sockdiag.Find(p.addr, locals[i])
						if !found || !s.HasFD() {
							return false, fmt.Sprintf("client %d still waiting: %v", i, s)
						}
						served = append(served, i)
					}
				}
				ls, _ := listenersAt(p.addr)
				queued := -1
				if len(ls) == 1 {
					queued = int(ls[0].RecvQ)
				}
				return len(served)+len(shed) == clients && queued == 0,
					fmt.Sprintf("served %d, shed %d, accept queue %d", len(served), len(shed), queued)
			})
			assert.NotEmpty(t, served)
			assert.NotEmpty(t, shed, "with 24 fds not every client fits")
			labtest.WaitFor(t, 10*time.Second, "every server thread to sleep", func() (bool, string) {
				return threadsAllSleeping(p.cmd.Process.Pid)
			})
			// The served clients really are served; a shed client reads EOF.
			echoFD(t, fds[served[0]], "served")
			n, err := unix.Read(fds[shed[0]], make([]byte, 8))
			assert.NoError(t, err)
			assert.Equal(t, 0, n, "a shed client reads EOF")
			// Free the descriptors: a new client is served.
			for _, i := range served {
				labtest.CloseNow(t, fds[i])
			}
			labtest.WaitFor(t, 10*time.Second, "a new client to be served", func() (bool, string) {
				// Not labtest.Dial: this loop may get the same fd number twice, and each
				// attempt closes its own socket before the next.
				fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
				if err != nil {
					return false, err.Error()
				}
				defer unix.Close(fd)
				if err := unix.Connect(fd, lab.SockaddrOf(p.addr)); err != nil {
					return false, err.Error()
				}
				if _, err := unix.Write(fd, []byte("again")); err != nil {
					return false, err.Error()
				}
				got, err := readFull(fd, 5, 2*time.Second)
				return err == nil && string(got) == "again", fmt.Sprint(err)
			})
			assert.Equal(t, 0, p.stop(t, syscall.SIGTERM), p.output())
			assert.Contains(t, p.output(), "shed ")
			if slices.Contains(mode, "-trace") {
				for _, call := range []string{"(the reserve fd, to accept and shed) = 0", "(shed: the client reads EOF) = 0"} {
					assert.Contains(t, p.output(), call)
				}
			}
		})
	}
}

// When even the reserve cannot be opened again, the server disarms the listener until a
// connection closes (reserveOrPause): a level-triggered loop would otherwise be told about the
// queued connection over and over, and an edge-triggered one would not be told again at all.
// To get there on demand the test lowers the running server's soft RLIMIT_NOFILE from outside
// with prlimit(2) to the reserve fd's number (or to the lowest free fd, if lower): every fd
// below the limit is in use, so after the server closes its reserve to shed a connection,
// accept4 and open both fail with EMFILE (getrlimit(2): "a number one greater than the
// maximum file descriptor number that can be opened"). The kernel shows the listener's
// interest mask without EPOLLIN (/proc/PID/fdinfo of the epoll fd, epoll(7)), the connection
// still in the accept queue, and every server thread asleep; once the limit is back and a served
// client leaves, the listener is armed again and the queued client is served. With workers, the close (and so the
// re-arm) happens on a worker's thread while the event loop may be disarming.
func TestEMFILEWithoutReservePausesListener(t *testing.T) {
	t.Parallel()
	for _, mode := range [][]string{nil, {"-et"}, {"-workers", "2"}} {
		t.Run(strings.Join(append([]string{"mode"}, mode...), ""), func(t *testing.T) {
			t.Parallel()
			p := startServerProcess(t, mode...)
			pid := p.cmd.Process.Pid
			labtest.WaitFor(t, 10*time.Second, "the server to narrate its set-up", func() (bool, string) {
				return strings.Contains(p.output(), "serving:"), p.output()
			})
			out := p.output()
			lfd, epfd, reserve := callResult(t, out, "socket("), callResult(t, out, "epoll_create1("), callResult(t, out, "(the reserve fd)")
			listenerArmed := func() (bool, string) {
				interest, err := epollInterest(pid, epfd)
				ev, ok := interest[lfd]
				return ok && ev&unix.EPOLLIN != 0, fmt.Sprintf("listener fd %d events %#x (listed %v), %v", lfd, ev, ok, err)
			}
			armed, why := listenerArmed()
			require.True(t, armed, why)

			served := dialAccepted(t, p.addr) // its server end takes an fd above the reserve
			fds, err := processFDs(pid)
			require.NoError(t, err)
			require.Equal(t, "/dev/null", fds[reserve], "the reserve fd")
			// Go's runtime has its own epoll fd open already: it would die opening it at its
			// first timer once no fd is free (openRuntimePoller in roles.go).
			runtimePoller := false
			for fd, target := range fds {
				runtimePoller = runtimePoller || fd != epfd && target == "anon_inode:[eventpoll]"
			}
			require.True(t, runtimePoller, "Go's runtime has no epoll fd of its own yet: %v", fds)
			limit := uint64(min(lowestFree(fds), reserve))
			var old unix.Rlimit
			require.NoError(t, unix.Prlimit(pid, unix.RLIMIT_NOFILE, nil, &old))
			require.NoError(t, unix.Prlimit(pid, unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: limit, Max: old.Max}, nil))

			queued, local := dialNoWait(t, p.addr)
			labtest.WaitFor(t, 10*time.Second, "the listener to be disarmed with the connection queued", func() (bool, string) {
				armed, why := listenerArmed()
				ls, _ := listenersAt(p.addr)
				c, found, _ := sockdiag.Find(p.addr, local)
				waiting := len(ls) == 1 && ls[0].RecvQ == 1 && found && !c.HasFD()
				return !armed && waiting, fmt.Sprintf("%s; listeners %v; queued connection %v (found %v)", why, ls, c, found)
			})
			labtest.WaitFor(t, 10*time.Second, "every server thread to sleep", func() (bool, string) {
				return threadsAllSleeping(pid)
			})
			fds, err = processFDs(pid)
			require.NoError(t, err)
			assert.NotContains(t, fds, reserve, "the reserve could not be opened again")

			// fds are free again once the limit is back, but the listener waits for a close.
			require.NoError(t, unix.Prlimit(pid, unix.RLIMIT_NOFILE, &old, nil))
			labtest.CloseNow(t, served)
			labtest.WaitFor(t, 10*time.Second, "the listener to be armed again", listenerArmed)
			echoFD(t, queued, "queued, then served")
			ls, err := listenersAt(p.addr)
			require.NoError(t, err)
			require.Len(t, ls, 1)
			assert.Zero(t, ls[0].RecvQ, "accept queue")
			assert.Equal(t, 0, p.stop(t, syscall.SIGTERM), p.output())
		})
	}
}

// listenersAt returns the kernel's listening TCP sockets bound to addr (sock_diag); a
// listener's Recv-Q is its accept queue.
func listenersAt(addr netip.AddrPort) ([]sockdiag.Socket, error) {
	return sockdiag.Dump(sockdiag.TCP, sockdiag.Filter{Local: addr, States: []sockdiag.State{sockdiag.Listen}})
}

// callResult returns the result of the first system call in a server's narration whose line
// contains marker: 6 for "socket(" in "socket(AF_INET, SOCK_STREAM|SOCK_CLOEXEC, 0) = 6".
func callResult(t *testing.T, out, marker string) int {
	t.Helper()
	for line := range strings.Lines(out) {
		i := strings.LastIndex(line, " = ")
		if !strings.Contains(line, marker) || i < 0 {
			continue
		}
		fd, err := strconv.Atoi(strings.TrimSpace(line[i+len(" = "):]))
		require.NoError(t, err, "in %q", line)
		return fd
	}
	t.Fatalf("no %q in the server's narration:\n%s", marker, out)
	return -1
}

// epollInterest returns the interest list of epoll fd epfd in process pid, as the kernel
// shows it in /proc/PID/fdinfo/EPFD: one "tfd: FD events: HEX ..." line per watched fd
// (proc(5), "/proc/pid/fdinfo"). The kernel adds EPOLLERR and EPOLLHUP to every mask.
func epollInterest(pid, epfd int) (map[int]uint32, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%d", pid, epfd))
	if err != nil {
		return nil, err
	}
	interest := map[int]uint32{}
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		if len(f) < 4 || f[0] != "tfd:" || f[2] != "events:" {
			continue
		}
		fd, err1 := strconv.Atoi(f[1])
		ev, err2 := strconv.ParseUint(f[3], 16, 32)
		if err := errors.Join(err1, err2); err != nil {
			return nil, fmt.Errorf("%q: %w", line, err)
		}
		interest[fd] = uint32(ev)
	}
	return interest, nil
}

// processFDs maps each descriptor process pid has open to what /proc/PID/fd says it is
// ("socket:[123]", "anon_inode:[eventpoll]", "/dev/null"); labtest.OpenFDs is the same for
// this process.
func processFDs(pid int) (map[int]string, error) {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	fds := map[int]string{}
	for _, e := range entries {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if target, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil {
			fds[fd] = target
		}
	}
	return fds, nil
}

// lowestFree returns the lowest descriptor number not in fds: the number open(2) and
// accept(2) would return next (open(2): "the lowest-numbered file descriptor not currently
// open").
func lowestFree(fds map[int]string) int {
	free := 0
	for fds[free] != "" {
		free++
	}
	return free
}

func echoFD(t *testing.T, fd int, msg string) {
	t.Helper()
	_, err := unix.Write(fd, []byte(msg))
	require.NoError(t, err)
	got, err := readFull(fd, len(msg), 5*time.Second)
	require.NoError(t, err)
	assert.Equal(t, msg, string(got))
}

// Edge-triggered, the server reads each report until read(2) returns EAGAIN: no new report
// comes for bytes left unread (epoll(7), "Level-triggered and edge-triggered"). Level-
// triggered, one read per report is enough, because the kernel reports again while bytes wait.
// The kernel counts the server process's read(2) calls, including those that return EAGAIN
// (syscr in /proc/PID/io, readCalls): two per message edge-triggered, one level-triggered.
func TestEdgeTriggeredServerReadsUntilEAGAIN(t *testing.T) {
	t.Parallel()
	for _, mode := range []struct {
		name            string
		flags           []string
		readsPerMessage float64
	}{{"level", nil, 1}, {"edge", []string{"-et"}, 2}} {
		t.Run(mode.name, func(t *testing.T) {
			t.Parallel()
			p := startServerProcess(t, mode.flags...)
			ioFile := fmt.Sprintf("/proc/%d/io", p.cmd.Process.Pid)
			if _, err := os.ReadFile(ioFile); err != nil {
				t.Skipf("the kernel does not count read calls here (%v): needs CONFIG_TASK_IO_ACCOUNTING", err)
			}
			fd := dialAccepted(t, p.addr)
			base := readCalls(p.cmd.Process.Pid)
			// One message at a time, and the next only after the server's reads for this one
			// are done: then no message can arrive while the server still drains the last.
			const messages = 20
			for i := 1; i <= messages; i++ {
				echoFD(t, fd, fmt.Sprintf("message %d", i))
				want := mode.readsPerMessage * float64(i)
				labtest.WaitFor(t, 5*time.Second, "the server's reads for this message", func() (bool, string) {
					got := readCalls(p.cmd.Process.Pid) - base
					return got >= want, fmt.Sprintf("%v read calls after %d messages, want %v", got, i, want)
				})
			}
			// A level-triggered server that also read until EAGAIN would make 40. The margin
			// is for Go's runtime, which reads its own eventfd when something wakes its
			// netpoller (netpollBreak, runtime/netpoll_epoll.go).
			reads := readCalls(p.cmd.Process.Pid) - base
			assert.GreaterOrEqual(t, reads, mode.readsPerMessage*messages)
			assert.LessOrEqual(t, reads, mode.readsPerMessage*messages+2)
		})
	}
}

// epoll_wait returns EINTR when a signal handler runs while it waits (signal(7): never
// restarted, whatever SA_RESTART says); the loop retries and goes on serving.
func TestEpollWaitRetriesAfterEINTR(t *testing.T) {
	t.Parallel()
	p := startServerProcess(t, "-trace")
	fd, _ := dialNoWait(t, p.addr)
	echoFD(t, fd, "1")
	pid := p.cmd.Process.Pid
	// SIGURG is harmless to a Go program (the runtime's preemption signal); aimed at every
	// thread of the server, it interrupts the one waiting in epoll_wait.
	labtest.WaitFor(t, 5*time.Second, "an epoll_wait interrupted with EINTR", func() (bool, string) {
		tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
		if err != nil {
			return false, err.Error()
		}
		for _, task := range tasks {
			if tid, err := strconv.Atoi(task.Name()); err == nil {
				unix.Tgkill(pid, tid, unix.SIGURG)
			}
		}
		return strings.Contains(p.output(), "= -1 EINTR"), "no EINTR yet"
	})
	echoFD(t, fd, "2")
	assert.Equal(t, 0, p.stop(t, syscall.SIGTERM), p.output())
}

// SIGINT and SIGTERM wake epoll_wait through the eventfd, and the server exits 0 having said
// what it closed. Its clients read EOF and its listener leaves the kernel's table — but the
// kernel closes a process's descriptors when it exits anyway, so these checks show the signal
// path works, not that the server closes its fds itself: TestServeClosesEveryFDBeforeReturning
// proves that in process.
func TestSignalShutsDownCleanly(t *testing.T) {
	t.Parallel()
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			t.Parallel()
			p := startServerProcess(t, "-workers", "2")
			var fds []int
			for range 3 {
				fd := dialAccepted(t, p.addr)
				echoFD(t, fd, "ping")
				fds = append(fds, fd)
			}
			assert.Equal(t, 0, p.stop(t, sig), p.output())
			for _, fd := range fds {
				n, err := unix.Read(fd, make([]byte, 8))
				assert.NoError(t, err)
				assert.Equal(t, 0, n, "the server closed the connection: EOF")
			}
			ls, err := listenersAt(p.addr)
			require.NoError(t, err)
			assert.Empty(t, ls, "the listener is closed")
			assert.Contains(t, p.output(), "closed 3 open connection(s)")
			assert.Contains(t, p.output(), "sockets still open at exit (from /proc/self/fd): 0")
		})
	}
}

// Serve, woken, closes everything it opened before it returns. With workers, -splice (so the
// workers have pipes) and three open connections: afterwards sock_diag lists no listener and no
// server end of those connections held by a descriptor, and none of the descriptors the server
// had opened — listener, epoll instance, eventfd, reserve fd, pipes, connections — is still in
// /proc/self/fd. It is checked in this process while it runs because once a process exits the
// kernel closes every descriptor anyway: TestSignalShutsDownCleanly's checks after the exit
// cannot tell a clean shutdown from a leaky one. Not parallel: an epoll instance or an eventfd
// looks the same in /proc/self/fd as another test's, so no other test may open one meanwhile.
func TestServeClosesEveryFDBeforeReturning(t *testing.T) {
	before := labtest.OpenFDs()
	s, stop := serveInProcess(t, ServerConfig{Workers: 2, Splice: true})
	t.Cleanup(func() { _ = stop() })
	clients := map[int]netip.AddrPort{}
	for range 3 {
		fd, local := labtest.Dial(t, s.Addr)
		echoFD(t, fd, "ping") // a worker splices it, through a pipe it makes
		clients[fd] = local
	}
	// The server's descriptors: every one that is new since before and not a client's.
	serverFDs := map[string]string{}
	kinds := map[string]int{}
	for fd, target := range labtest.OpenFDs() {
		n, _ := strconv.Atoi(fd)
		if _, client := clients[n]; client || before[fd] == target {
			continue
		}
		serverFDs[fd] = target
		kind := target // anon_inode:[eventpoll], anon_inode:[eventfd], /dev/null
		if k, _, found := strings.Cut(target, ":["); found && k != "anon_inode" {
			kind = k // socket, pipe: the inode number tells instances apart
		}
		kinds[kind]++
	}
	t.Logf("the server's descriptors: %v", serverFDs)
	// Listener and three connections, epoll, eventfd, reserve, at least one pipe (two ends).
	assert.Equal(t, 4, kinds["socket"], "listener and three connections")
	assert.Equal(t, 1, kinds["anon_inode:[eventpoll]"], "the epoll instance")
	assert.Equal(t, 1, kinds["anon_inode:[eventfd]"], "the wake-up eventfd")
	assert.Equal(t, 1, kinds["/dev/null"], "the reserve fd")
	assert.GreaterOrEqual(t, kinds["pipe"], 2, "a worker's pipe (two ends)")

	require.NoError(t, stop())
	ls, err := listenersAt(s.Addr)
	require.NoError(t, err)
	assert.Empty(t, ls, "the listener is closed")
	for fd, local := range clients {
		srv, found, err := sockdiag.Find(s.Addr, local)
		require.NoError(t, err)
		assert.False(t, found && srv.HasFD(), "the server's end of %v still has a descriptor: %v", local, srv)
		assert.NoError(t, readEOF(fd, 5*time.Second), "the client of %v", local)
	}
	after := labtest.OpenFDs()
	for fd, target := range serverFDs {
		assert.NotEqual(t, target, after[fd], "fd %s (%s) is still open after Serve returned", fd, target)
	}
}

// serverEnds lists the server's ends of its established connections as sock_diag reports
// them: the sockets whose local address is the listener's.
func serverEnds(addr netip.AddrPort) ([]sockdiag.Socket, error) {
	return sockdiag.Dump(sockdiag.TCP, sockdiag.Filter{Local: addr, States: []sockdiag.State{sockdiag.Established}})
}

// heldByFD counts the sockets a process holds a descriptor for (accepted ones, not ones
// still waiting in an accept queue).
func heldByFD(socks []sockdiag.Socket) int {
	n := 0
	for _, so := range socks {
		if so.HasFD() {
			n++
		}
	}
	return n
}

// readEOF waits at most timeout for read(2) on the blocking fd to return 0 (the peer's FIN)
// and fails if data or an error comes instead.
func readEOF(fd int, timeout time.Duration) error {
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	deadline := time.Now().Add(timeout)
	for pfd[0].Revents == 0 {
		left := time.Until(deadline)
		if left <= 0 {
			return fmt.Errorf("no EOF within %v", timeout)
		}
		if _, err := unix.Poll(pfd, int(left.Milliseconds())+1); err != nil && err != unix.EINTR {
			return err
		}
	}
	n, err := unix.Read(fd, make([]byte, 8))
	if err == nil && n != 0 {
		err = fmt.Errorf("read %d bytes, want EOF", n)
	}
	return err
}

func TestUsageErrorsExitTwo(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"server", "-workers", "-1"},
		{"server", "-addr", "localhost:9000"},
		{"server", "-chunk", "0"},
		{"server", "-nofile", "3"},
		{"server", "-work", "-1s"},
		{"server", "-backlog", "4294967295"}, // listen(2) would get it truncated to an int
		{"server", "-backlog", "0"},
		{"server", "stray"},
		{"load", "-conns", "0"},
		{"load", "-size", "0"},
		{"load", "-duration", "0s"},
		{"load", "-addr", "127.0.0.1:0"},
		{"nosuchpart"},
	} {
		_, stderr, code := labtest.RunProgram(t, nil, args...)
		assert.Equal(t, 2, code, "%v", args)
		assert.Contains(t, stderr, "usage:", "%v", args)
		assert.NotContains(t, stderr, "panic", "%v", args)
	}
}

// -nofile above the hard RLIMIT_NOFILE is a usage error that names the hard limit, not
// setrlimit's bare EINVAL.
func TestNoFileAboveHardLimitIsAUsageError(t *testing.T) {
	t.Parallel()
	var lim unix.Rlimit
	require.NoError(t, unix.Getrlimit(unix.RLIMIT_NOFILE, &lim))
	if lim.Max >= 1<<20 {
		t.Skipf("the hard RLIMIT_NOFILE is %d, above what -nofile accepts at all", lim.Max)
	}
	_, stderr, code := labtest.RunProgram(t, nil, "server", "-nofile", strconv.FormatUint(lim.Max+1, 10))
	assert.Equal(t, 2, code, stderr)
	assert.Contains(t, stderr, fmt.Sprintf("above the hard limit of %d", lim.Max))
	assert.NotContains(t, stderr, "panic")
}

// A port in use is a one-line runtime error with a hint, exit 1.
func TestAddressInUseExitsOneWithHint(t *testing.T) {
	t.Parallel()
	_, addr := labtest.Listen(t, labtest.Loopback4, 1)
	_, stderr, code := labtest.RunProgram(t, nil, "server", "-addr", addr.String())
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, "address already in use")
	assert.Contains(t, stderr, "hint:")
	assert.Equal(t, 1, strings.Count(strings.TrimSpace(stderr), "\n")+1, stderr)
}

// 10 000 concurrent connections, held within the fd limit: the kernel shows 10 000 server-side
// sockets with descriptors and every one of them echoes. The last check, that the server says
// it closed 10 000, is the program's own count: the kernel would close them at the exit anyway
// (TestServeClosesEveryFDBeforeReturning is the kernel's evidence of shutdown). (The server runs in
// its own process, so the two ends' 20 000 fds are split between two RLIMIT_NOFILE budgets.)
func TestTenThousandConcurrentConnections(t *testing.T) {
	t.Parallel()
	const conns = 10000
	var lim unix.Rlimit
	require.NoError(t, unix.Getrlimit(unix.RLIMIT_NOFILE, &lim))
	if lim.Cur < conns+500 {
		t.Skipf("RLIMIT_NOFILE is %d; this test needs %d (ulimit -n)", lim.Cur, conns+500)
	}
	p := startServerProcess(t, "-et")
	fds := make([]int, 0, conns)
	defer func() {
		for _, fd := range fds {
			// RST on close: 10 000 TIME_WAITs would linger for a minute otherwise.
			_ = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
			unix.Close(fd)
		}
	}()
	sa := lab.SockaddrOf(p.addr)
	for i := range conns {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		require.NoError(t, err, "socket %d", i)
		fds = append(fds, fd)
		require.NoError(t, connectRetry(fd, sa), "connect %d", i)
	}
	countServed := func() (bool, string) {
		socks, err := serverEnds(p.addr)
		if err != nil {
			return false, err.Error()
		}
		withFD := heldByFD(socks)
		return withFD == conns, fmt.Sprintf("%d server-side sockets with an fd", withFD)
	}
	labtest.WaitFor(t, 30*time.Second, "10 000 accepted connections", countServed)
	for i, fd := range fds {
		_, err := unix.Write(fd, []byte{byte(i)})
		require.NoError(t, err)
	}
	for i, fd := range fds {
		got, err := readFull(fd, 1, 10*time.Second)
		require.NoError(t, err, "connection %d", i)
		require.Equal(t, byte(i), got[0], "connection %d", i)
	}
	assert.Equal(t, 0, p.stop(t, syscall.SIGTERM), p.output())
	assert.Contains(t, p.output(), fmt.Sprintf("closed %d open connection(s)", conns))
}

// holdsSocket reports whether some descriptor of this process is the socket with this inode.
func holdsSocket(inode uint32) bool {
	entries, _ := os.ReadDir("/proc/self/fd")
	want := fmt.Sprintf("socket:[%d]", inode)
	for _, e := range entries {
		if target, _ := os.Readlink("/proc/self/fd/" + e.Name()); target == want {
			return true
		}
	}
	return false
}
