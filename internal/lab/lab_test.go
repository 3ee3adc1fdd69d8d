//go:build linux

package lab_test

import (
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"socklab/internal/lab"
	"socklab/internal/labtest"
	"socklab/internal/sockdiag"
)

func TestMain(m *testing.M) { labtest.Main(m, nil) }

// Errors print as strace prints them, from a real failing system call.
func TestSysPrintsStraceStyle(t *testing.T) {
	var out bytes.Buffer
	n := lab.NewNarrator(&out, false)
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	defer unix.Close(fd)
	sa := &unix.SockaddrInet4{Port: 9, Addr: [4]byte{127, 0, 0, 1}} // discard port: nothing listens
	got := n.Sys(0, unix.Connect(fd, sa), "connect(%d, %s)", fd, lab.Sockaddr(sa))
	assert.ErrorIs(t, got, unix.ECONNREFUSED, "Sys returns the error unchanged")
	assert.Equal(t, fmt.Sprintf("  connect(%d, {AF_INET, 127.0.0.1:9}) = -1 ECONNREFUSED (Connection refused)\n", fd), out.String())

	out.Reset()
	n.Sys(3, nil, "socket(AF_INET, SOCK_STREAM, 0)")
	assert.Equal(t, "  socket(AF_INET, SOCK_STREAM, 0) = 3\n", out.String())

	// A call whose errno would pass the 80th column gets its result on the next line.
	out.Reset()
	n.Sys(0, unix.EINPROGRESS, "connect(18, {AF_INET, 127.0.0.1:40743})")
	assert.Equal(t, "  connect(18, {AF_INET, 127.0.0.1:40743})\n"+
		"      = -1 EINPROGRESS (Operation now in progress)\n", out.String())
}

func TestSockaddrFormats(t *testing.T) {
	assert.Equal(t, "{AF_INET6, [::1]:9000}", lab.Sockaddr(&unix.SockaddrInet6{Port: 9000, Addr: netip.IPv6Loopback().As16()}))
	assert.Equal(t, "NULL", lab.Sockaddr(nil))
	ap := netip.MustParseAddrPort("[::1]:80")
	assert.Equal(t, ap, lab.AddrPortOf(lab.SockaddrOf(ap)))
	ap4 := netip.MustParseAddrPort("127.0.0.1:8080")
	assert.Equal(t, ap4, lab.AddrPortOf(lab.SockaddrOf(ap4)))
}

// Output to a pipe or file carries no colour codes, and narration wraps within 80 columns.
func TestNarrationIsPlainAndFits80Columns(t *testing.T) {
	var out bytes.Buffer
	n := lab.NewNarrator(&out, true)
	n.Part("A. A part title")
	n.Step("a step with a rather long title that still fits")
	n.Say("%s", strings.Repeat("word ", 60))
	n.Detail("verbose detail")
	n.Skip("step X", strings.Repeat("because ", 20))
	lfd, laddr := labtest.Listen(t, labtest.Loopback4, 5)
	_ = lfd
	n.Kernel(sockdiag.Filter{Port: laddr.Port()})
	s := out.String()
	assert.NotContains(t, s, "\x1b[", "no escape codes when not a terminal")
	assert.Contains(t, s, "verbose detail")
	assert.Contains(t, s, "LISTEN")
	assert.Contains(t, s, "[1] a step")
	for _, line := range strings.Split(s, "\n") {
		assert.LessOrEqual(t, lab.Columns(line), 80, "%q", line)
	}
}

func TestParseAddrPort(t *testing.T) {
	for in, want := range map[string]string{"127.0.0.1:9000": "127.0.0.1:9000", "[::1]:0": "[::1]:0"} {
		got, err := lab.ParseAddrPort("addr", in)
		require.NoError(t, err, in)
		assert.Equal(t, want, got.String())
	}
	for _, bad := range []string{"127.0.0.1", "127.0.0.1:70000", "localhost:80", "::1:80", "1.2.3.4:-1", "x:y"} {
		_, err := lab.ParseAddrPort("addr", bad)
		var ue *lab.UsageError
		assert.ErrorAs(t, err, &ue, bad)
	}
}

func testProgram(ran *[]string) lab.Program {
	part := func(name string) lab.Part {
		return lab.Part{Name: name, Title: "Part " + name, Run: func(d *lab.Demo) error {
			*ran = append(*ran, name)
			d.NeedPrivate("the namespace step")
			return nil
		}}
	}
	return lab.Program{
		Name: "00-test", Summary: "a test program", Doc: "docs/00-test.md",
		Parts: []lab.Part{part("one"), part("two")},
		Roles: []lab.Role{{Name: "fail", Summary: "fails at run time", Run: func(args []string, _, _ io.Writer) error {
			return fmt.Errorf("bind: %w", unix.EADDRINUSE)
		}}},
	}
}

