//go:build linux

// Package lab is the narration every chapter shares: numbered steps, strace-style lines for
// each system call, the kernel's socket table after a step, the shared flags (-host, -v) and
// the program conventions (parts, roles, exit codes, one-line errors with hints).
//
// It deliberately makes no system calls of a lesson itself: chapters call golang.org/x/sys/unix
// in their main.go, in order, and hand the result to Sys for printing.
package lab

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"socklab/internal/sockdiag"
)

// Width is the column at which narration wraps, for an 80-column terminal.
const Width = 78

// Narrator prints a lesson. It is safe for concurrent use (a server goroutine and a client may
// narrate at once); each line is written whole.
type Narrator struct {
	mu      sync.Mutex
	w       io.Writer
	color   bool
	verbose bool
	part    string
	step    int
}

// NewNarrator writes to w. Colour is used only when w is a terminal and NO_COLOR is unset,
// so piped output and files stay plain text.
func NewNarrator(w io.Writer, verbose bool) *Narrator {
	return &Narrator{w: w, color: isTerminal(w) && os.Getenv("NO_COLOR") == "", verbose: verbose}
}

// Quiet is a narrator that prints nothing, for benchmarks.
func Quiet() *Narrator { return NewNarrator(io.Discard, false) }

// Verbose reports whether -v was given.
func (n *Narrator) Verbose() bool { return n.verbose }

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

const (
	bold  = "\x1b[1m"
	dim   = "\x1b[2m"
	cyan  = "\x1b[36m"
	reset = "\x1b[0m"
)

func (n *Narrator) paint(style, s string) string {
	if !n.color {
		return s
	}
	return style + s + reset
}

func (n *Narrator) println(s string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	fmt.Fprintln(n.w, s)
}

// Part starts a part of the demo ("A. Byte order"); step numbers restart.
func (n *Narrator) Part(title string) {
	n.mu.Lock()
	n.part, n.step = title, 0
	n.mu.Unlock()
	line := "== " + title + " "
	if pad := Width - Columns(line); pad > 0 {
		line += strings.Repeat("=", pad)
	}
	n.println("\n" + n.paint(bold, line))
}

// Step starts a numbered step with a title.
func (n *Narrator) Step(format string, args ...any) {
	n.mu.Lock()
	n.step++
	s := n.step
	n.mu.Unlock()
	n.println("\n" + n.paint(bold, fmt.Sprintf("[%d] %s", s, fmt.Sprintf(format, args...))))
}

// Say prints explanatory prose, wrapped to the terminal width.
func (n *Narrator) Say(format string, args ...any) {
	n.println(Wrap(fmt.Sprintf(format, args...), "    ", Width))
}

// Detail prints only with -v.
func (n *Narrator) Detail(format string, args ...any) {
	if n.verbose {
		n.println(n.paint(dim, Wrap(fmt.Sprintf(format, args...), "    ", Width)))
	}
}

// Sys prints one system call strace-style and returns err unchanged, so a lesson reads:
//
//	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
//	n.Sys(fd, err, "socket(AF_INET, SOCK_STREAM, 0)")
//
// which prints `socket(AF_INET, SOCK_STREAM, 0) = 3`, or on failure
// `connect(4, {AF_INET, 127.0.0.1:9}) = -1 ECONNREFUSED (Connection refused)`.
func (n *Narrator) Sys(ret int, err error, format string, args ...any) error {
	call, result := "  "+fmt.Sprintf(format, args...), " = "+Ret(ret, err)
	if Columns(call+result) > Width {
		// An errno with its description rarely fits behind a long call: the result goes on a
		// line of its own, under the call, rather than past the 80th column.
		result = "\n      " + result[1:]
	}
	n.println(n.paint(cyan, call+result))
	return err
}

// Result prints a value returned through an argument, strace-style, e.g. the address that
// getsockname wrote: `  -> {AF_INET, 127.0.0.1:36895}`.
func (n *Narrator) Result(format string, args ...any) {
	n.println("    -> " + fmt.Sprintf(format, args...))
}

// Kernel prints the kernel's table of the TCP sockets that pass f, as seen by NETLINK_SOCK_DIAG
// from the calling thread's namespace. A failed dump is printed, not fatal: narration must not
// change the lesson's outcome.
func (n *Narrator) Kernel(f sockdiag.Filter) {
	n.kernel(sockdiag.TCP, f)
}

// KernelUDP is Kernel for UDP sockets.
func (n *Narrator) KernelUDP(f sockdiag.Filter) {
	n.kernel(sockdiag.UDP, f)
}

