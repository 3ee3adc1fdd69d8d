//go:build linux

// Command 07-sendfile-splice sends one file over a loopback TCP connection six ways —
// pread64+write, sendfile(2), splice(2) through a pipe, mmap(2)+write, writev(2) of a header
// and the mapped body, and Go's io.Copy — proves every byte with SHA-256, and shows what
// zero-copy (零拷贝) saves: CPU time, system calls, and file bytes that pass through the
// program's memory. See docs/07-sendfile-splice.md.
//
// The system calls are in send.go (the six senders) and recv.go (read or splice receivers);
// this file is the narrated demo, roles.go the two-terminal roles.
package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"socklab/internal/lab"
)

var program = lab.Program{
	Name:    "07-sendfile-splice",
	Summary: "send a file six ways, prove each byte, measure zero-copy",
	Doc:     "docs/07-sendfile-splice.md",
	Parts: []lab.Part{
		{Name: "sixways", Title: "A. One file, six ways to send it", Run: partSixWays},
		{Name: "bigfile", Title: "B. Offsets past 2 GiB and 4 GiB in a sparse file", Run: partBigFile},
		{Name: "failures", Title: "C. When the peer leaves or the file shrinks", Run: partFailures},
	},
	Roles: []lab.Role{
		{Name: "send", Summary: "send -addr IP:PORT -file PATH -method M: send a file", Run: roleSend},
		{Name: "recv", Summary: "recv -addr IP:PORT [-out PATH] [-method read|splice]: receive files", Run: roleRecv},
	},
}

func main() { program.Main() }

// demoSize is the demo's file: 64 MiB, big enough that per-call costs show, small enough to
// send six times in a second or two.
const demoSize = 64 << 20

var methodStory = map[Method]string{
	ReadWrite: "read + write: pread64(2) copies page-cache bytes into a 64 KiB buffer, " +
		"write(2) copies them into the socket buffer. Two calls and two copies per 64 KiB.",
	Sendfile: "sendfile(2): one call names the file, the socket, an offset and a count; the " +
		"kernel moves page-cache pages to TCP itself. No buffer argument: nothing can reach our memory.",
	Splice: "splice(2) needs a pipe: file → pipe moves page references, pipe → socket hands " +
		"them to TCP. Two calls per pipeful (64 KiB by default; F_SETPIPE_SZ makes it bigger).",
	MmapWrite: "mmap + write: mmap(2) maps the page cache into our address space (no copy), " +
		"write(2) copies from the mapping into the socket buffer: one copy, few calls.",
	Writev: "writev(2): the gather write (聚集写). The 16-byte header in ordinary memory and the " +
		"mapped body go out in one call — no separate write for the header.",
	IOCopy: "Go's io.Copy(*net.TCPConn, *os.File): the runtime sees a file and a TCP socket " +
		"and calls sendfile(2) itself — on its non-blocking socket, so each call sends what fits " +
		"in the socket buffer, and EAGAIN parks the goroutine in the netpoller until there is room.",
}

