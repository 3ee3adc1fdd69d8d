//go:build linux

package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"socklab/internal/lab"
	"socklab/internal/labtest"
	"socklab/internal/sockdiag"
)

func TestMain(m *testing.M) { labtest.Main(m, &program) }

// loops are the two waits every server test runs with: the same loop, select or poll.
var loops = []struct {
	name string
	poll bool
}{{"select", false}, {"poll", true}}

// lockedBuffer collects narration that a server goroutine writes while a test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startServer runs the server loop on its own goroutine on 127.0.0.1:0 and stops it (every
// fd closed) when the test ends.
func startServer(t *testing.T, cfg serverConfig, out io.Writer) *server {
	t.Helper()
	cfg.addr = labtest.Loopback4
	n := lab.Quiet()
	if out != nil {
		n = lab.NewNarrator(out, false)
	}
	s, err := listenServer(n, cfg)
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- s.serve() }()
	t.Cleanup(func() {
		s.stop()
		assert.NoError(t, <-done)
	})
	return s
}

// roundTrip writes msg on a blocking client socket and reads exactly as many bytes back.
func roundTrip(t testing.TB, fd int, msg []byte) []byte {
	t.Helper()
	_, err := unix.Write(fd, msg)
	require.NoError(t, err)
	got, err := demoRecv(lab.Quiet(), fd, len(msg))
	require.NoError(t, err)
	return []byte(got)
}

