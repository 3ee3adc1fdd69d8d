//go:build linux

package main

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"

	"golang.org/x/sys/unix"

	"socklab/internal/lab"
)

// The client waits on two things at once — its input and the socket — with one select
// (UNP §6.4 and §6.7, str_cli with select and shutdown):
//
//	socket → connect → loop: select(stdin?, sock; sock if output pending)
//	  stdin readable  → read; 0 means EOF → shutdown(sock, SHUT_WR) (half-close 半关闭)
//	  sock writable   → write what is pending
//	  sock readable   → read → print; 0 after our SHUT_WR means the server is done → exit 0
//
// Blocking writes would deadlock on large input: a client blocked in write() does not read,
// the server's buffer for it fills, the server stops reading it, and both wait for ever. So the
// socket is non-blocking and stdin is read only when everything read before was sent.

// runClientRole is the client role: flags, then the loop on stdin and stdout.
func runClientRole(args []string, stdout, stderr io.Writer) error {
	fs := lab.NewFlagSet("client", stdout)
	addrFlag := fs.String("addr", "127.0.0.1:9000", "echo server to connect to (IP:PORT)")
	trace := fs.Bool("trace", false, "print every system call on stderr")
	if err := lab.ParseFlags(fs, args); err != nil {
		return err
	}
	addr, err := lab.ParseDialAddr("addr", *addrFlag)
	if err != nil {
		return err
	}
	n := lab.Quiet()
	if *trace {
		n = lab.NewNarrator(stderr, false)
	}
	return runClient(n, addr, int(os.Stdin.Fd()), stdout)
}

// runClient copies input fd in to the server at addr and everything the server sends to out,
// until the server closes after our half-close.
func runClient(n *lab.Narrator, addr netip.AddrPort, in int, out io.Writer) error {
	family := unix.AF_INET
	if addr.Addr().Is6() {
		family = unix.AF_INET6
	}
	sock, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err := n.Sys(sock, err, "socket(%s, SOCK_STREAM|SOCK_CLOEXEC, 0)", familyName(family)); err != nil {
		return err
	}
	defer unix.Close(sock)
	sa := lab.SockaddrOf(addr)
	err = unix.Connect(sock, sa)
	if err := n.Sys(0, err, "connect(%d, %s)", sock, lab.Sockaddr(sa)); err != nil {
		return fmt.Errorf("connect %v: %w", addr, err)
	}
	if err := unix.SetNonblock(sock, true); err != nil {
		return err
	}
	if in >= unix.FD_SETSIZE || sock >= unix.FD_SETSIZE {
		return fmt.Errorf("fd %d or %d ≥ FD_SETSIZE (%d): select cannot watch it", in, sock, unix.FD_SETSIZE)
	}

	inBuf := make([]byte, defaultMaxLine)
	var pending []byte // read from input, not yet taken by the kernel
	sockBuf := make([]byte, 64*1024)
	inEOF := false
	for {
		var rset, wset unix.FdSet
		rset.Zero()
		wset.Zero()
		if !inEOF && len(pending) == 0 {
			rset.Set(in)
		}
		rset.Set(sock)
		if len(pending) > 0 {
			wset.Set(sock)
		}
		maxfd := max(in, sock)
		nready, err := unix.Select(maxfd+1, &rset, &wset, nil, nil)
		n.Sys(nready, err, "select(%d, %s, %s, NULL, NULL)", maxfd+1, fdSetString(&rset, maxfd), fdSetString(&wset, maxfd))
		if errors.Is(err, unix.EINTR) {
			continue // never restarted automatically (signal(7))
		}
		if err != nil {
			return err
		}

		if rset.IsSet(in) && !inEOF {
			k, err := unix.Read(in, inBuf)
			n.Sys(k, err, "read(%d, %s, %d)", in, quote(inBuf, k), len(inBuf))
			switch {
			case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EINTR):
			case err != nil:
				return fmt.Errorf("read input: %w", err)
			case k == 0:
				// End of input: send FIN but keep reading — echoes may still be on the way.
				inEOF = true
				err := unix.Shutdown(sock, unix.SHUT_WR)
				if err := n.Sys(0, err, "shutdown(%d, SHUT_WR)", sock); err != nil {
					return err
				}
			default:
				pending = inBuf[:k]
				wset.Set(sock) // try at once; the kernel usually takes it all
			}
		}
		if wset.IsSet(sock) && len(pending) > 0 {
			k, err := unix.Write(sock, pending)
			n.Sys(k, err, "write(%d, %s, %d)", sock, quote(pending, k), len(pending))
			switch {
			case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EINTR):
			case err != nil:
				return fmt.Errorf("send to %v: %w", addr, err)
			default:
				pending = pending[k:]
			}
		}
		if rset.IsSet(sock) {
			k, err := unix.Read(sock, sockBuf)
			n.Sys(k, err, "read(%d, %s, %d)", sock, quote(sockBuf, k), len(sockBuf))
			switch {
			case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EINTR):
			case err != nil:
				return fmt.Errorf("receive from %v: %w", addr, err)
			case k == 0 && inEOF:
				return nil // the server echoed everything and closed: done
			case k == 0:
				return fmt.Errorf("the server %v closed the connection before the input ended (server terminated prematurely)", addr)
			default:
				if _, err := out.Write(sockBuf[:k]); err != nil {
					return err
				}
			}
		}
	}
}
