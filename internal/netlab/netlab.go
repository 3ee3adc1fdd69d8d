//go:build linux

// Package netlab gives a lesson its own network: a private user + network namespace created
// without root (user_namespaces(7), network_namespaces(7)), with per-namespace sysctls, and
// optional extra "hosts" joined by veth pairs. Nothing here ever changes the host's network
// or its sysctls: writes are refused unless the calling thread is in a namespace this
// program created.
//
// How: Enter re-executes the running binary (/proc/self/exe) with CLONE_NEWUSER|CLONE_NEWNET
// and a uid/gid map of 0 → the caller's own ids, so the child is "root" only inside its own
// namespaces. The whole child process lives in the new namespace from its first instruction,
// which sidesteps the per-thread namespace traps of unshare(2) in a Go program.
package netlab

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

const (
	// envChild is set to "1" in the re-executed child that runs inside the namespace.
	envChild = "SOCKLAB_NETNS"
	// envHostNetns carries the inode of the host's network namespace into the child, so that
	// sysctl writes can prove they are not aimed at the host.
	envHostNetns = "SOCKLAB_HOST_NETNS"
	// exitSetupFailed is the child's exit status when the namespace exists but cannot be
	// made usable; the parent then falls back to the host with the reason the child gave.
	exitSetupFailed = 86
)

// Env describes where a lab runs.
type Env struct {
	// Private is true when this process runs in a network namespace of its own.
	Private bool
	// Reason says, in one sentence, why there is no private namespace (empty when Private).
	Reason string
}

// String is a one-line description suitable for a demo's header.
func (e Env) String() string {
	if e.Private {
		return "running in a private network namespace (its own loopback, sysctls and port space)"
	}
	return "running on the host's loopback: " + e.Reason
}

var (
	enterOnce sync.Once
	entered   Env
)

// Enter moves the program into a private network namespace. In the parent it re-executes
// the binary inside new namespaces, waits for it and exits with its status — it does not
// return. It returns in the child (Private = true), or in the original process when
// namespaces are unavailable (Private = false and Reason explains), so the caller can run on
// the host's loopback and skip only the steps that need a namespace.
//
// Call it first thing in main, after flag parsing and before starting goroutines, or from
// TestMain.
func Enter() Env {
	enterOnce.Do(func() { entered = enter() })
	return entered
}

// Current reports the environment without entering anything: Private is true only in a
// child created by Enter.
func Current() Env {
	if os.Getenv(envChild) == "1" {
		return Env{Private: true}
	}
	return Env{Reason: "this process did not create a private namespace (-host, or not requested)"}
}

func enter() Env {
	if os.Getenv(envChild) == "1" {
		if err := setupChild(); err != nil {
			// Tell the parent why on fd 3, then exit with the agreed status.
			if f := os.NewFile(3, "netlab-status"); f != nil {
				fmt.Fprint(f, err.Error())
				f.Close()
			}
			os.Exit(exitSetupFailed)
		}
		return Env{Private: true}
	}
	hostIno, err := threadNetnsInode()
	if err != nil {
		return Env{Reason: "cannot read /proc/thread-self/ns/net (" + err.Error() + ")"}
	}
	before := snapshotHostSysctls()
	code, reason := runChild(hostIno)
	if reason != "" {
		return Env{Reason: reason}
	}
	// The promise "never touch the host" is checked on every run, not just believed.
	if changed := diffSysctls(before, snapshotHostSysctls()); len(changed) > 0 {
		fmt.Fprintf(os.Stderr, "netlab: host sysctls changed during this run: %s\n", strings.Join(changed, "; "))
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
	return Env{} // unreachable
}

func runChild(hostIno uint64) (code int, reason string) {
	// Pdeathsig fires when the thread that started the child exits; keep this one alive.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	statusR, statusW, err := os.Pipe()
	if err != nil {
		return 0, "cannot create a pipe: " + err.Error()
	}
	cmd := exec.Command("/proc/self/exe", os.Args[1:]...)
	cmd.Args[0] = os.Args[0]
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.ExtraFiles = []*os.File{statusW}
	cmd.Env = append(os.Environ(), envChild+"=1", envHostNetns+"="+strconv.FormatUint(hostIno, 10))
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWUSER | syscall.CLONE_NEWNET,
		// Map only our own ids: inside, we are uid 0 with capabilities over this namespace
		// and nothing else (user_namespaces(7), "Capabilities").
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getuid(), Size: 1}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getgid(), Size: 1}},
		// The child dies with us, so no lab outlives an interrupted parent.
		Pdeathsig: syscall.SIGKILL,
	}
	// Ctrl-C reaches the child through the terminal's process group; the parent must not die
	// first, or the child would be killed before it can close its sockets.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	if err := cmd.Start(); err != nil {
		statusR.Close()
		statusW.Close()
		return 0, explainCloneError(err)
	}
	statusW.Close()
	done := make(chan struct{})
	go func() {
		for {
			select {
			case s := <-sigs:
				_ = cmd.Process.Signal(s)
			case <-done:
				return
			}
		}
	}()
	msg, _ := io.ReadAll(io.LimitReader(statusR, 4096))
	statusR.Close()
	err = cmd.Wait()
	close(done)
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		if exitErr.ExitCode() == exitSetupFailed && len(msg) > 0 {
			return 0, "the private namespace could not be set up (" + string(msg) + ")"
		}
		if ws, ok := exitErr.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal()), ""
		}
		return exitErr.ExitCode(), ""
	}
	if err != nil {
		return 1, ""
	}
	return 0, ""
}