// partSixWays makes a 64 MiB file and sends it with every method, then compares receivers.
func partSixWays(d *lab.Demo) error {
	dir, err := os.MkdirTemp("", "socklab-07-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "payload.bin")
	d.Step("Make a %d MiB file (it stays in the page cache 页缓存)", demoSize>>20)
	want, err := makeFile(path, demoSize, 7)
	if err != nil {
		return err
	}
	d.Say("%s: %d bytes, sha256 %x…", path, demoSize, want[:8])
	d.Say("Every transfer is a 16-byte header (\"SOCKLAB7\" + length) and the body, over a " +
		"fresh 127.0.0.1 connection. The receiver reads into a buffer and hashes what " +
		"arrives; the calls below are the sender's, strace-style.")

	outs, err := sendEveryWay(Methods, SendOptions{Path: path, Length: -1, Buf: 64 << 10, CPU: -1},
		RecvOptions{Method: RecvRead, Buf: 256 << 10, CPU: -1})
	if err != nil {
		return err
	}
	for i, m := range Methods {
		o := outs[i]
		d.Step("%s", m)
		d.Say("%s", methodStory[m])
		if o.Send != nil {
			o.Send.Calls.print(d.Narrator)
			if m == IOCopy {
				d.Say("  (io.Copy's own calls happen inside the Go runtime; the kernel counted "+
					"%d read-family and %d write-family calls on this thread)", o.Send.IO.SyscR, o.Send.IO.SyscW)
			} else {
				d.Result("%d calls: %s", o.Send.Calls.Total(), o.Send.Calls.Summary())
			}
		}
		if err := errors.Join(o.SendErr, o.RecvErr); err != nil {
			d.Say("FAILED: %v", err)
		}
	}

	d.Step("Time and CPU of the sending and receiving threads (RUSAGE_THREAD)")
	printTimeTable(d, outs)
	d.Say("The kernel splits a thread's CPU time into user and sys by sampling at clock " +
		"ticks, so for runs this short the split is rough; the sum is exact. The receiver " +
		"hashes with SHA-256 here, which is most of its user time.")
	d.Step("Calls and copies: the program's counts beside the kernel's")
	d.Say("calls = the sender's system calls, counted by the program. syscr/syscw = the " +
		"kernel's count of read- and write-family calls on the sending thread " +
		"(/proc/thread-self/io; splice is in neither, sendfile in both). user = file bytes " +
		"handed to the socket from our memory (program's count). rchar = bytes the kernel " +
		"accounted to read-family calls: it includes sendfile's, though none reached us.")
	printCallTable(d, outs, want)

	d.Step("Receiving: read(2) into a buffer, or splice(2) to /dev/null")
	var recvOuts []Outcome
	for _, ro := range []RecvOptions{{Method: RecvRead, Buf: 64 << 10, CPU: -1}, {Method: RecvSplice, CPU: -1}} {
		o, err := transfer(SendOptions{Method: Sendfile, Path: path, Length: -1, CPU: -1}, ro)
		if err != nil {
			return err
		}
		recvOuts = append(recvOuts, o)
	}
	var tb strings.Builder
	fmt.Fprintf(&tb, "%-8s %7s %7s %8s %8s %6s %9s\n", "receive", "seconds", "MB/s", "user ms", "sys ms", "calls", "rchar")
	for i, name := range []string{"read", "splice"} {
		r := recvOuts[i].Recv
		if r == nil {
			fmt.Fprintf(&tb, "%-8s failed: %v\n", name, recvOuts[i].RecvErr)
			continue
		}
		fmt.Fprintf(&tb, "%-8s %7.3f %7.0f %8d %8d %6d %9s\n", name, r.Elapsed.Seconds(), mbps(r.Got, r.Elapsed),
			r.CPU.User.Milliseconds(), r.CPU.Sys.Milliseconds(), r.Calls.Total(), ioText(r.IO.RChar, r.IOOK))
	}
	d.Block(tb.String())
	d.Say("splice to /dev/null never copies the payload into our memory (rchar stays near " +
		"zero); read(2) copies every byte once. On a 2-core VM the times wobble; the CPU and " +
		"call columns are the lesson. The benchmark measures this properly (make bench).")
	return nil
}

func mbps(n int64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / 1e6 / d.Seconds()
}

func ioText(v int64, ok bool) string {
	if !ok {
		return "?"
	}
	return fmt.Sprint(v)
}

func mib(v int64) string {
	if v == 0 {
		return "0"
	}
	return fmt.Sprintf("%.1fMiB", float64(v)/(1<<20))
}

func printTimeTable(d *lab.Demo, outs []Outcome) {
	var tb strings.Builder
	fmt.Fprintf(&tb, "%-9s %7s %7s %6s  %-15s %-15s\n", "method", "bytes", "seconds", "MB/s", "sender usr/sys", "receiver usr/sys")
	for _, o := range outs {
		s, r := o.Send, o.Recv
		if s == nil || r == nil {
			continue
		}
		fmt.Fprintf(&tb, "%-9s %7s %7.3f %6.0f  %4d/%4d ms    %4d/%4d ms\n", s.Method, mib(s.Sent), s.Elapsed.Seconds(), mbps(s.Sent, s.Elapsed),
			s.CPU.User.Milliseconds(), s.CPU.Sys.Milliseconds(), r.CPU.User.Milliseconds(), r.CPU.Sys.Milliseconds())
	}
	d.Block(tb.String())
}

func printCallTable(d *lab.Demo, outs []Outcome, want []byte) {
	var tb strings.Builder
	fmt.Fprintf(&tb, "%-9s %6s %6s %6s %9s %9s  %s\n", "method", "calls", "syscr", "syscw", "user", "rchar", "sha256")
	for _, o := range outs {
		s := o.Send
		if s == nil {
			continue
		}
		calls := fmt.Sprint(s.Calls.Total())
		if s.Method == IOCopy {
			calls = "(Go)"
		}
		match := "MISMATCH"
		if o.Match(want) {
			match = "match"
		}
		fmt.Fprintf(&tb, "%-9s %6s %6s %6s %9s %9s  %s\n", s.Method, calls, ioText(s.IO.SyscR, s.IOOK), ioText(s.IO.SyscW, s.IOOK),
			mib(s.UserBytes), mib(s.IO.RChar), match)
	}
	d.Block(tb.String())
}

// partBigFile sends windows of a 4 GiB sparse file that cross 2 GiB and 4 GiB.
func partBigFile(d *lab.Demo) error {
	dir, err := os.MkdirTemp("", "socklab-07-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "sparse.bin")
	d.Step("A 4 GiB sparse file (稀疏文件): ftruncate(2), two pwrite64(2) islands")
	if err := makeSparseFile(path); err != nil {
		return err
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return err
	}
	d.Sys(0, nil, "ftruncate(fd, %d)", int64(sparseSize))
	d.Sys(isleLen, nil, "pwrite64(fd, buf, %d, %d)", isleLen, int64(sparseIsle1))
	d.Sys(isleLen, nil, "pwrite64(fd, buf, %d, %d)", isleLen, int64(sparseIsle2))
	d.Sys(0, nil, "stat(%q, {st_size=%d, st_blocks=%d})", filepath.Base(path), st.Size, st.Blocks)
	d.Say("st_size says 4 GiB; st_blocks × 512 = %s is what the disk holds. Offsets 2^31 and "+
		"2^32 are where 32-bit offsets overflow: sendfile, splice and pread64 take a 64-bit "+
		"loff_t (in 32-bit C that needs _FILE_OFFSET_BITS=64 or sendfile64).", mib(st.Blocks*512))

	for _, w := range sparseWindows {
		d.Step("Send bytes %d..%d (crossing %s) every way", w[0], w[0]+w[1], boundaryName(w[0]))
		want, err := hashFile(path, w[0], w[1])
		if err != nil {
			return err
		}
		outs, err := sendEveryWay(Methods, SendOptions{Path: path, Offset: w[0], Length: w[1], Buf: 64 << 10, CPU: -1},
			RecvOptions{Method: RecvRead, Buf: 256 << 10, CPU: -1})
		if err != nil {
			return err
		}
		if s := outs[1].Send; s != nil { // sendfile: show the offsets it was given
			s.Calls.print(d.Narrator)
		}
		for _, o := range outs {
			status := "sha256 match"
			if !o.Match(want) {
				status = fmt.Sprintf("FAILED: %v", errors.Join(o.SendErr, o.RecvErr))
			}
			d.Result("%-9s %d bytes from offset %d: %s", o.Send.Method, o.Send.Sent, w[0], status)
		}
	}
	return nil
}

func boundaryName(off int64) string {
	if off < 3<<30 {
		return "2 GiB"
	}
	return "4 GiB"
}

// partFailures shows the two ways a send ends early, and what each side reports.
func partFailures(d *lab.Demo) error {
	dir, err := os.MkdirTemp("", "socklab-07-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	d.Step("The receiver reads 64 KiB of an 8 MiB file, then close(2)s")
	d.Say("Closing with unread data makes the receiver's kernel send RST. The sender's next " +
		"call fails with ECONNRESET or EPIPE. The kernel also raises SIGPIPE — which kills a C " +
		"program unless it ignores the signal (sendfile and splice have no MSG_NOSIGNAL flag). " +
		"The Go runtime ignores SIGPIPE for sockets, so the error comes back as a value.")
	for _, m := range []Method{ReadWrite, Sendfile, Splice} {
		rep, sendErr, rerr := peerClosesEarly(dir, m)
		if rerr != nil {
			return rerr
		}
		if rep != nil {
			rep.Calls.printLast(d.Narrator)
		}
		d.Say("%s: %v", m, sendErr)
	}

	d.Step("The file is truncated to 4 MiB while 16 MiB are being sent")
	d.Say("The receiver stops after 1 MiB; truncate(2) cuts the file; the receiver reads on. " +
		"pread64, sendfile and splice simply return 0 early (end of file); a write(2) from an " +
		"mmap of the vanished pages fails with EFAULT — in user space the same access is SIGBUS.")
	for _, m := range []Method{ReadWrite, Sendfile, MmapWrite} {
		res, err := truncateDuringSend(dir, m)
		if err != nil {
			return err
		}
		d.Say("%s: %v", m, res.SendErr)
		d.Say("receiver: got %d of %d announced bytes, equal to the file's first %d: %v",
			res.Got, res.Want, res.Got, res.PrefixMatches)
	}

	d.Step("A file that does not exist")
	_, err = Send(-1, SendOptions{Method: Sendfile, Path: filepath.Join(dir, "missing.bin"), Length: -1, CPU: -1})
	sysLine(d.Narrator, loggedCall{text: fmt.Sprintf("openat(AT_FDCWD, %q, O_RDONLY)", "missing.bin"), ret: -1, err: unwrapErrno(err)})
	d.Say("The send role turns this into one line and exit status 1: %s", lab.OneLine(err))
	return nil
}

func unwrapErrno(err error) error {
	var errno unix.Errno
	if errors.As(err, &errno) {
		return errno
	}
	return err
}

// printLast narrates only the last calls: where a failed send ended.
func (l *callLog) printLast(n *lab.Narrator) {
	if hidden := l.total - len(l.last); hidden > 0 && len(l.last) > 0 {
		n.Say("  ... %d calls went well, then:", hidden)
	}
	for _, c := range l.last {
		sysLine(n, c)
	}
	if len(l.last) == 0 {
		l.print(n)
	}
}
