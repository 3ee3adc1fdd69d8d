//go:build linux

package lab

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"socklab/internal/netlab"
)

// Demo is what a part of a chapter's demo receives: the narrator and where it runs.
type Demo struct {
	*Narrator
	// Env says whether the demo runs in a private namespace; parts that need one call
	// NeedPrivate and skip only that step when it is missing.
	Env netlab.Env
}

// NeedPrivate reports whether a private namespace is available; if not, it prints a one-line
// "skipped" naming the step and the reason.
func (d *Demo) NeedPrivate(step string) bool {
	if d.Env.Private {
		return true
	}
	reason := d.Env.Reason
	if reason == "" {
		reason = "no private network namespace"
	}
	d.Skip(step, "needs a private network namespace; "+reason)
	return false
}

// Part is one section of a chapter's demo, runnable alone as `go run ./NN-name NAME`.
type Part struct {
	Name  string // subcommand, e.g. "backlog"
	Title string // heading, e.g. "C. Listen backlog, the accept queue and the SYN queue"
	Run   func(d *Demo) error
}

// Role is a subcommand for two-terminal labs (server, client, send, recv). It runs in the
// caller's own network namespace and parses its own flags from args.
type Role struct {
	Name    string
	Summary string
	Run     func(args []string, stdout, stderr io.Writer) error
}

// Program is a chapter's command line.
type Program struct {
	Name    string // e.g. "01-socket-bind-listen"
	Summary string // one line
	Doc     string // e.g. "docs/01-socket-bind-listen.md"
	Parts   []Part
	Roles   []Role
}

// Main runs the program with os.Args and exits with its status.
func (p Program) Main() {
	os.Exit(p.Run(os.Args[1:], os.Stdout, os.Stderr))
}

// Run executes the program and returns the exit status: 0 success, 1 runtime failure (one
// line, with a hint where one exists), 2 usage error (one line and the usage).
func (p Program) Run(args []string, stdout, stderr io.Writer) int {
	err := p.run(args, stdout, stderr)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, new(*UsageError)):
		fmt.Fprintf(stderr, "%s: %v\n", p.Name, err)
		p.usage(stderr)
		return 2
	default:
		fmt.Fprintf(stderr, "%s: %s\n", p.Name, OneLine(err))
		return 1
	}
}

func (p Program) run(args []string, stdout, stderr io.Writer) error {
	// The first non-flag word selects a part or a role; flags may come before it or after.
	name := ""
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		name, args = args[0], args[1:]
	}
	switch name {
	case "help":
		p.usage(stdout)
		return nil
	case "":
		return p.demo(p.Parts, args, stdout, stderr)
	}
	for _, part := range p.Parts {
		if part.Name == name {
			return p.demo([]Part{part}, args, stdout, stderr)
		}
	}
	for _, role := range p.Roles {
		if role.Name == name {
			return role.Run(args, stdout, stderr)
		}
	}
	return Usagef("unknown part or role %q (try: %s)", name, strings.Join(p.names(), ", "))
}

func (p Program) names() []string {
	var names []string
	for _, part := range p.Parts {
		names = append(names, part.Name)
	}
	for _, role := range p.Roles {
		names = append(names, role.Name)
	}
	return names
}

func (p Program) demo(parts []Part, args []string, stdout, stderr io.Writer) error {
	fs := NewFlagSet(p.Name, stderr)
	host := fs.Bool("host", false, "run on the host's loopback instead of a private network namespace")
	verbose := fs.Bool("v", false, "verbose: explain more")
	if err := ParseFlags(fs, args); err != nil {
		return err
	}
	// -host means "behave as on the host": namespace-only steps skip, even when a test has
	// already put this process in a namespace of its own.
	env := netlab.Env{Reason: "-host was given, so steps that need a private namespace are skipped"}
	if !*host {
		env = netlab.Enter() // returns only in the namespaced child, or when unavailable
	}
	d := &Demo{Narrator: NewNarrator(stdout, *verbose), Env: env}
	fmt.Fprintf(stdout, "%s\n%s\n", Wrap(p.Name+" — "+p.Summary, "", Width), Wrap(env.String(), "", Width))
	for _, part := range parts {
		d.Part(part.Title)
		if err := part.Run(d); err != nil {
			return fmt.Errorf("%s: %w", part.Name, err)
		}
	}
	fmt.Fprintf(stdout, "\nRead along: %s\n", p.Doc)
	return nil
}

func (p Program) usage(w io.Writer) {
	fmt.Fprintf(w, "usage: go run ./%s [PART|ROLE] [flags]   (%s)\n", p.Name, p.Summary)
	if len(p.Parts) > 0 {
		fmt.Fprintln(w, "demo parts (no PART runs them all; flags -host, -v):")
		for _, part := range p.Parts {
			fmt.Fprintf(w, "  %-12s %s\n", part.Name, part.Title)
		}
	}
	if len(p.Roles) > 0 {
		fmt.Fprintln(w, "roles for two-terminal labs (run in your own network; ROLE -h for flags):")
		for _, role := range p.Roles {
			fmt.Fprintf(w, "  %-12s %s\n", role.Name, role.Summary)
		}
	}
	fmt.Fprintf(w, "docs: %s\n", p.Doc)
}