func explainCloneError(err error) string {
	base := "cannot create a private user+network namespace (" + err.Error() + ")"
	switch {
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		return base + "; unprivileged user namespaces are disabled here (kernel.unprivileged_userns_clone=0, " +
			"an AppArmor restriction as on Ubuntu 24.04, or a container without CLONE_NEWUSER)"
	case errors.Is(err, unix.ENOSPC):
		return base + "; user.max_user_namespaces is 0 or exhausted"
	case errors.Is(err, unix.EINVAL):
		return base + "; this kernel lacks user or network namespace support"
	}
	return base
}

func setupChild() error {
	if err := LinkUp("lo"); err != nil {
		return fmt.Errorf("bring up lo: %w", err)
	}
	return nil
}

// LinkUp sets IFF_UP on an interface of the calling thread's namespace (SIOCSIFFLAGS, as
// `ip link set NAME up` does). A new network namespace starts with lo down.
func LinkUp(name string) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("SIOCGIFFLAGS %s: %w", name, err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("SIOCSIFFLAGS %s: %w", name, err)
	}
	return nil
}

// threadNetnsInode returns the inode that identifies the network namespace of the calling
// thread. Callers that care must hold runtime.LockOSThread across it and what follows.
func threadNetnsInode() (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// hostNetnsInode is the host's namespace inode recorded by the parent, or 0 if unknown.
func hostNetnsInode() uint64 {
	v, err := strconv.ParseUint(os.Getenv(envHostNetns), 10, 64)
	if err != nil {
		return 0
	}
	return v
}

// ErrNotPrivate is returned by operations that would change the host's network: netlab
// refuses them unless the calling thread is in a namespace this program created.
var ErrNotPrivate = errors.New("refused: not in a private network namespace created by this program " +
	"(socklab never changes the host's network; run without -host, on a system that allows user namespaces)")

// inPrivateNamespace reports whether the calling thread (locked by the caller) is in a network
// namespace other than the host's, inside a child created by Enter.
func inPrivateNamespace() bool {
	if os.Getenv(envChild) != "1" {
		return false
	}
	host := hostNetnsInode()
	cur, err := threadNetnsInode()
	return host != 0 && err == nil && cur != host
}

// sysctlPath turns "net.ipv4.tcp_fin_timeout" into /proc/sys/net/ipv4/tcp_fin_timeout.
// Only the net.* tree is namespaced, so only it is accepted.
func sysctlPath(name string) (string, error) {
	if !strings.HasPrefix(name, "net.") || strings.Contains(name, "..") || strings.ContainsAny(name, "/ ") {
		return "", fmt.Errorf("sysctl %q: only net.* names are namespaced and accepted", name)
	}
	return "/proc/sys/" + strings.ReplaceAll(name, ".", "/"), nil
}
