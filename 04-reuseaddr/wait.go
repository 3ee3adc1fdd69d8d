//go:build linux

package main

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"socklab/internal/lab"
	"socklab/internal/sockdiag"
)

// awaitState waits until sock_diag lists the socket with exactly this 4-tuple in state want.
func awaitState(local, remote netip.AddrPort, want sockdiag.State) (sockdiag.Socket, error) {
	var got sockdiag.Socket
	var found bool
	var dumpErr error
	ok := lab.Poll(waitLimit, func() bool {
		got, found, dumpErr = sockdiag.Find(local, remote)
		return dumpErr == nil && found && got.State == want
	})
	if !ok {
		last := "no such socket"
		if dumpErr != nil {
			last = dumpErr.Error()
		} else if found {
			last = got.String()
		}
		return got, fmt.Errorf("%v → %v did not reach %v within %v (last seen: %s; sockets on these ports: %s)",
			local, remote, want, waitLimit, last, describePorts(local.Port(), remote.Port()))
	}
	return got, nil
}

// awaitGone waits until the kernel has no socket with this 4-tuple.
func awaitGone(local, remote netip.AddrPort) error {
	if lab.Poll(waitLimit, func() bool {
		_, found, err := sockdiag.Find(local, remote)
		return err == nil && !found
	}) {
		return nil
	}
	return fmt.Errorf("%v → %v still listed after %v", local, remote, waitLimit)
}

// waitReadable waits with poll(2) until fd is readable (a listener: a connection is queued).
func waitReadable(fd int, timeout time.Duration) error {
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	deadline := time.Now().Add(timeout)
	for {
		ms := int(time.Until(deadline).Milliseconds())
		if ms < 0 {
			return errors.New("nothing arrived within " + timeout.String())
		}
		n, err := unix.Poll(fds, ms+1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("poll: %w", err)
		}
		if n > 0 {
			return nil
		}
	}
}

// describePorts lists every TCP socket on the given ports, for error messages that must say
// what the kernel had instead of the state awaited.
func describePorts(ports ...uint16) string {
	socks, err := sockdiag.Dump(sockdiag.TCP, sockdiag.Filter{Ports: ports})
	if err != nil {
		return err.Error()
	}
	if len(socks) == 0 {
		return "none"
	}
	var parts []string
	for _, s := range socks {
		parts = append(parts, s.String())
	}
	return strings.Join(parts, "; ")
}
