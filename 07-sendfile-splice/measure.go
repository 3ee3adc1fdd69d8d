//go:build linux

package main

import (
	"bytes"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"socklab/internal/lab"
)

// This file is the stopwatch, not the lesson: CPU time of one thread (getrusage(2),
// RUSAGE_THREAD), the kernel's per-thread I/O accounting (proc(5), /proc/thread-self/io) and a
// log of the calls a method made. The lesson's system calls are in send.go and recv.go.

// CPU is the CPU time one thread spent, split as getrusage(2) reports it.
type CPU struct {
	User, Sys time.Duration
}

// Total is user + system time.
func (c CPU) Total() time.Duration { return c.User + c.Sys }

func threadCPU() CPU {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_THREAD, &ru); err != nil {
		return CPU{}
	}
	return CPU{User: time.Duration(ru.Utime.Nano()), Sys: time.Duration(ru.Stime.Nano())}
}

// KernelIO is what the kernel's task I/O accounting says one thread did (proc(5),
// /proc/[pid]/task/[tid]/io). These counters are the kernel's, not the program's:
//   - RChar: bytes that read-family calls returned (read, pread64, readv, and — on this
//     kernel — sendfile, which do_sendfile() accounts as a read and a write);
//   - WChar: bytes passed to write-family calls (write, writev, sendfile);
//   - SyscR / SyscW: the number of read-family / write-family calls (sendfile counts in both;
//     splice, send and recv count in neither).
type KernelIO struct {
	RChar, WChar, SyscR, SyscW int64
}

// ioMeter reads /proc/thread-self/io of the thread that opened it, with one pread64 per
// snapshot so that the meter's own cost is known exactly and can be taken away.
type ioMeter struct {
	fd    int
	first int // length of the first snapshot: the rchar its pread64 added
	start KernelIO
	ok    bool
}

func openIOMeter() *ioMeter {
	m := &ioMeter{fd: -1}
	fd, err := unix.Open("/proc/thread-self/io", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return m
	}
	m.fd = fd
	m.start, m.first, m.ok = m.read()
	return m
}

func (m *ioMeter) read() (KernelIO, int, bool) {
	var buf [512]byte
	n, err := unix.Pread(m.fd, buf[:], 0)
	if err != nil || n <= 0 {
		return KernelIO{}, 0, false
	}
	var io KernelIO
	for _, line := range strings.Split(string(buf[:n]), "\n") {
		name, value, _ := strings.Cut(line, ":")
		v, _ := strconv.ParseInt(strings.TrimSpace(value), 10, 64)
		switch name {
		case "rchar":
			io.RChar = v
		case "wchar":
			io.WChar = v
		case "syscr":
			io.SyscR = v
		case "syscw":
			io.SyscW = v
		}
	}
	return io, n, true
}

// stop returns what the thread did since openIOMeter, minus the meter's own first pread64
// (one read call and the bytes it returned; the second snapshot is rendered before its own
// call is counted). ok is false when /proc/thread-self/io cannot be read.
func (m *ioMeter) stop() (KernelIO, bool) {
	if m.fd < 0 {
		return KernelIO{}, false
	}
	defer unix.Close(m.fd)
	end, _, ok := m.read()
	if !ok || !m.ok {
		return KernelIO{}, false
	}
	return KernelIO{
		RChar: end.RChar - m.start.RChar - int64(m.first),
		WChar: end.WChar - m.start.WChar,
		SyscR: end.SyscR - m.start.SyscR - 1,
		SyscW: end.SyscW - m.start.SyscW,
	}, true
}

// onOwnThread runs f on a goroutine locked to a fresh OS thread, pinned to cpu when cpu ≥ 0,
// so that RUSAGE_THREAD and /proc/thread-self/io describe f alone. The goroutine returns
// without unlocking, so the Go runtime ends that thread and its CPU affinity with it.
func onOwnThread(cpu int, f func(pinned bool)) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		pinned := false
		if cpu >= 0 {
			var set unix.CPUSet
			set.Set(cpu)
			pinned = unix.SchedSetaffinity(0, &set) == nil
		}
		f(pinned)
	}()
	<-done
}

