//go:build linux

// Package labtest holds what every chapter's tests share: a TestMain that runs the package in
// a private network namespace when it can (on the host loopback otherwise), waits for kernel
// states with a deadline instead of sleeping, and checks that a package's tests leaked no file
// descriptors or goroutines.
package labtest

import (
	"bytes"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"socklab/internal/lab"
	"socklab/internal/netlab"
	"socklab/internal/sockdiag"
)

// envRunProgram makes a test binary run the chapter's program instead of its tests, so tests
// can exercise the real command line (exit codes, signals) without building a second binary.
const envRunProgram = "SOCKLAB_TEST_RUN_PROGRAM"

// Env is where this package's tests run, as decided by Main.
var Env netlab.Env

// Main is a package's TestMain: it enters a private namespace (or falls back to the host and
// says why), runs the tests, then fails the package if any test left a file descriptor open or
// a goroutine running. prog, if not nil, is the chapter's program, runnable through RunProgram.
func Main(m *testing.M, prog *lab.Program) {
	if prog != nil && os.Getenv(envRunProgram) == "1" {
		os.Exit(prog.Run(os.Args[1:], os.Stdout, os.Stderr))
	}
	Env = netlab.Enter()
	if !Env.Private {
		fmt.Fprintf(os.Stderr, "labtest: %s; tests run on the host loopback and namespace-only tests skip\n", Env.Reason)
	}
	// The Go runtime opens its netpoller (an epoll fd and an eventfd) on first use and keeps
	// it; start it now so it is part of the baseline, not reported as a leak.
	if r, w, err := os.Pipe(); err == nil {
		r.Close()
		w.Close()
	}
	fdsBefore := OpenFDs()
	code := m.Run()
	if code == 0 {
		if leak := checkLeaks(fdsBefore, 5*time.Second); leak != "" {
			fmt.Fprintln(os.Stderr, "labtest: "+leak)
			code = 1
		}
	}
	os.Exit(code)
}

// NeedPrivate skips the test unless it runs in a private namespace.
func NeedPrivate(t testing.TB) {
	t.Helper()
	if !Env.Private && !netlab.Current().Private {
		t.Skipf("needs a private network namespace: %s", Env.Reason)
	}
}

// WaitFor polls cond until it returns true or timeout passes, then fails the test with the
// last description cond gave. Polling starts at 1 ms and backs off to 20 ms: the kernel is the
// clock, never a fixed sleep.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	if !Poll(timeout, cond) {
		_, last := cond()
		t.Fatalf("timed out after %v waiting for %s; last seen: %s", timeout, what, last)
	}
}

// Poll is WaitFor without a test: it reports whether cond became true within timeout.
func Poll(timeout time.Duration, cond func() (bool, string)) bool {
	return lab.Poll(timeout, func() bool { ok, _ := cond(); return ok })
}

// WaitState waits until the kernel reports the TCP socket with exactly this local and remote
// endpoint in state want, and returns what the kernel reported.
func WaitState(t testing.TB, local, remote netip.AddrPort, want sockdiag.State, timeout time.Duration) sockdiag.Socket {
	t.Helper()
	var got sockdiag.Socket
	WaitFor(t, timeout, fmt.Sprintf("%v → %v in %v", local, remote, want), func() (bool, string) {
		s, found, err := sockdiag.Find(local, remote)
		switch {
		case err != nil:
			return false, err.Error()
		case !found:
			return false, "no such socket"
		}
		got = s
		return s.State == want, s.String()
	})
	return got
}

// WaitGone waits until the kernel has no TCP socket with this local and remote endpoint.
func WaitGone(t testing.TB, local, remote netip.AddrPort, timeout time.Duration) {
	t.Helper()
	WaitFor(t, timeout, fmt.Sprintf("%v → %v to disappear", local, remote), func() (bool, string) {
		s, found, err := sockdiag.Find(local, remote)
		if err != nil {
			return false, err.Error()
		}
		if found {
			return false, s.String()
		}
		return true, ""
	})
}

// RunProgram runs the chapter's program (the prog given to Main) with args in a child process
// and returns its output and exit status. stdin may be nil.
func RunProgram(t testing.TB, stdin io.Reader, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := ProgramCommand(args...)
	var out, errb bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, &out, &errb
	err := cmd.Run()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return out.String(), errb.String(), ee.ExitCode()
		}
		t.Fatalf("run program %v: %v", args, err)
	}
	return out.String(), errb.String(), 0
}

// ProgramCommand is the exec.Cmd behind RunProgram, for tests that need to signal the program
// or read its output while it runs. The child inherits this test's network namespace.
func ProgramCommand(args ...string) *exec.Cmd {
	cmd := exec.Command("/proc/self/exe", args...)
	cmd.Env = append(os.Environ(), envRunProgram+"=1")
	return cmd
}

// OpenFDs maps each of this process's descriptors to what /proc/self/fd says it is
// ("socket:[123]", "pipe:[456]", "anon_inode:[eventpoll]", "/dev/null"). It leaves out the
// descriptor of the directory being read, which is closed again by the time it is looked at.
func OpenFDs() map[string]string {
	fds := map[string]string{}
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return fds
	}
	for _, e := range entries {
		if target, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && !strings.HasPrefix(target, "/proc/") {
			fds[e.Name()] = target
		}
	}
	return fds
}

// ignoredGoroutine lists goroutines that live for the whole process by design.
func ignoredGoroutine(stack string) bool {
	for _, s := range []string{
		"testing.(*M).", "testing.runTests", "os/signal.signal_recv", "os/signal.loop",
		"runtime.goexit0", "testing.tRunner", "runtime.ensureSigM", "created by runtime",
	} {
		if strings.Contains(stack, s) {
			return true
		}
	}
	return false
}

// checkLeaks waits up to timeout for goroutines to end and descriptors to close, then
// describes what is still there, or returns "".
func checkLeaks(before map[string]string, timeout time.Duration) string {
	var report string
	Poll(timeout, func() (bool, string) {
		report = ""
		var leakedFDs []string
		for fd, target := range OpenFDs() {
			if old, ok := before[fd]; !ok || old != target {
				// The directory read itself shows up as a transient fd.
				if target != "" && !strings.HasPrefix(target, "/proc/") {
					leakedFDs = append(leakedFDs, fd+" → "+target)
				}
			}
		}
		var leakedG []string
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		for i, g := range strings.Split(string(buf), "\n\n") {
			if i == 0 || ignoredGoroutine(g) { // the first is this goroutine
				continue
			}
			leakedG = append(leakedG, strings.SplitN(g, "\n", 3)[0]+" "+firstFrame(g))
		}
		slices.Sort(leakedFDs)
		if len(leakedFDs) > 0 {
			report += fmt.Sprintf("leaked %d file descriptor(s): %s. ", len(leakedFDs), strings.Join(leakedFDs, ", "))
		}
		if len(leakedG) > 0 {
			report += fmt.Sprintf("leaked %d goroutine(s): %s", len(leakedG), strings.Join(leakedG, "; "))
		}
		return report == "", report
	})
	return report
}

func firstFrame(stack string) string {
	lines := strings.Split(stack, "\n")
	if len(lines) > 1 {
		return strings.TrimSpace(lines[1])
	}
	return ""
}
