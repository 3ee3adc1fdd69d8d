//go:build linux

package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"socklab/internal/lab"
	"socklab/internal/labtest"
	"socklab/internal/netlab"
)

func TestMain(m *testing.M) { labtest.Main(m, &program) }

var receivers = []RecvOptions{
	{Method: RecvRead, Buf: 64 << 10, CPU: -1},
	{Method: RecvSplice, CPU: -1}, // Out is set per test: splice into a file, then hash it
}

// Every method delivers byte-identical content for an empty, a 1-byte, an odd-sized and a
// few-MiB file, whether the receiver reads into a buffer or splices into a file.
func TestEveryMethodDeliversIdenticalBytes(t *testing.T) {
	t.Parallel()
	for _, size := range []int64{0, 1, 100_003, 3<<20 + 7} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			path := filepath.Join(dir, "f.bin")
			want, err := makeFile(path, size, uint64(size))
			require.NoError(t, err)
			for _, ro := range receivers {
				if ro.Method == RecvSplice {
					ro.Out = filepath.Join(dir, "received.bin")
				}
				outs, err := sendEveryWay(Methods, SendOptions{Path: path, Length: -1, Buf: 4096 + 3, CPU: -1}, ro)
				require.NoError(t, err)
				for i, o := range outs {
					require.NoError(t, o.SendErr, "%s → %s", Methods[i], ro.Method)
					require.NoError(t, o.RecvErr, "%s → %s", Methods[i], ro.Method)
					assert.Equal(t, size, o.Recv.Got, "%s → %s", Methods[i], ro.Method)
					assert.Equal(t, size, o.Recv.Want, "header announces the size")
					assert.Equal(t, want, o.Recv.Sum, "sha256 of %s → %s", Methods[i], ro.Method)
				}
			}
		})
	}
}

// Windows of a 4 GiB sparse file that start in a hole, cross 2^31 (or 2^32) inside data, and
// end in a hole arrive intact with every method; the file takes almost no disk.
func TestOffsetsPast2GiBInSparseFile(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "sparse.bin")
	require.NoError(t, makeSparseFile(path))
	var st unix.Stat_t
	require.NoError(t, unix.Stat(path, &st))
	assert.Equal(t, int64(sparseSize), st.Size)
	assert.Less(t, st.Blocks*512, int64(64<<20), "sparse: the holes take no disk")
	for _, w := range sparseWindows {
		want, err := hashFile(path, w[0], w[1])
		require.NoError(t, err)
		outs, err := sendEveryWay(Methods, SendOptions{Path: path, Offset: w[0], Length: w[1], Buf: 64 << 10, CPU: -1},
			RecvOptions{Method: RecvRead, Buf: 64 << 10, CPU: -1})
		require.NoError(t, err)
		for i, o := range outs {
			require.NoError(t, errors.Join(o.SendErr, o.RecvErr), "%s at %d", Methods[i], w[0])
			assert.Equal(t, w[1], o.Recv.Got, "%s at %d", Methods[i], w[0])
			assert.Equal(t, want, o.Recv.Sum, "%s at %d", Methods[i], w[0])
		}
	}
}

// sendOnce sends size bytes of a fresh file with o and returns the outcome, requiring success.
func sendOnce(t *testing.T, size int64, o SendOptions, ro RecvOptions) Outcome {
	t.Helper()
	path := filepath.Join(t.TempDir(), "f.bin")
	want, err := makeFile(path, size, 11)
	require.NoError(t, err)
	o.Path, o.Length, o.CPU = path, -1, -1
	out, err := transfer(o, ro)
	require.NoError(t, err)
	require.NoError(t, errors.Join(out.SendErr, out.RecvErr))
	require.Equal(t, want, out.Recv.Sum)
	return out
}

var readRecv = RecvOptions{Method: RecvRead, Buf: 256 << 10, CPU: -1}