// Fifty clients at once, each sending 32 KiB of its own bytes from one goroutine and reading
// from another: every client gets back exactly what it sent, from one server thread.
func TestManyConcurrentClientsGetExactEchoes(t *testing.T) {
	t.Parallel()
	for _, loop := range loops {
		t.Run(loop.name, func(t *testing.T) {
			t.Parallel()
			s := startServer(t, serverConfig{poll: loop.poll}, nil)
			const clients, size = 50, 32 * 1024
			var wg sync.WaitGroup
			errs := make(chan error, clients)
			for i := range clients {
				fd, _ := labtest.Dial(t, s.addr)
				want := bytes.Repeat([]byte{byte('A' + i%26)}, size)
				copy(want, fmt.Sprintf("client %d:", i))
				wg.Add(2)
				go func() {
					defer wg.Done()
					for off := 0; off < size; {
						k, err := unix.Write(fd, want[off:min(off+1000, size)])
						if err != nil {
							errs <- err
							return
						}
						off += k
					}
				}()
				go func() {
					defer wg.Done()
					got, err := demoRecv(lab.Quiet(), fd, size)
					if err == nil && got != string(want) {
						err = fmt.Errorf("client %d: echo differs (%d bytes)", i, len(got))
					}
					if err != nil {
						errs <- err
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			// The kernel agrees: fifty server-side connections, all ESTABLISHED, none with
			// bytes left unread or unacknowledged.
			labtest.WaitFor(t, 5*time.Second, "50 idle server-side sockets", func() (bool, string) {
				socks, err := sockdiag.Dump(sockdiag.TCP, sockdiag.Filter{Local: s.addr, States: []sockdiag.State{sockdiag.Established}})
				if err != nil {
					return false, err.Error()
				}
				busy := 0
				for _, so := range socks {
					if so.RecvQ != 0 || so.SendQ != 0 {
						busy++
					}
				}
				return len(socks) == clients && busy == 0, fmt.Sprintf("%d sockets, %d with queued bytes", len(socks), busy)
			})
		})
	}
}

// A client that closes is noticed (read() = 0), and its server-side socket leaves the kernel's
// table: without the server's close() it would sit in CLOSE_WAIT for ever.
func TestDisconnectedClientLeavesKernelTable(t *testing.T) {
	t.Parallel()
	for _, loop := range loops {
		t.Run(loop.name, func(t *testing.T) {
			t.Parallel()
			s := startServer(t, serverConfig{poll: loop.poll}, nil)
			stay, _ := labtest.Dial(t, s.addr)
			leave, leaveAddr := labtest.Dial(t, s.addr)
			assert.Equal(t, "one\n", string(roundTrip(t, leave, []byte("one\n"))))
			labtest.CloseNow(t, leave)
			labtest.WaitGone(t, s.addr, leaveAddr, 5*time.Second)
			// The client's side is in TIME_WAIT: it closed first, the server closed second.
			labtest.WaitState(t, leaveAddr, s.addr, sockdiag.TimeWait, 5*time.Second)
			assert.Equal(t, "still\n", string(roundTrip(t, stay, []byte("still\n"))))
		})
	}
}

// A client that resets (SO_LINGER {1, 0}, then close) makes the server's read fail with
// ECONNRESET; the server closes that fd (it leaves /proc/self/fd) and the others go on.
func TestResetClientDoesNotDisturbOthers(t *testing.T) {
	t.Parallel()
	for _, loop := range loops {
		t.Run(loop.name, func(t *testing.T) {
			t.Parallel()
			log := &lockedBuffer{}
			s := startServer(t, serverConfig{poll: loop.poll}, log)
			before, _ := labtest.Dial(t, s.addr)
			rst, rstAddr := labtest.Dial(t, s.addr)
			assert.Equal(t, "x\n", string(roundTrip(t, rst, []byte("x\n"))))
			serverSide := labtest.WaitState(t, s.addr, rstAddr, sockdiag.Established, 2*time.Second)
			require.True(t, serverSide.HasFD())
			require.NoError(t, unix.SetsockoptLinger(rst, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0}))
			labtest.CloseNow(t, rst)
			// No TIME_WAIT on the client side: a reset ends the connection at once.
			labtest.WaitGone(t, rstAddr, s.addr, 2*time.Second)
			socketLink := fmt.Sprintf("socket:[%d]", serverSide.Inode)
			labtest.WaitFor(t, 5*time.Second, "the server to close the reset socket's fd", func() (bool, string) {
				held := fdHolding(socketLink)
				return held == "", "still open as fd " + held
			})
			assert.Contains(t, log.String(), "ECONNRESET")
			after, _ := labtest.Dial(t, s.addr)
			assert.Equal(t, "before\n", string(roundTrip(t, before, []byte("before\n"))))
			assert.Equal(t, "after\n", string(roundTrip(t, after, []byte("after\n"))))
		})
	}
}

// fdHolding returns the fd of this process that refers to target (e.g. "socket:[1234]"), or "".
func fdHolding(target string) string {
	entries, _ := os.ReadDir("/proc/self/fd")
	for _, e := range entries {
		if link, _ := os.Readlink("/proc/self/fd/" + e.Name()); link == target {
			return e.Name()
		}
	}
	return ""
}

// A client that sends and never reads cannot make the server hold more than -max-line bytes
// for it: once the buffer is full the server stops reading that socket, the kernel's receive
// queue stays full and TCP's window closes on the client (persist timer). All of it is read
// from the kernel's counters of the server's socket, not from the server's bookkeeping.
func TestNonReadingClientKeepsServerMemoryBounded(t *testing.T) {
	t.Parallel()
	for _, loop := range loops {
		t.Run(loop.name, func(t *testing.T) {
			t.Parallel()
			const maxLine = 1500
			s := startServer(t, serverConfig{poll: loop.poll, maxLine: maxLine}, nil)
			fd := labtest.Socket(t, labtest.Loopback4, unix.SOCK_STREAM)
			for _, opt := range []int{unix.SO_RCVBUF, unix.SO_SNDBUF} {
				require.NoError(t, unix.SetsockoptInt(fd, unix.SOL_SOCKET, opt, 16384))
			}
			require.NoError(t, unix.Connect(fd, lab.SockaddrOf(s.addr)))
			caddr := labtest.LocalAddr(t, fd)
			require.NoError(t, unix.SetNonblock(fd, true))
			chunk := bytes.Repeat([]byte("0123456789abcdef"), 4096)
			other, _ := labtest.Dial(t, s.addr)
			loopTurned := func() error {
				if _, err := unix.Write(other, []byte("?")); err != nil {
					return err
				}
				_, err := demoRecv(lab.Quiet(), other, 1)
				return err
			}
			sent, err := fillUntilStalled(fd, chunk, s.addr, caddr, loopTurned)
			require.NoError(t, err)

			stalled, found, err := sockdiag.Find(s.addr, caddr)
			require.NoError(t, err)
			require.True(t, found)
			require.NotNil(t, stalled.Info)
			assert.Positive(t, stalled.RecvQ, "bytes the kernel holds that the server no longer reads: %v", stalled)
			held := heldByServer(stalled)
			assert.GreaterOrEqual(t, held, int64(0))
			assert.LessOrEqual(t, held, int64(maxLine), "server holds at most -max-line bytes: %v", stalled)

			// Another client's round trip proves the loop has turned since. The client sends
			// nothing more (its writes fail), so a server that still read this socket would
			// have emptied its receive queue in that turn: bytes still queued mean the server
			// no longer reads it.
			assert.Equal(t, "alive\n", string(roundTrip(t, other, []byte("alive\n"))))
			again, _, err := sockdiag.Find(s.addr, caddr)
			require.NoError(t, err)
			require.NotNil(t, again.Info)
			assert.Positive(t, again.RecvQ, "the server did not drain the stalled socket: %v", again)
			assert.LessOrEqual(t, heldByServer(again), int64(maxLine), again.String())

			// Reading resumes the flow: every byte comes back, in order.
			echoed, err := drainEchoes(fd, sent, chunk)
			require.NoError(t, err)
			assert.Equal(t, sent, echoed)
			assert.Greater(t, sent, 100*maxLine, "the client pushed far more than the bound")
		})
	}
}

// serverProc is the server role running in a child process.
type serverProc struct {
	cmd    *exec.Cmd
	addr   netip.AddrPort
	out    *lockedBuffer // its stdout, complete once exit returned
	copied chan struct{}
}

// serverProcess runs the server role in a child process and returns once it listens; the
// test's cleanup makes sure the child is gone.
func serverProcess(t testing.TB, args ...string) *serverProc {
	t.Helper()
	return startServerCommand(t, labtest.ProgramCommand(append([]string{"server", "-addr", "127.0.0.1:0"}, args...)...))
}

// startServerCommand starts cmd, a server that prints "listening on ADDR" (possibly after
// "-> "), and returns once it listens.
func startServerCommand(t testing.TB, cmd *exec.Cmd) *serverProc {
	t.Helper()
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	stderr := &lockedBuffer{}
	cmd.Stderr = stderr
	require.NoError(t, cmd.Start())
	p := &serverProc{cmd: cmd, out: &lockedBuffer{}, copied: make(chan struct{})}
	lines := make(chan string, 1)
	go func() {
		defer close(p.copied)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			fmt.Fprintln(p.out, sc.Text())
			line := strings.TrimPrefix(strings.TrimSpace(sc.Text()), "-> ")
			if rest, ok := strings.CutPrefix(line, "listening on "); ok {
				lines <- strings.Fields(rest)[0]
			}
		}
		close(lines)
	}()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-p.copied
			cmd.Wait()
		}
	})
	select {
	case a, ok := <-lines:
		if !ok {
			t.Fatalf("server exited before listening: %s %s", p.out.String(), stderr.String())
		}
		p.addr, err = netip.ParseAddrPort(a)
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatalf("server did not say where it listens: %s", p.out.String())
	}
	return p
}

