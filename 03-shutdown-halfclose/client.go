//go:build linux

package main

import (
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"

	"socklab/internal/lab"
)

// runClient is the `client` role: it copies standard input to the server; at end of input
// (Ctrl-D on a terminal) it calls shutdown(SHUT_WR) — a half-close — and keeps printing what
// the server sends until the server's FIN. The reply goes to stdout, the narrated system
// calls to stderr, so `printf 'b\na\n' | client -addr ... > out` captures just the reply.
//
// It waits on both stdin and the socket with poll(2), as a select-based client does
// (chapter 02), so an echo comes back while you type.
func runClient(args []string, stdout, stderr io.Writer) error {
	fs := lab.NewFlagSet("client", stderr)
	addrFlag := fs.String("addr", "127.0.0.1:9000", "server address, IP:PORT")
	if err := lab.ParseFlags(fs, args); err != nil {
		return err
	}
	addr, err := lab.ParseDialAddr("addr", *addrFlag)
	if err != nil {
		return err
	}
	n := lab.NewNarrator(stderr, false)

	family := unix.AF_INET
	if addr.Addr().Is6() {
		family = unix.AF_INET6
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err := n.Sys(fd, err, "socket(%s, SOCK_STREAM|SOCK_CLOEXEC, 0)", familyName(family)); err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	defer func() {
		if fd >= 0 {
			unix.Close(fd)
		}
	}()
	sa := lab.SockaddrOf(addr)
	if err := n.Sys(0, unix.Connect(fd, sa), "connect(%d, %s)", fd, lab.Sockaddr(sa)); err != nil {
		return fmt.Errorf("connect %v: %w", addr, err)
	}
	if local, err := unix.Getsockname(fd); err == nil {
		// So you can find this end in `ss -tan` (and tests can match the full 4-tuple).
		n.Result("getsockname(%d) = %s", fd, lab.Sockaddr(local))
	}

	stdin := int(os.Stdin.Fd())
	fds := []unix.PollFd{{Fd: int32(stdin), Events: unix.POLLIN}, {Fd: int32(fd), Events: unix.POLLIN}}
	buf := make([]byte, 4096)
	for {
		if _, err := unix.Poll(fds, -1); err != nil {
			if err == unix.EINTR {
				continue
			}
			return fmt.Errorf("poll: %w", err)
		}
		if fds[0].Revents != 0 { // input, end of input, or an error on stdin
			r, err := unix.Read(stdin, buf)
			if err == unix.EINTR || err == unix.EAGAIN {
				continue
			}
			if err != nil {
				return fmt.Errorf("read stdin: %w", err)
			}
			if r == 0 {
				// End of input: send our FIN but keep the receiving half open for the answer.
				if err := n.Sys(0, unix.Shutdown(fd, unix.SHUT_WR), "shutdown(%d, SHUT_WR)", fd); err != nil {
					return fmt.Errorf("shutdown: %w", err)
				}
				n.Say("half-closed: we are in FIN_WAIT2 and still read what the server sends")
				fds[0].Fd = -1 // poll(2) ignores negative fds: stop watching stdin
			} else if err := writeAll(n, fd, buf[:r]); err != nil {
				return fmt.Errorf("send: %w", err)
			}
		}
		if fds[1].Revents != 0 {
			r, err := unix.Read(fd, buf)
			n.Sys(r, err, "read(%d, %s, %d)", fd, quoteRead(buf, r), len(buf))
			if err == unix.EINTR || err == unix.EAGAIN {
				continue
			}
			if err != nil {
				return fmt.Errorf("read: %w", err)
			}
			if r == 0 {
				n.Say("read() = 0: the server's FIN; closing (our end goes to TIME_WAIT)")
				err := n.Sys(0, unix.Close(fd), "close(%d)", fd)
				fd = -1
				return err
			}
			if _, err := stdout.Write(buf[:r]); err != nil {
				return err
			}
		}
	}
}