// Sending 64 MiB: read+write with a 64 KiB buffer needs over two thousand calls, sendfile a
// handful — and the kernel's own call counters (syscr/syscw) agree with the program's counts.
func TestSendfileTakesFarFewerCallsThanReadWrite(t *testing.T) {
	t.Parallel()
	const size = 64 << 20
	rw := sendOnce(t, size, SendOptions{Method: ReadWrite, Buf: 64 << 10}, readRecv).Send
	sf := sendOnce(t, size, SendOptions{Method: Sendfile}, readRecv).Send

	assert.GreaterOrEqual(t, rw.Calls.Total(), 2*size/(64<<10), "one pread64 and one write per 64 KiB")
	assert.LessOrEqual(t, sf.Calls.Total(), 64, "sendfile moves the whole file in a few calls")
	assert.GreaterOrEqual(t, rw.Calls.Total(), 30*sf.Calls.Total())

	require.True(t, rw.IOOK && sf.IOOK, "/proc/thread-self/io readable")
	// The kernel's witness: every read-family call it counted on the sending thread.
	assert.Equal(t, int64(rw.Calls.Count("pread64")), rw.IO.SyscR, "kernel syscr = program's pread64 count")
	assert.Equal(t, int64(rw.Calls.Count("write")), rw.IO.SyscW, "kernel syscw = program's write count")
	assert.Equal(t, int64(sf.Calls.Count("sendfile")), sf.IO.SyscR, "kernel syscr = program's sendfile count")
	assert.Equal(t, int64(sf.Calls.Count("sendfile")+1), sf.IO.SyscW, "sendfile counts as a write too, plus the header")
}

// The sender chooses its congestion control per socket (setsockopt TCP_CONGESTION, tcp(7)),
// and the kernel reports back the one the socket used: the namespace's default without a
// choice, and the chosen one (any other algorithm unprivileged processes may pick, from
// tcp_allowed_congestion_control) when asked. A name the kernel does not have is refused with
// ENOENT, which send reports in one line with a hint.
func TestSenderChoosesItsCongestionControl(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile("/proc/sys/net/ipv4/tcp_congestion_control")
	require.NoError(t, err)
	def := strings.TrimSpace(string(raw))
	plain := sendOnce(t, 1<<20, SendOptions{Method: Sendfile}, readRecv).Send
	assert.Equal(t, def, plain.Congestion, "no choice: the namespace's default")
	assert.Zero(t, plain.Calls.Count("setsockopt"))

	allowed, err := os.ReadFile("/proc/sys/net/ipv4/tcp_allowed_congestion_control")
	require.NoError(t, err)
	other := ""
	for _, name := range strings.Fields(string(allowed)) {
		if name != def {
			other = name
			break
		}
	}
	if other == "" {
		t.Skipf("tcp_allowed_congestion_control %q offers nothing but the default", allowed)
	}
	chosen := sendOnce(t, 1<<20, SendOptions{Method: Sendfile, Congestion: other}, readRecv).Send
	assert.Equal(t, other, chosen.Congestion, "getsockopt(TCP_CONGESTION) after the send")
	assert.Equal(t, 1, chosen.Calls.Count("setsockopt"))

	if os.Geteuid() == 0 && !netlab.Current().Private {
		// Root in the host's namespaces: the kernel would first try modprobe tcp_<name>.
		t.Log("unknown-name check skipped: as root outside a private namespace it would run modprobe on the host")
		return
	}
	path := filepath.Join(t.TempDir(), "f.bin")
	require.NoError(t, os.WriteFile(path, []byte("x"), 0o644))
	_, addr := labtest.Listen(t, labtest.Loopback4, 4)
	_, stderr, code := labtest.RunProgram(t, nil, "send", "-addr", addr.String(), "-file", path, "-cc", "no-such-algorithm")
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, "not in this kernel (hint:")
	assert.Equal(t, 1, strings.Count(strings.TrimSpace(stderr), "\n")+1, "one line: %q", stderr)
}