// exit sends sig and returns the child's exit error (nil = status 0) once its output is read.
func (p *serverProc) exit(sig unix.Signal) error {
	if err := p.cmd.Process.Signal(sig); err != nil {
		return err
	}
	<-p.copied // the pipe reaches EOF when the child exits; Wait must come after the reads
	return p.cmd.Wait()
}

// needFDs skips when the hard RLIMIT_NOFILE cannot reach fd 1024 plus room.
func needFDs(t *testing.T) {
	var lim unix.Rlimit
	require.NoError(t, unix.Getrlimit(unix.RLIMIT_NOFILE, &lim))
	if lim.Max < 1024+64 {
		t.Skipf("hard RLIMIT_NOFILE is %d: fd 1024 cannot be reached", lim.Max)
	}
}

// With every fd below 1023 taken, the select server serves a client on fd 1023 and refuses
// the next one, whose fd would be 1024 = FD_SETSIZE: the refused client sees the server's FIN
// at once, the server says why, keeps serving the first client and still exits 0 on SIGTERM.
// (In a child process: the fillers would push every parallel test's fds past 1023.)
func TestSelectRefusesFDAtSetSize(t *testing.T) {
	t.Parallel()
	needFDs(t)
	p := serverProcess(t, "-fill-fds-to", "1023")
	addr := p.addr
	first, _ := labtest.Dial(t, addr)
	assert.Equal(t, "fits\n", string(roundTrip(t, first, []byte("fits\n"))))
	refused, refusedAddr := labtest.Dial(t, addr)
	labtest.WaitState(t, refusedAddr, addr, sockdiag.CloseWait, 5*time.Second)
	k, err := unix.Read(refused, make([]byte, 8))
	assert.NoError(t, err)
	assert.Equal(t, 0, k, "the refused client reads EOF")
	assert.Equal(t, "again\n", string(roundTrip(t, first, []byte("again\n"))))
	require.NoError(t, p.exit(unix.SIGTERM))
	assert.Contains(t, p.out.String(), "= 1023")
	assert.Contains(t, p.out.String(), "fd 1024 ≥ FD_SETSIZE (1024)")
}

