//go:build linux

package labtest

import (
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"socklab/internal/lab"
)

// selfProgram lets RunProgram be tested on a real child process.
var selfProgram = lab.Program{
	Name: "00-labtest", Summary: "labtest's own test program", Doc: "docs/CONVENTIONS.md",
	Roles: []lab.Role{{Name: "echo", Summary: "prints its arguments", Run: func(args []string, stdout, _ io.Writer) error {
		if len(args) == 0 {
			return lab.Usagef("echo needs an argument")
		}
		_, err := fmt.Fprintln(stdout, strings.Join(args, " "))
		return err
	}}},
}

func TestMain(m *testing.M) { Main(m, &selfProgram) }

func TestRunProgramReportsOutputAndStatus(t *testing.T) {
	out, _, code := RunProgram(t, nil, "echo", "hello", "world")
	assert.Equal(t, 0, code)
	assert.Equal(t, "hello world\n", out)
	_, errOut, code := RunProgram(t, nil, "echo")
	assert.Equal(t, 2, code)
	assert.Contains(t, errOut, "echo needs an argument")
}

// The leak check must see a descriptor and a goroutine that outlive a test, and be quiet once
// they are gone. (Not parallel: it compares whole-process state.)
func TestLeakCheckSeesFDsAndGoroutines(t *testing.T) {
	base := OpenFDs()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	release := make(chan struct{})
	go func() { <-release }()
	report := checkLeaks(base, 50*time.Millisecond)
	assert.Contains(t, report, "leaked 1 file descriptor")
	assert.Contains(t, report, "socket:[")
	assert.Contains(t, report, "leaked 1 goroutine")
	unix.Close(fd)
	close(release)
	assert.Empty(t, checkLeaks(base, 2*time.Second))
}

// fakeTB records a failure instead of stopping the goroutine, to test WaitFor's timeout path.
type fakeTB struct {
	testing.TB
	failed string
}

func (f *fakeTB) Helper()                           {}
func (f *fakeTB) Fatalf(format string, args ...any) { f.failed = fmt.Sprintf(format, args...) }

func TestWaitForFailsWithLastObservation(t *testing.T) {
	f := &fakeTB{TB: t}
	start := time.Now()
	WaitFor(f, 30*time.Millisecond, "the impossible", func() (bool, string) { return false, "still no" })
	assert.GreaterOrEqual(t, time.Since(start), 30*time.Millisecond)
	assert.Contains(t, f.failed, "the impossible")
	assert.Contains(t, f.failed, "still no")

	calls := 0
	f = &fakeTB{TB: t}
	WaitFor(f, time.Second, "the third call", func() (bool, string) { calls++; return calls == 3, "" })
	assert.Empty(t, f.failed)
	assert.Equal(t, 3, calls)
}