// The zero-copy methods never copy file bytes into the program's memory. The kernel's task
// I/O accounting shows it: splice leaves rchar at zero; sendfile and io.Copy raise rchar only
// through sendfile itself (syscr equals the sendfile calls, with no read(2) beside them);
// read+write's rchar is the whole file.
func TestZeroCopyMethodsNeverReadFileIntoUserMemory(t *testing.T) {
	t.Parallel()
	const size = 16 << 20
	got := map[Method]*SendReport{}
	for _, m := range Methods {
		got[m] = sendOnce(t, size, SendOptions{Method: m, Buf: 64 << 10}, readRecv).Send
		require.True(t, got[m].IOOK)
	}
	for _, m := range []Method{Sendfile, Splice, IOCopy} {
		assert.Zero(t, got[m].UserBytes, "%s: program handed no file bytes from its memory", m)
	}
	sp := got[Splice].IO
	assert.Zero(t, sp.RChar, "splice: no byte read into user memory")
	assert.Zero(t, sp.SyscR, "splice: no read-family call at all")

	sf := got[Sendfile]
	assert.Equal(t, int64(size), sf.IO.RChar, "sendfile: rchar is exactly what sendfile moved")
	assert.Equal(t, int64(sf.Calls.Count("sendfile")), sf.IO.SyscR, "sendfile: no read(2) besides sendfile")

	ic := got[IOCopy].IO
	assert.Equal(t, int64(size), ic.RChar, "io.Copy: rchar is what its sendfile calls moved")
	assert.Equal(t, ic.SyscW-1, ic.SyscR, "io.Copy: every read-family call was also a write (sendfile), header aside")
	assert.Equal(t, int64(size+headerLen), ic.WChar)

	for _, m := range []Method{MmapWrite, Writev} {
		assert.Zero(t, got[m].IO.RChar, "%s: the mapping is not read(2)", m)
		assert.Equal(t, int64(size+headerLen), got[m].IO.WChar, "%s: write copies every byte from our memory", m)
		assert.Equal(t, int64(size), got[m].UserBytes)
	}
	assert.Equal(t, int64(size), got[ReadWrite].IO.RChar, "read+write: every byte read into our buffer")
	assert.Equal(t, int64(size), got[ReadWrite].UserBytes)
}

// Receiving with splice socket → pipe → /dev/null leaves the payload out of user memory:
// rchar is only the 16-byte header (read with read(2)); read(2) receivers copy every byte.
func TestReceiveSpliceNeverReadsIntoUserMemory(t *testing.T) {
	t.Parallel()
	const size = 16 << 20
	rd := sendOnce(t, size, SendOptions{Method: Sendfile}, readRecv).Recv
	path := filepath.Join(t.TempDir(), "g.bin")
	_, err := makeFile(path, size, 2)
	require.NoError(t, err)
	out, err := transfer(SendOptions{Method: Sendfile, Path: path, Length: -1, CPU: -1}, RecvOptions{Method: RecvSplice, CPU: -1})
	require.NoError(t, err)
	require.NoError(t, errors.Join(out.SendErr, out.RecvErr))
	sp := out.Recv
	assert.Equal(t, int64(size), sp.Got)
	assert.Nil(t, sp.Sum, "spliced to /dev/null: never seen, never hashed")
	require.True(t, rd.IOOK && sp.IOOK)
	assert.Equal(t, int64(headerLen), sp.IO.RChar, "splice receiver: only the header went through read(2)")
	assert.Equal(t, int64(size+headerLen), rd.IO.RChar, "read receiver: every byte")
}

// F_SETPIPE_SZ grows the pipe (the kernel reports the size it granted with F_GETPIPE_SZ), and
// a 1 MiB pipe needs a sixteenth of the splice calls of the default 64 KiB one.
func TestSetPipeSizeCutsSpliceCalls(t *testing.T) {
	t.Parallel()
	const size = 16 << 20
	small := sendOnce(t, size, SendOptions{Method: Splice}, readRecv).Send
	big := sendOnce(t, size, SendOptions{Method: Splice, Pipe: 1 << 20}, readRecv).Send
	assert.Equal(t, 64<<10, small.PipeSize, "default pipe: 16 pages")
	assert.Equal(t, 1<<20, big.PipeSize, "F_GETPIPE_SZ reports the granted size")
	assert.Equal(t, size/(64<<10), small.Calls.Count("splice")/2, "file→pipe calls, 64 KiB each")
	assert.GreaterOrEqual(t, small.Calls.Count("splice"), 8*big.Calls.Count("splice"))
}