// The poll loop has no FD_SETSIZE: the same setup serves a client on fd 1024.
func TestPollServesFDAboveSetSize(t *testing.T) {
	t.Parallel()
	needFDs(t)
	p := serverProcess(t, "-poll", "-fill-fds-to", "1024")
	fd, _ := labtest.Dial(t, p.addr)
	assert.Equal(t, "past 1024\n", string(roundTrip(t, fd, []byte("past 1024\n"))))
	require.NoError(t, p.exit(unix.SIGTERM))
	assert.Contains(t, p.out.String(), "= 1024")
}

// SIGINT and SIGTERM make the server close every fd and exit 0: its clients see the FIN
// (CLOSE_WAIT on their side) and the listener leaves the kernel's table.
func TestServerClosesEverythingAndExitsZeroOnSignal(t *testing.T) {
	t.Parallel()
	for _, sig := range []unix.Signal{unix.SIGTERM, unix.SIGINT} {
		for _, loop := range loops {
			t.Run(fmt.Sprintf("%v/%s", unix.SignalName(sig), loop.name), func(t *testing.T) {
				t.Parallel()
				args := []string{}
				if loop.poll {
					args = append(args, "-poll")
				}
				p := serverProcess(t, args...)
				addr := p.addr
				var clients []netip.AddrPort
				for range 3 {
					fd, local := labtest.Dial(t, addr)
					assert.Equal(t, "hi\n", string(roundTrip(t, fd, []byte("hi\n"))))
					clients = append(clients, local)
				}
				require.NoError(t, p.exit(sig), "exit status 0")
				for _, c := range clients {
					labtest.WaitState(t, c, addr, sockdiag.CloseWait, 5*time.Second)
				}
				labtest.WaitGone(t, addr, netip.AddrPortFrom(netip.IPv4Unspecified(), 0), 5*time.Second)
			})
		}
	}
}

// select and poll return EINTR when a signal handler runs while they wait (signal(7): never
// restarted); the loop retries and goes on serving.
func TestLoopRetriesAfterEINTR(t *testing.T) {
	t.Parallel()
	for _, loop := range loops {
		t.Run(loop.name, func(t *testing.T) {
			t.Parallel()
			log := &lockedBuffer{}
			s := startServer(t, serverConfig{poll: loop.poll}, log)
			fd, _ := labtest.Dial(t, s.addr)
			assert.Equal(t, "1\n", string(roundTrip(t, fd, []byte("1\n"))))
			// SIGURG is harmless to a Go program (the runtime's preemption signal); aimed at
			// the server's thread while it waits, it interrupts the wait.
			labtest.WaitFor(t, 5*time.Second, "a wait interrupted with EINTR", func() (bool, string) {
				if tid := int(s.tid.Load()); tid != 0 {
					unix.Tgkill(unix.Getpid(), tid, unix.SIGURG)
				}
				return strings.Contains(log.String(), "= -1 EINTR"), "no EINTR yet"
			})
			assert.Equal(t, "2\n", string(roundTrip(t, fd, []byte("2\n"))))
		})
	}
}

// runBounded is labtest.RunProgram with a deadline: a client waiting for a server that never
// closes must fail the test, not hang it.
func runBounded(t *testing.T, stdin io.Reader, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := labtest.ProgramCommand(args...)
	var out, errb lockedBuffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, &out, &errb
	require.NoError(t, cmd.Start())
	timer := time.AfterFunc(20*time.Second, func() { cmd.Process.Kill() })
	err := cmd.Wait()
	if !timer.Stop() {
		t.Fatalf("%v did not finish within 20 s; output so far: %q", args, out.String())
	}
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return out.String(), errb.String(), exit.ExitCode()
	}
	require.NoError(t, err)
	return out.String(), errb.String(), 0
}