// callLog counts the system calls of a transfer by name and keeps the first few and the last
// few strace-style, for the demo to print after the measurement (printing during it would add
// write calls to the thread's accounting).
type callLog struct {
	counts map[string]int // "sendfile" → 3, "sendfile EAGAIN" → 1
	names  []string       // call names in order of first use
	first  []loggedCall
	last   []loggedCall // ring of the most recent calls
	total  int
}

type loggedCall struct {
	text    string
	ret     int
	err     error
	retText string // a result that is not a number, e.g. mmap's address
}

const (
	logFirst = 4
	logLast  = 2
)

func newCallLog() *callLog { return &callLog{counts: map[string]int{}} }

// add records one call. format and args describe it as strace would, without the result.
func (l *callLog) add(name string, ret int, err error, format string, args ...any) {
	l.total++
	if _, seen := l.counts[name]; !seen {
		l.names = append(l.names, name)
	}
	l.counts[name]++
	if errno, ok := err.(unix.Errno); ok {
		l.counts[name+" "+unix.ErrnoName(errno)]++
	}
	c := loggedCall{text: fmt.Sprintf(format, args...), ret: ret, err: err}
	l.keep(c)
}

// addAddr records a call that returns an address (mmap), printed as strace prints it.
func (l *callLog) addAddr(name string, addr uintptr, err error, format string, args ...any) {
	l.add(name, 0, err, format, args...)
	if err == nil {
		c := l.lastAdded()
		c.retText = fmt.Sprintf("%#x", addr)
	}
}

func (l *callLog) lastAdded() *loggedCall {
	if len(l.last) > 0 {
		return &l.last[len(l.last)-1]
	}
	return &l.first[len(l.first)-1]
}

func (l *callLog) keep(c loggedCall) {
	if len(l.first) < logFirst {
		l.first = append(l.first, c)
		return
	}
	if len(l.last) < logLast {
		l.last = append(l.last, c)
	} else {
		copy(l.last, l.last[1:])
		l.last[len(l.last)-1] = c
	}
}

// Count is how many times the named call was made ("sendfile"), or failed with an errno
// ("sendfile EAGAIN").
func (l *callLog) Count(name string) int { return l.counts[name] }

// Total is every call the method made.
func (l *callLog) Total() int { return l.total }

// Summary is "pread64 ×1025, write ×1025".
func (l *callLog) Summary() string {
	var parts []string
	for _, name := range l.names {
		s := fmt.Sprintf("%s ×%d", name, l.counts[name])
		for key, n := range l.counts {
			if e, ok := strings.CutPrefix(key, name+" "); ok {
				s += fmt.Sprintf(" (%d %s)", n, e)
			}
		}
		parts = append(parts, s)
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// print narrates the logged calls strace-style: the first few, a line for those in between,
// the last few.
func (l *callLog) print(n *lab.Narrator) {
	for _, c := range l.first {
		sysLine(n, c)
	}
	if hidden := l.total - len(l.first) - len(l.last); hidden > 0 {
		n.Say("  ... %d more calls like these ...", hidden)
	}
	for _, c := range l.last {
		sysLine(n, c)
	}
}

// sysLine prints one call strace-style; a call too long for 80 columns is wrapped as prose.
func sysLine(n *lab.Narrator, c loggedCall) {
	if c.retText != "" && c.err == nil {
		n.Say("%s = %s", c.text, c.retText)
		return
	}
	if full := c.text + " = " + lab.Ret(c.ret, c.err); len(full)+2 > 80 {
		n.Say("%s", full)
		return
	}
	n.Sys(c.ret, c.err, "%s", c.text)
}

// quoteBytes shows the start of a buffer as strace does: "SOCKLAB7"...
func quoteBytes(b []byte) string {
	const show = 8
	var s bytes.Buffer
	s.WriteByte('"')
	for i, c := range b {
		if i == show {
			s.WriteString(`"...`)
			return s.String()
		}
		if c >= 0x20 && c < 0x7f && c != '"' && c != '\\' {
			s.WriteByte(c)
		} else {
			fmt.Fprintf(&s, `\x%02x`, c)
		}
	}
	s.WriteByte('"')
	return s.String()
}