// On an O_NONBLOCK socket sendfile sends what fits, then fails with EAGAIN: the loop waits in
// ppoll and resumes at the offset the kernel advanced. The receiver starts reading only once
// the kernel shows the sending thread blocked in ppoll, so EAGAIN is certain.
func TestNonBlockingSendfileLoopsOnEAGAIN(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "f.bin")
	want, err := makeFile(path, 8<<20, 9)
	require.NoError(t, err)
	tids := make(chan int, 1)
	so := SendOptions{Method: Sendfile, Path: path, Length: -1, NonBlock: true, CPU: -1,
		started: func(tid int) { tids <- tid }}
	var waited bool
	out, err := transferWith(64<<10, 64<<10, so, readRecv, func() {
		tid := <-tids
		waited = labtest.Poll(10*time.Second, func() (bool, string) {
			nr := currentSyscall(tid)
			return nr == unix.SYS_PPOLL || nr == unix.SYS_POLL, fmt.Sprint(nr)
		})
	})
	require.NoError(t, err)
	require.True(t, waited, "the kernel showed the sender blocked in ppoll")
	require.NoError(t, errors.Join(out.SendErr, out.RecvErr))
	assert.Equal(t, want, out.Recv.Sum)
	s := out.Send
	assert.GreaterOrEqual(t, s.Calls.Count("sendfile EAGAIN"), 1)
	assert.GreaterOrEqual(t, s.Calls.Count("ppoll"), 1)
	assert.Greater(t, s.Calls.Count("sendfile")-s.Calls.Count("sendfile EAGAIN"), 1, "partial sends")
	require.True(t, s.IOOK)
	assert.Equal(t, int64(s.Calls.Count("sendfile")), s.IO.SyscR, "the kernel counted every sendfile, EAGAIN ones too")
}

// currentSyscall is the number of the system call a thread of this process is blocked in, as
// /proc/self/task/TID/syscall reports it (-1 when running or unreadable).
func currentSyscall(tid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/syscall", tid))
	if err != nil {
		return -1
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return -1
	}
	n, err := strconv.Atoi(f[0])
	if err != nil {
		return -1
	}
	return n
}

// A file truncated in the middle of a send: pread64, sendfile, splice and io.Copy see end of
// file early, write/writev from the mapping fail with EFAULT; every method reports the file
// shrank, and the receiver gets a short but correct prefix.
func TestTruncatedFileDuringSendIsReported(t *testing.T) {
	t.Parallel()
	for _, m := range Methods {
		t.Run(string(m), func(t *testing.T) {
			t.Parallel()
			res, err := truncateDuringSend(t.TempDir(), m)
			require.NoError(t, err)
			require.Error(t, res.SendErr)
			assert.ErrorIs(t, res.SendErr, errFileShrank)
			assert.Contains(t, res.SendErr.Error(), "shrank")
			assert.GreaterOrEqual(t, res.Got, int64(truncPause))
			assert.LessOrEqual(t, res.Got, int64(truncTo))
			assert.Equal(t, int64(truncSize), res.Want)
			assert.True(t, res.PrefixMatches, "what arrived is the file's original beginning")
			if m == MmapWrite || m == Writev {
				assert.ErrorIs(t, res.SendErr, unix.EFAULT)
			} else {
				assert.Equal(t, int64(truncTo), res.Got, "%s stops exactly at the new end of file", m)
			}
		})
	}
}

// A peer that closes mid-transfer makes every method fail with EPIPE or ECONNRESET, reported
// as an error value (in process) — and the send role exits 1 with one line, not killed by
// SIGPIPE (child process).
func TestPeerClosingMidTransferIsReportedNotFatal(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for _, m := range Methods {
		_, sendErr, rerr := peerClosesEarly(dir, m)
		require.NoError(t, rerr)
		require.Error(t, sendErr, m)
		assert.True(t, errors.Is(sendErr, unix.EPIPE) || errors.Is(sendErr, unix.ECONNRESET), "%s: %v", m, sendErr)
	}

	path := filepath.Join(dir, "big.bin")
	_, err := makeFile(path, 8<<20, 1)
	require.NoError(t, err)
	for _, m := range Methods {
		lfd, addr := labtest.Listen(t, labtest.Loopback4, 1)
		accepted := make(chan error, 1)
		go func() { accepted <- readAndClose(lfd, headerLen+64<<10) }()
		_, stderr, code := labtest.RunProgram(t, nil, "send", "-addr", addr.String(), "-file", path, "-method", string(m))
		require.NoError(t, <-accepted)
		assert.Equal(t, 1, code, "%s: exit status 1, not death by SIGPIPE (-1): %s", m, stderr)
		assert.Regexp(t, `broken pipe|connection reset by peer`, stderr, m)
		assert.Equal(t, 1, strings.Count(strings.TrimSpace(stderr), "\n")+1, "one line: %q", stderr)
	}
}