// `printf 'a\nb\n' | client` prints both lines and exits 0: EOF on stdin becomes
// shutdown(SHUT_WR), and the client reads until the server closes.
func TestClientHalfClosesAndPrintsEverything(t *testing.T) {
	t.Parallel()
	for _, loop := range loops {
		t.Run(loop.name, func(t *testing.T) {
			t.Parallel()
			s := startServer(t, serverConfig{poll: loop.poll}, nil)
			out, errOut, code := runBounded(t, strings.NewReader("a\nb\n"), "client", "-addr", s.addr.String())
			assert.Equal(t, 0, code, errOut)
			assert.Equal(t, "a\nb\n", out)
		})
	}
}

// Two megabytes through a server whose buffer is 512 bytes: neither side deadlocks and every
// byte comes back in order (the client never blocks in write while echoes wait).
func TestClientLargeInputThroughSmallServerBuffer(t *testing.T) {
	t.Parallel()
	s := startServer(t, serverConfig{maxLine: 512}, nil)
	var in bytes.Buffer
	for i := 0; in.Len() < 2<<20; i++ {
		fmt.Fprintf(&in, "line %d %s\n", i, strings.Repeat("x", i%200))
	}
	out, errOut, code := runBounded(t, bytes.NewReader(in.Bytes()), "client", "-addr", s.addr.String())
	assert.Equal(t, 0, code, errOut)
	assert.Equal(t, len(in.String()), len(out))
	assert.True(t, out == in.String(), "output differs from input")
}

// The client works with any plain TCP echo server (here Go's net package, which half-closes
// after echoing everything).
func TestClientWorksWithPlainEchoServer(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(c, c)
		c.(*net.TCPConn).CloseWrite()
	}()
	out, errOut, code := runBounded(t, strings.NewReader("plain\n"), "client", "-addr", ln.Addr().String())
	assert.Equal(t, 0, code, errOut)
	assert.Equal(t, "plain\n", out)
	<-done
}

// The client works with a plain select echo server written in C (testdata/select_echo.c,
// compiled with the system's cc; skipped when there is none).
func TestClientWorksWithCSelectServer(t *testing.T) {
	t.Parallel()
	srv := exec.Command(labtest.CompileC(t, "select_echo"))
	stdout, err := srv.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, srv.Start())
	t.Cleanup(func() { srv.Process.Kill(); srv.Wait() })
	port, err := bufio.NewReader(stdout).ReadString('\n')
	require.NoError(t, err)
	addr := "127.0.0.1:" + strings.TrimSpace(port)
	input := strings.Repeat("from C\n", 5000)
	out, errOut, code := runBounded(t, strings.NewReader(input), "client", "-addr", addr)
	assert.Equal(t, 0, code, errOut)
	assert.True(t, out == input, "echo differs: %d of %d bytes", len(out), len(input))
}

// A server that closes before the input ends is an error (exit 1), not a silent success.
func TestClientReportsServerClosingEarly(t *testing.T) {
	t.Parallel()
	lfd, laddr := labtest.Listen(t, labtest.Loopback4, 1)
	r, w, err := os.Pipe()
	require.NoError(t, err)
	defer r.Close()
	cmd := labtest.ProgramCommand("client", "-addr", laddr.String())
	var stderr bytes.Buffer
	cmd.Stdin, cmd.Stderr = r, &stderr
	require.NoError(t, cmd.Start())
	sfd, _ := labtest.Accept(t, lfd, 5*time.Second)
	labtest.CloseNow(t, sfd) // stdin still open: the client did not half-close
	err = cmd.Wait()
	w.Close()
	var exit *exec.ExitError
	require.ErrorAs(t, err, &exit)
	assert.Equal(t, 1, exit.ExitCode())
	assert.Contains(t, stderr.String(), "closed the connection before the input ended")
}

