//go:build linux

package labtest

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// CompileC builds testdata/NAME.c of the calling test's package with the system's cc and
// returns the path of the binary, in a directory removed after the test. Without cc it skips
// the test or benchmark: the C programs are references and interop partners, and a student's
// machine may have no compiler (CI installs gcc). The flags are strict on purpose: a warning
// in a course's C is a bug in the course.
func CompileC(tb testing.TB, name string) string {
	tb.Helper()
	cc, err := exec.LookPath("cc")
	if err != nil {
		tb.Skipf("no C compiler (cc) on PATH: %s.c needs one", name)
	}
	dir := tb.TempDir()
	bin := filepath.Join(dir, name)
	build := exec.Command(cc, "-std=c99", "-D_DEFAULT_SOURCE", "-O2", "-Wall", "-Werror", "-o", bin, filepath.Join("testdata", name+".c"))
	// cc's temporary files go to the test's own directory, not a shared /tmp.
	build.Env = append(os.Environ(), "TMPDIR="+dir)
	if out, err := build.CombinedOutput(); err != nil {
		tb.Fatalf("cc %s.c: %v\n%s", name, err, out)
	}
	return bin
}