// readAndClose accepts one connection, reads n bytes and closes it with data unread (→ RST).
func readAndClose(lfd, n int) error {
	fds := []unix.PollFd{{Fd: int32(lfd), Events: unix.POLLIN}}
	for {
		k, err := unix.Poll(fds, 10_000)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if k == 0 {
			return errors.New("no connection within 10 s")
		}
		break
	}
	cfd, _, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC)
	if err != nil {
		return err
	}
	defer unix.Close(cfd)
	_, err = readUntil(cfd, int64(n))
	return err
}

// A missing file, a directory, and (unprivileged) an unreadable file: one line, exit 1.
func TestMissingOrUnreadableFileExits1(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	secret := filepath.Join(dir, "secret.bin")
	require.NoError(t, os.WriteFile(secret, []byte("x"), 0o000))
	cases := map[string]string{
		filepath.Join(dir, "missing.bin"): "no such file or directory",
		dir:                               "not a regular file",
	}
	if os.Geteuid() != 0 { // root reads files whatever their mode says
		cases[secret] = "permission denied"
	}
	for path, want := range cases {
		lfd, addr := labtest.Listen(t, labtest.Loopback4, 4) // connect completes without accept
		_, stderr, code := labtest.RunProgram(t, nil, "send", "-addr", addr.String(), "-file", path)
		assert.Equal(t, 1, code, path)
		assert.Contains(t, stderr, want, path)
		assert.Equal(t, 1, strings.Count(strings.TrimSpace(stderr), "\n")+1, "one line: %q", stderr)
		// The file is checked before connect: the kernel queued no connection on the listener.
		pfd := []unix.PollFd{{Fd: int32(lfd), Events: unix.POLLIN}}
		ready, err := unix.Poll(pfd, 0)
		require.NoError(t, err)
		assert.Zero(t, ready, "%s: the sender connected before finding the file unusable", path)
	}
}

// A window past the end of the file (-offset, -length) is refused before connecting: exit 1,
// one line, and the kernel queued no connection on the receiver's listener.
func TestWindowOutsideFileExits1BeforeConnecting(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "small.bin")
	require.NoError(t, os.WriteFile(path, make([]byte, 100), 0o644))
	for _, args := range [][]string{{"-length", "101"}, {"-offset", "101"}, {"-offset", "50", "-length", "51"}} {
		lfd, addr := labtest.Listen(t, labtest.Loopback4, 4)
		_, stderr, code := labtest.RunProgram(t, nil, append([]string{"send", "-addr", addr.String(), "-file", path}, args...)...)
		assert.Equal(t, 1, code, "%v", args)
		assert.Contains(t, stderr, "is outside", "%v", args)
		assert.Equal(t, 1, strings.Count(strings.TrimSpace(stderr), "\n")+1, "one line: %q", stderr)
		pfd := []unix.PollFd{{Fd: int32(lfd), Events: unix.POLLIN}}
		ready, err := unix.Poll(pfd, 0)
		require.NoError(t, err)
		assert.Zero(t, ready, "%v: the sender connected first", args)
	}
}

// An -out that cannot be created fails recv at once (exit 1, one line), before it listens.
func TestRecvUnwritableOutExits1(t *testing.T) {
	t.Parallel()
	out := filepath.Join(t.TempDir(), "no-such-dir", "got.bin")
	cmd := labtest.ProgramCommand("recv", "-addr", "127.0.0.1:0", "-out", out)
	var errb strings.Builder
	cmd.Stderr = &errb
	require.NoError(t, cmd.Start())
	// Bounded: a recv that listened instead of failing would wait for a sender for ever.
	kill := time.AfterFunc(10*time.Second, func() { cmd.Process.Kill() })
	defer kill.Stop()
	err := cmd.Wait()
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee, "recv must fail")
	stderr := errb.String()
	assert.Equal(t, 1, ee.ExitCode(), "killed after 10 s means it listened: %q", stderr)
	assert.Contains(t, stderr, "no such file or directory")
	assert.Equal(t, 1, strings.Count(strings.TrimSpace(stderr), "\n")+1, "one line: %q", stderr)
}

// Usage errors exit 2 with one line and the usage.
func TestUsageErrorsExit2(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"send", "-file", "x", "-method", "carrier-pigeon"},
		{"send"},
		{"send", "-file", "x", "-buf", "0"},
		{"send", "-file", "x", "-addr", "localhost:1"},
		{"send", "-file", "x", "-offset", "-5"},
		{"send", "-file", "x", "-addr", "127.0.0.1:0"},
		{"recv", "-method", "mmap"},
		{"recv", "-n", "0"},
		{"send", "-bogus"},
	} {
		_, stderr, code := labtest.RunProgram(t, nil, args...)
		assert.Equal(t, 2, code, "%v", args)
		assert.Contains(t, stderr, "usage:", "%v", args)
	}
}