func (n *Narrator) kernel(proto sockdiag.Protocol, f sockdiag.Filter) {
	socks, err := sockdiag.Dump(proto, f)
	if err != nil {
		n.println("    kernel: cannot dump sockets: " + err.Error())
		return
	}
	sockdiag.SortForDisplay(socks)
	var b strings.Builder
	sockdiag.WriteTable(&b, "  | ", socks)
	n.println(n.paint(dim, "    kernel (sock_diag):") + "\n" + strings.TrimRight(b.String(), "\n"))
}

// Block prints preformatted text (a table, a diagram) line by line, unchanged, indented by
// four spaces. Unlike Say it neither wraps nor collapses spaces.
func (n *Narrator) Block(text string) {
	lines := strings.Split(strings.TrimRight(text, "\n"), "\n")
	for i, l := range lines {
		lines[i] = strings.TrimRight("    "+l, " ")
	}
	n.println(strings.Join(lines, "\n"))
}

// Skip says that a step was skipped and why, in one line.
func (n *Narrator) Skip(step, reason string) {
	n.println(Wrap("skipped: "+step+": "+reason, "    ", Width))
}

// Ret formats a system call's result as strace does: "3", or "-1 EADDRINUSE (Address already
// in use)".
func Ret(ret int, err error) string {
	if err == nil {
		return fmt.Sprint(ret)
	}
	var errno unix.Errno
	if errors.As(err, &errno) {
		return "-1 " + ErrnoString(errno)
	}
	return "-1 (" + err.Error() + ")"
}

// ErrnoString is "ECONNREFUSED (Connection refused)".
func ErrnoString(e unix.Errno) string {
	name := unix.ErrnoName(e)
	if name == "" {
		name = fmt.Sprintf("errno %d", int(e))
	}
	msg := e.Error()
	if msg != "" {
		msg = strings.ToUpper(msg[:1]) + msg[1:]
	}
	return name + " (" + msg + ")"
}

// Sockaddr formats a socket address as strace does, e.g. {AF_INET, 127.0.0.1:9000} or
// {AF_INET6, [::1]:9000}.
func Sockaddr(sa unix.Sockaddr) string {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return fmt.Sprintf("{AF_INET, %s}", netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port)))
	case *unix.SockaddrInet6:
		return fmt.Sprintf("{AF_INET6, %s}", netip.AddrPortFrom(netip.AddrFrom16(a.Addr), uint16(a.Port)))
	case nil:
		return "NULL"
	}
	return fmt.Sprintf("%T", sa)
}

// Wrap breaks text into lines no longer than width, each starting with indent. Existing
// newlines are kept.
func Wrap(text, indent string, width int) string {
	var out []string
	for _, para := range strings.Split(text, "\n") {
		line, cols := indent, Columns(indent)
		for _, word := range strings.Fields(para) {
			w := Columns(word)
			if line != indent && cols+1+w > width {
				out = append(out, line)
				line, cols = indent, Columns(indent)
			}
			if line != indent {
				line += " "
				cols++
			}
			line += word
			cols += w
		}
		out = append(out, line)
	}
	return strings.Join(out, "\n")
}

// Columns is how many terminal columns s takes: one per character, two for the wide East Asian
// characters the course's terms are written in (三次握手 takes 8), as terminals draw them
// (Unicode UAX #11). Counting bytes instead would wrap a line with Chinese terms too early.
func Columns(s string) int {
	n := 0
	for _, r := range s {
		n++
		if isWide(r) {
			n++
		}
	}
	return n
}

// isWide reports the East Asian Wide and Fullwidth ranges that occur in CJK text.
func isWide(r rune) bool {
	switch {
	case r >= 0x1100 && r <= 0x115F, // Hangul Jamo
		r >= 0x2E80 && r <= 0x303E, // CJK radicals, punctuation
		r >= 0x3041 && r <= 0x33FF, // kana, CJK symbols
		r >= 0x3400 && r <= 0x4DBF, // CJK extension A
		r >= 0x4E00 && r <= 0x9FFF, // CJK unified ideographs
		r >= 0xA000 && r <= 0xA4CF, // Yi
		r >= 0xAC00 && r <= 0xD7A3, // Hangul syllables
		r >= 0xF900 && r <= 0xFAFF, // CJK compatibility ideographs
		r >= 0xFE30 && r <= 0xFE4F, // CJK compatibility forms
		r >= 0xFF00 && r <= 0xFF60, // fullwidth forms
		r >= 0xFFE0 && r <= 0xFFE6:
		return true
	}
	return false
}