// UsageError is a mistake in the command line; programs exit 2 on it.
type UsageError struct{ msg string }

func (e *UsageError) Error() string { return e.msg }

// Usagef makes a UsageError.
func Usagef(format string, args ...any) error {
	return &UsageError{msg: fmt.Sprintf(format, args...)}
}

// NewFlagSet is a flag.FlagSet that reports errors instead of exiting, writing help to w.
func NewFlagSet(name string, w io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(w)
	return fs
}

// ParseFlags parses args, turning flag errors into UsageErrors (-h stays flag.ErrHelp) and
// refusing stray arguments.
func ParseFlags(fs *flag.FlagSet, args []string) error {
	fs.SetOutput(io.Discard) // Program.Run prints one line and the usage itself
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(os.Stdout)
			fs.PrintDefaults()
			return err
		}
		return Usagef("%v", err)
	}
	if fs.NArg() > 0 {
		return Usagef("unexpected argument %q", fs.Arg(0))
	}
	return nil
}

// ParseDialAddr is ParseAddrPort for an address a client connects to: port 0 means "any port"
// to bind(2) but names no server to connect(2) to, so it is a usage error.
func ParseDialAddr(flagName, s string) (netip.AddrPort, error) {
	addr, err := ParseAddrPort(flagName, s)
	if err == nil && addr.Port() == 0 {
		return netip.AddrPort{}, Usagef("-%s %v: port 0 cannot be connected to; give the server's port", flagName, addr)
	}
	return addr, err
}

// ParseAddrPort parses "127.0.0.1:9000" or "[::1]:9000" for a -addr flag, as a UsageError with
// a hint when it is malformed.
func ParseAddrPort(flagName, s string) (netip.AddrPort, error) {
	host, portStr, err := splitHostPort(s)
	if err != nil {
		return netip.AddrPort{}, Usagef("-%s %q: %v (want IP:PORT, e.g. 127.0.0.1:9000 or [::1]:9000)", flagName, s, err)
	}
	addr, err := netip.ParseAddr(host)
	if err != nil {
		return netip.AddrPort{}, Usagef("-%s %q: %q is not an IP address (names are not resolved here; use 127.0.0.1)", flagName, s, host)
	}
	port, err := ParsePort(flagName, portStr)
	if err != nil {
		return netip.AddrPort{}, err
	}
	return netip.AddrPortFrom(addr, port), nil
}

func splitHostPort(s string) (host, port string, err error) {
	i := strings.LastIndex(s, ":")
	if i < 0 {
		return "", "", errors.New("missing port")
	}
	host, port = s[:i], s[i+1:]
	if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
		host = host[1 : len(host)-1]
	} else if strings.Contains(host, ":") {
		return "", "", errors.New("IPv6 addresses need brackets")
	}
	return host, port, nil
}

// ParsePort parses a port number 0–65535 as a UsageError when out of range.
func ParsePort(flagName, s string) (uint16, error) {
	v, err := strconv.Atoi(s)
	if err != nil || v < 0 || v > 65535 {
		return 0, Usagef("-%s: port %q out of range (want 0-65535)", flagName, s)
	}
	return uint16(v), nil
}

// SockaddrOf converts an address into the unix.Sockaddr that bind/connect take.
func SockaddrOf(ap netip.AddrPort) unix.Sockaddr {
	if ap.Addr().Is4() {
		return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	}
	return &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
}

// AddrPortOf converts a unix.Sockaddr (from getsockname, accept, recvfrom) into a netip.AddrPort.
func AddrPortOf(sa unix.Sockaddr) netip.AddrPort {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr), uint16(a.Port))
	}
	return netip.AddrPort{}
}

// Hint returns advice for errors a student commonly meets, or "".
func Hint(err error) string {
	// A file's error (opening a transfer file, /proc) has nothing to do with ports: its errno
	// means what open(2) says, so only the path hint applies.
	var pathErr *fs.PathError
	if errors.As(err, &pathErr) {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) {
			return "check the path and its permissions"
		}
		return ""
	}
	switch {
	case errors.Is(err, unix.EADDRINUSE):
		return "a socket still holds this port (maybe in TIME_WAIT: ss -tan); see docs/04-reuseaddr.md"
	case errors.Is(err, unix.EACCES):
		return "ports below 1024 need CAP_NET_BIND_SERVICE, and broadcast needs SO_BROADCAST; pick a port above 1023"
	case errors.Is(err, unix.ECONNREFUSED):
		return "nothing listens there: start the server role first, and check -addr"
	case errors.Is(err, unix.EMFILE), errors.Is(err, unix.ENFILE):
		return "out of file descriptors: raise the soft limit with ulimit -n (up to the hard limit)"
	case errors.Is(err, unix.EADDRNOTAVAIL):
		return "that address is not on any local interface; use 127.0.0.1"
	case errors.Is(err, unix.ENOENT):
		return "check the path"
	}
	return ""
}

// OneLine renders err on one line, with its hint if there is one.
func OneLine(err error) string {
	msg := strings.ReplaceAll(err.Error(), "\n", "; ")
	if h := Hint(err); h != "" {
		msg += " (hint: " + h + ")"
	}
	return msg
}