// The two roles talk to each other as two terminals would: recv prints the SHA-256 of what
// arrived, which is the file's.
func TestSendAndRecvRolesAgree(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "f.bin")
	want, err := makeFile(path, 1<<20+5, 4)
	require.NoError(t, err)
	for _, recvMethod := range []string{RecvRead, RecvSplice} {
		out := filepath.Join(t.TempDir(), "out.bin")
		port := freePort(t)
		recv := labtest.ProgramCommand("recv", "-addr", "127.0.0.1:"+port, "-out", out, "-method", recvMethod)
		recvOut := &lockedBuffer{}
		recv.Stdout, recv.Stderr = recvOut, recvOut
		require.NoError(t, recv.Start())
		labtest.WaitFor(t, 10*time.Second, "recv to listen", func() (bool, string) {
			return strings.Contains(recvOut.String(), "listening"), recvOut.String()
		})
		stdout, stderr, code := labtest.RunProgram(t, nil, "send", "-addr", "127.0.0.1:"+port, "-file", path, "-method", "splice", "-pipe", "262144")
		require.Equal(t, 0, code, stderr)
		assert.Contains(t, stdout, "pipe size (F_GETPIPE_SZ): 262144")
		require.NoError(t, waitCmd(recv, 10*time.Second))
		assert.Contains(t, recvOut.String(), fmt.Sprintf("sha256 %x", want), recvMethod)
		got, err := hashFile(out, 0, -1)
		require.NoError(t, err)
		assert.Equal(t, want, got)
	}
}

// lockedBuffer collects a child's output while the test reads it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// freePort asks the kernel for a free port: bind to port 0, read it back, close. (Raw calls,
// not labtest.Listen + CloseNow: CloseNow twice on the same fd number in one test makes
// labtest's cleanup close that number again later, whatever it has become.)
func freePort(t *testing.T) string {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	defer unix.Close(fd)
	require.NoError(t, unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}))
	sa, err := unix.Getsockname(fd)
	require.NoError(t, err)
	return strconv.Itoa(sa.(*unix.SockaddrInet4).Port)
}

func waitCmd(cmd *exec.Cmd, timeout time.Duration) error {
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(timeout):
		cmd.Process.Kill()
		<-done
		return errors.New("timed out")
	}
}

// The narrated demo runs every part: every method matches, nothing fails, 80 columns.
func TestDemoRunsEveryPart(t *testing.T) {
	t.Parallel()
	stdout, stderr, code := labtest.RunProgram(t, nil, "-host")
	require.Equal(t, 0, code, stderr)
	assert.NotContains(t, stdout, "MISMATCH")
	assert.NotContains(t, stdout, "FAILED")
	assert.Equal(t, 6+12, strings.Count(stdout, "match"), "six methods in part A, twice six in part B")
	for _, line := range strings.Split(stdout, "\n") {
		assert.LessOrEqual(t, lab.Columns(line), 80, "%q", line)
	}
}

