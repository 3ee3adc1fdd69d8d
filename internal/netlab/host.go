//go:build linux

package netlab

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Host is a second network namespace — another "machine" for the lesson — owned by one OS
// thread that never leaves it. Code runs there through Do; everything it creates (sockets,
// netlink dumps, sysctl reads and writes) belongs to that namespace.
//
// A Host can only be made inside a private namespace created by Enter, so it never touches
// the host's network.
type Host struct {
	Name  string
	tid   int
	calls chan func()
	done  chan struct{}
	links []string // lab-side veth names, deleted by Close
	mu    sync.Mutex
}

var hostSeq atomic.Int32

// NewHost creates a new network namespace on a dedicated locked thread, with lo up.
// It returns ErrNotPrivate outside a private lab namespace.
func NewHost(name string) (*Host, error) {
	if !Current().Private {
		return nil, fmt.Errorf("new host %q: %w", name, ErrNotPrivate)
	}
	h := &Host{Name: name, calls: make(chan func()), done: make(chan struct{})}
	ready := make(chan error, 1)
	go func() {
		// This goroutine never calls UnlockOSThread: when it returns, the Go runtime
		// destroys the thread instead of reusing it in the wrong namespace.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			ready <- fmt.Errorf("unshare(CLONE_NEWNET): %w", err)
			return
		}
		if err := LinkUp("lo"); err != nil {
			ready <- err
			return
		}
		h.tid = unix.Gettid()
		ready <- nil
		for {
			select {
			case fn := <-h.calls:
				fn()
			case <-h.done:
				return
			}
		}
	}()
	if err := <-ready; err != nil {
		return nil, fmt.Errorf("new host %q: %w", name, err)
	}
	return h, nil
}

// Do runs fn on the host's thread, in its namespace, and returns fn's error. Goroutines that
// fn starts run in the lab's namespace, not the host's: keep namespace-bound work inside fn.
func (h *Host) Do(fn func() error) error {
	errc := make(chan error, 1)
	select {
	case h.calls <- func() { errc <- fn() }:
	case <-h.done:
		return fmt.Errorf("host %s is closed", h.Name)
	}
	return <-errc
}

// NetnsPath is a path that refers to the host's namespace while it exists (for `ip ... netns`).
func (h *Host) NetnsPath() string {
	return fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), h.tid)
}

// Close deletes the host's veth pairs and ends its thread; the kernel frees the namespace and
// its sockets once nothing refers to them. The links are deleted here, synchronously, because
// the kernel tears a namespace down asynchronously: a lingering veth with the same subnet
// would otherwise capture the next lab's traffic.
func (h *Host) Close() {
	h.mu.Lock()
	links := h.links
	h.links = nil
	h.mu.Unlock()
	for _, l := range links {
		_ = ip("link", "del", l) // deleting one end of a veth pair deletes both
	}
	select {
	case <-h.done:
	default:
		close(h.done)
	}
}

// Link describes one veth pair between the lab namespace and a Host.
type Link struct {
	LocalIf, PeerIf     string
	LocalAddr, PeerAddr netip.Prefix
}

// Connect joins the lab namespace (the calling process's) and h with a veth pair, assigns the
// two addresses (same subnet, e.g. 192.0.2.1/24 and 192.0.2.2/24 — TEST-NET-1, never routed)
// and brings both ends up. It uses ip(8) from iproute2.
func (h *Host) Connect(localAddr, peerAddr netip.Prefix) (Link, error) {
	if !Current().Private {
		return Link{}, ErrNotPrivate
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return Link{}, errors.New("veth needs ip(8) from iproute2, which is not installed")
	}
	// The commands below run as child processes forked from a thread of the lab namespace;
	// the peer end is moved into h's namespace by path. Names are numbered per process, and
	// another process in the same namespace (a test and the demo it runs) may hold a number
	// already: then the next one is tried, so names stay short and readable (vlab1, vpeer1).
	l := Link{LocalAddr: localAddr, PeerAddr: peerAddr}
	for attempt := 0; ; attempt++ {
		n := hostSeq.Add(1)
		l.LocalIf, l.PeerIf = fmt.Sprintf("vlab%d", n), fmt.Sprintf("vpeer%d", n)
		err := ip("link", "add", l.LocalIf, "type", "veth", "peer", "name", l.PeerIf, "netns", h.NetnsPath())
		if err == nil {
			break
		}
		if !strings.Contains(err.Error(), "File exists") || attempt == 63 {
			return Link{}, err
		}
	}
	h.mu.Lock()
	h.links = append(h.links, l.LocalIf)
	h.mu.Unlock()
	for _, args := range [][]string{
		{"addr", "add", localAddr.String(), "dev", l.LocalIf},
		{"link", "set", l.LocalIf, "up"},
	} {
		if err := ip(args...); err != nil {
			return Link{}, err
		}
	}
	err := h.Do(func() error {
		// Forked from h's locked thread, so ip runs in h's namespace.
		if err := ip("addr", "add", peerAddr.String(), "dev", l.PeerIf); err != nil {
			return err
		}
		return ip("link", "set", l.PeerIf, "up")
	})
	return l, err
}

func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