// Exit status and messages follow the conventions: 0, 1 with a hint, 2 with the usage.
func TestProgramExitCodes(t *testing.T) {
	var ran []string
	p := testProgram(&ran)
	var out, errb bytes.Buffer

	assert.Equal(t, 0, p.Run([]string{"-host"}, &out, &errb))
	assert.Equal(t, []string{"one", "two"}, ran, "no part name runs every part")
	assert.Contains(t, out.String(), "skipped: the namespace step", "-host skips namespace steps by name")

	ran = nil
	assert.Equal(t, 0, p.Run([]string{"two", "-host"}, &out, &errb))
	assert.Equal(t, []string{"two"}, ran)

	errb.Reset()
	assert.Equal(t, 2, p.Run([]string{"nope"}, &out, &errb))
	assert.Contains(t, errb.String(), `unknown part or role "nope"`)
	assert.Contains(t, errb.String(), "usage:")

	errb.Reset()
	assert.Equal(t, 2, p.Run([]string{"one", "-bogus"}, &out, &errb))
	assert.Contains(t, errb.String(), "flag provided but not defined")

	errb.Reset()
	assert.Equal(t, 1, p.Run([]string{"fail"}, &out, &errb))
	lines := strings.Split(strings.TrimSpace(errb.String()), "\n")
	assert.Len(t, lines, 1, "a runtime failure is one line")
	assert.Contains(t, lines[0], "address already in use")
	assert.Contains(t, lines[0], "docs/04-reuseaddr.md")

	out.Reset()
	assert.Equal(t, 0, p.Run([]string{"help"}, &out, &errb))
	assert.Contains(t, out.String(), "fails at run time")
}

func TestWrap(t *testing.T) {
	got := lab.Wrap("aaa bbb ccc ddd", "  ", 9)
	assert.Equal(t, "  aaa bbb\n  ccc ddd", got)
	assert.Equal(t, "  one\n  two", lab.Wrap("one\ntwo", "  ", 80))
	// Chinese terms take two columns a character, not three (their UTF-8 bytes) nor one.
	assert.Equal(t, 10, lab.Columns("全连接队列"))
	assert.Equal(t, "ab 全连接队列\ncd", lab.Wrap("ab 全连接队列 cd", "", 13))
	assert.Equal(t, "ab\n全连接队列", lab.Wrap("ab 全连接队列", "", 12))
}

func TestHints(t *testing.T) {
	assert.Contains(t, lab.OneLine(fmt.Errorf("x: %w", unix.ECONNREFUSED)), "start the server role first")
	assert.Equal(t, "plain", lab.OneLine(fmt.Errorf("plain")))
	// A socket's EACCES is about privileged ports; a file's EACCES is about the file.
	assert.Contains(t, lab.OneLine(fmt.Errorf("bind: %w", unix.EACCES)), "ports below 1024")
	fileErr := &fs.PathError{Op: "open", Path: "/srv/data", Err: unix.EACCES}
	assert.Contains(t, lab.OneLine(fileErr), "check the path and its permissions")
	assert.NotContains(t, lab.OneLine(fileErr), "port")
	_, err := os.Open("/nonexistent/socklab")
	assert.Contains(t, lab.OneLine(err), "check the path")
}

// Block keeps a preformatted table as it is: no wrapping, no collapsed spaces, four-space indent.
func TestBlockKeepsLayout(t *testing.T) {
	var out bytes.Buffer
	n := lab.NewNarrator(&out, false)
	n.Block("a    b\n  c   d   \n")
	assert.Equal(t, "    a    b\n      c   d\n", out.String())
}

// Poll returns as soon as the condition holds, and gives up after its timeout when it never does.
func TestPoll(t *testing.T) {
	calls := 0
	assert.True(t, lab.Poll(time.Second, func() bool { calls++; return calls == 3 }))
	assert.Equal(t, 3, calls)

	start := time.Now()
	assert.False(t, lab.Poll(30*time.Millisecond, func() bool { return false }))
	assert.GreaterOrEqual(t, time.Since(start), 30*time.Millisecond)
}

// A client's address needs a port: 0 is "any" to bind but names no server to connect to.
func TestParseDialAddrRefusesPortZero(t *testing.T) {
	_, err := lab.ParseDialAddr("addr", "127.0.0.1:0")
	var usage *lab.UsageError
	require.ErrorAs(t, err, &usage)
	assert.Contains(t, err.Error(), "give the server's port")
	addr, err := lab.ParseDialAddr("addr", "127.0.0.1:9000")
	require.NoError(t, err)
	assert.Equal(t, uint16(9000), addr.Port())
}