// strace, where installed, sees the same system calls the program counted: ptrace is a
// second, independent witness beside /proc/thread-self/io.
func TestStraceSeesTheCallsTheProgramCounted(t *testing.T) {
	t.Parallel()
	strace, err := exec.LookPath("strace")
	if err != nil {
		t.Skip("strace is not installed")
	}
	path := filepath.Join(t.TempDir(), "f.bin")
	_, err = makeFile(path, 8<<20, 6)
	require.NoError(t, err)
	for _, c := range []struct {
		method Method
		call   string
	}{{ReadWrite, "pread64"}, {Sendfile, "sendfile"}, {Splice, "splice"}, {IOCopy, "sendfile"}} {
		lfd, addr := labtest.Listen(t, labtest.Loopback4, 1)
		received := make(chan error, 1)
		go func() { received <- acceptAndReceive(lfd) }()
		trace := filepath.Join(t.TempDir(), "trace")
		self := labtest.ProgramCommand()
		exe, err := os.Executable() // not /proc/self/exe: under strace that is strace
		require.NoError(t, err)
		cmd := exec.Command(strace, append([]string{"-f", "-qq", "-o", trace, "-e", "trace=pread64," + c.call, "--", exe},
			"send", "-addr", addr.String(), "-file", path, "-method", string(c.method))...)
		cmd.Env = self.Env
		out, err := cmd.CombinedOutput()
		require.NoError(t, <-received)
		if err != nil && strings.Contains(string(out), "ptrace") {
			t.Skipf("strace cannot trace here: %s", out)
		}
		require.NoError(t, err, "%s", out)
		b, err := os.ReadFile(trace)
		require.NoError(t, err)
		traced := sendingThreadCalls(t, string(b), c.call)
		if c.method == IOCopy {
			m := regexp.MustCompile(`kernel: syscr (\d+)`).FindStringSubmatch(string(out))
			require.NotNil(t, m, "%s", out)
			assert.Equal(t, m[1], strconv.Itoa(traced), "io.Copy: strace's sendfile count = the kernel's syscr")
			continue
		}
		m := regexp.MustCompile(c.call + ` ×(\d+)`).FindStringSubmatch(string(out))
		require.NotNil(t, m, "%s", out)
		assert.Equal(t, m[1], strconv.Itoa(traced), "%s: strace and the program count the same %s calls", c.method, c.call)
	}
}

// sendingThreadCalls counts the calls named call that strace saw on the sending thread between
// the meter's two reads of /proc/thread-self/io — the window the program's counts cover.
func sendingThreadCalls(t *testing.T, trace, call string) int {
	t.Helper()
	meter := regexp.MustCompile(`(?m)^(\d+)\s+pread64\(\d+, "rchar:`).FindStringSubmatch(trace)
	require.NotNil(t, meter, "the meter's pread64 is in the trace:\n%s", trace)
	n, inside := 0, false
	for _, line := range strings.Split(trace, "\n") {
		switch {
		case !strings.HasPrefix(line, meter[1]+" "):
		case strings.Contains(line, `"rchar:`):
			inside = !inside
		case inside && strings.Contains(line, " "+call+"(") && !strings.Contains(line, "ERESTART"):
			n++
		}
	}
	return n
}

func acceptAndReceive(lfd int) error {
	fds := []unix.PollFd{{Fd: int32(lfd), Events: unix.POLLIN}}
	for {
		k, err := unix.Poll(fds, 20_000)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if k == 0 {
			return errors.New("no connection within 20 s")
		}
		break
	}
	cfd, _, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC)
	if err != nil {
		return err
	}
	defer unix.Close(cfd)
	_, err = Receive(cfd, RecvOptions{Method: RecvRead, Buf: 64 << 10, CPU: -1})
	return err
}

// With EPIPE the kernel also sends SIGPIPE, which would kill a C program that did not ignore
// it; strace sees the signal arrive and the send role still exit 1 with its error.
func TestSIGPIPEArrivesAndTheSenderSurvives(t *testing.T) {
	t.Parallel()
	strace, err := exec.LookPath("strace")
	if err != nil {
		t.Skip("strace is not installed")
	}
	path := filepath.Join(t.TempDir(), "big.bin")
	_, err = makeFile(path, 16<<20, 8)
	require.NoError(t, err)
	exe, err := os.Executable()
	require.NoError(t, err)
	lfd, addr := labtest.Listen(t, labtest.Loopback4, 1)
	closed := make(chan error, 1)
	go func() { closed <- readAndClose(lfd, headerLen+64<<10) }()
	cmd := exec.Command(strace, "-f", "-qq", "-e", "trace=sendfile", "-e", "signal=SIGPIPE", "--",
		exe, "send", "-addr", addr.String(), "-file", path, "-method", "sendfile")
	cmd.Env = labtest.ProgramCommand().Env
	out, err := cmd.CombinedOutput()
	require.NoError(t, <-closed)
	if strings.Contains(string(out), "ptrace") {
		t.Skipf("strace cannot trace here: %s", out)
	}
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee, "%s", out)
	assert.Equal(t, 1, ee.ExitCode(), "%s", out)
	s := string(out)
	if !strings.Contains(s, "EPIPE") {
		t.Skipf("this run failed with ECONNRESET, which sends no SIGPIPE: %s", s)
	}
	assert.Contains(t, s, "--- SIGPIPE", "the kernel sent SIGPIPE with EPIPE")
	assert.Contains(t, s, "broken pipe")
}