// Usage mistakes exit 2 with one line naming the mistake; a refused connection exits 1 with a
// hint.
func TestUsageErrorsExitTwo(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"server", "-addr", "localhost:9000"}, "not an IP address"},
		{[]string{"server", "-max-line", "0"}, "-max-line 0 out of range"},
		{[]string{"server", "-fill-fds-to", "-1"}, "out of range"},
		{[]string{"server", "-bogus"}, "flag provided but not defined"},
		{[]string{"server", "extra"}, "unexpected argument"},
		{[]string{"client", "-addr", "127.0.0.1"}, "missing port"},
		{[]string{"client", "-addr", "127.0.0.1:0"}, "port 0"},
		{[]string{"nosuchpart"}, "unknown part or role"},
	} {
		_, errOut, code := labtest.RunProgram(t, nil, c.args...)
		assert.Equal(t, 2, code, "%v: %s", c.args, errOut)
		assert.Contains(t, errOut, c.want, "%v", c.args)
	}
	lfd, free := labtest.Listen(t, labtest.Loopback4, 1)
	labtest.CloseNow(t, lfd) // a port nobody listens on any more
	_, errOut, code := labtest.RunProgram(t, strings.NewReader(""), "client", "-addr", free.String())
	assert.Equal(t, 1, code, errOut)
	assert.Contains(t, errOut, "connection refused")
	assert.Contains(t, errOut, "hint:")
}

// quietDemo is a demo whose narration is discarded, on the port-0 path (tests run in
// parallel; the fixed port 9000 is for the narrated demo alone).
func quietDemo() *lab.Demo { return &lab.Demo{Narrator: lab.Quiet()} }

// Part A, as the demo runs it: three clients wait in the accept queue, each gets its echo, the
// closing client and the resetting client leave the server side of the kernel table.
func TestDemoLoopAcceptsEchoesAndRemoves(t *testing.T) {
	t.Parallel()
	for _, loop := range loops {
		t.Run(loop.name, func(t *testing.T) {
			t.Parallel()
			res, err := demoLoop(quietDemo(), loop.poll)
			require.NoError(t, err)
			assert.EqualValues(t, 3, res.acceptQueueBefore)
			assert.Equal(t, 3, res.unacceptedNoFD, "handshakes done, no fd before accept")
			assert.Equal(t, map[string]string{"A": "hello from A\n", "B": "hi from B\n", "C": "hi from C\n", "A2": "still here\n"}, res.echoes)
			for _, so := range res.afterFIN {
				assert.NotEqual(t, res.leftBRemote, so.Remote, "B still on the server side: %v", so)
			}
			assert.Len(t, res.afterRST, 2, "listener and A only: %v", res.afterRST)
			for _, so := range res.afterRST {
				assert.NotEqual(t, res.leftCRemote, so.Remote, "C still on the server side: %v", so)
			}
			// After stop: the server's side of A is an orphan in FIN_WAIT2 — no fd, and the
			// kernel reports it as a TIME_WAIT mini-socket's timer; A's side got the FIN.
			assert.Equal(t, sockdiag.FinWait2, res.afterStop.State, res.afterStop.String())
			assert.False(t, res.afterStop.HasFD(), res.afterStop.String())
			assert.Equal(t, sockdiag.TimerTimeWait, res.afterStop.Timer, res.afterStop.String())
			assert.Equal(t, sockdiag.CloseWait, res.clientAAfterStop.State, res.clientAAfterStop.String())
		})
	}
}

// Part B, as the demo runs it: the stalled connection's server holds at most 4096 bytes, and
// every byte comes back once the client reads.
func TestDemoBackpressureBoundsServerBuffer(t *testing.T) {
	t.Parallel()
	for _, loop := range loops {
		t.Run(loop.name, func(t *testing.T) {
			t.Parallel()
			res, err := demoBackpressure(quietDemo(), loop.poll)
			require.NoError(t, err)
			assert.Positive(t, res.stallRecvQ)
			assert.LessOrEqual(t, res.held, int64(res.maxLine))
			assert.GreaterOrEqual(t, res.held, int64(0))
			assert.Equal(t, res.sent, res.echoed)
		})
	}
}

// Part C, as the demo runs it (not parallel: it fills this process's fds up to 1024, which
// must not push a parallel test's fds past FD_SETSIZE).
func TestDemoFDSetSize(t *testing.T) {
	needFDs(t)
	res, err := demoFDSetSize(quietDemo())
	require.NoError(t, err)
	assert.Equal(t, "fits\n", res.selectEcho)
	assert.Equal(t, 0, res.refusedRead, "the client on fd 1024 reads EOF")
	assert.Equal(t, sockdiag.CloseWait, res.refusedState)
	assert.Equal(t, "past 1024\n", res.pollEcho)
}
