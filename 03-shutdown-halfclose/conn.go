//go:build linux

package main

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"

	"socklab/internal/lab"
	"socklab/internal/sockdiag"
)

// conn is one TCP connection whose two ends this process holds at once: the lab plays client
// and server so that it can show the kernel's view of both ends after every step. Setting it
// up is chapter 01's lesson, so those calls are printed only with -v; the closing calls this
// chapter is about are printed always, in main.go.
type conn struct {
	client, server         int // file descriptors; -1 once this lab closed them
	clientAddr, serverAddr netip.AddrPort
}

// smallBuffers is the SO_RCVBUF/SO_SNDBUF the zero-window parts (B, C) ask for: the kernel
// doubles it (socket(7)), so a few KiB of unread data close the window and keep a FIN queued
// behind data that cannot be sent.
const smallBuffers = 4096

// safetyTimeout bounds every blocking read and write of the demo (SO_RCVTIMEO/SO_SNDTIMEO):
// a lab that goes wrong fails with EAGAIN instead of hanging. It never triggers when the
// lesson works, because every blocking call is made only when the kernel has what it waits for.
const safetyTimeout = 5 * time.Second

// connect opens a listener on 127.0.0.1 (port 0: the kernel picks), connects a client,
// accepts, and closes the listener so the kernel tables show just the two ends.
// bufSize > 0 sets SO_RCVBUF and SO_SNDBUF on both ends before the handshake, because the
// window scale is fixed during the handshake (tcp(7)).
func connect(d *lab.Demo, bufSize int) (c *conn, err error) {
	return connectWatched(d, bufSize, nil)
}

// connectWatched is connect with a packet view: view.start runs after listen() and before
// connect(), so the capture records the handshake too (a nil view records nothing).
func connectWatched(d *lab.Demo, bufSize int, view *packetView) (c *conn, err error) {
	c = &conn{client: -1, server: -1}
	lfd := -1
	defer func() {
		if lfd >= 0 {
			unix.Close(lfd)
		}
		if err != nil {
			c.closeAll()
		}
	}()
	sys := func(ret int, err error, format string, args ...any) error {
		if bufSize > 0 { // the buffer sizes are part of parts B and C: show the whole setup
			return d.Sys(ret, err, format, args...)
		}
		d.Detail("  "+format+" = %s", append(args, lab.Ret(ret, err))...)
		return err
	}
	setBuffers := func(fd int) error {
		if bufSize == 0 {
			return nil
		}
		for _, opt := range []struct {
			name string
			opt  int
		}{{"SO_RCVBUF", unix.SO_RCVBUF}, {"SO_SNDBUF", unix.SO_SNDBUF}} {
			err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, opt.opt, bufSize)
			if err := sys(0, err, "setsockopt(%d, SOL_SOCKET, %s, [%d], 4)", fd, opt.name, bufSize); err != nil {
				return err
			}
		}
		return nil
	}

	lfd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err := sys(lfd, err, "socket(AF_INET, SOCK_STREAM|SOCK_CLOEXEC, 0)"); err != nil {
		return nil, err
	}
	if err := setBuffers(lfd); err != nil { // an accepted socket inherits the listener's buffers
		return nil, err
	}
	loopback := &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}
	if err := sys(0, unix.Bind(lfd, loopback), "bind(%d, %s)", lfd, lab.Sockaddr(loopback)); err != nil {
		return nil, err
	}
	if err := sys(0, unix.Listen(lfd, 1), "listen(%d, 1)", lfd); err != nil {
		return nil, err
	}
	sa, err := unix.Getsockname(lfd)
	if err != nil {
		return nil, fmt.Errorf("getsockname: %w", err)
	}
	c.serverAddr = lab.AddrPortOf(sa)
	view.start(c.serverAddr.Port())

	c.client, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err := sys(c.client, err, "socket(AF_INET, SOCK_STREAM|SOCK_CLOEXEC, 0)"); err != nil {
		return nil, err
	}
	if err := setBuffers(c.client); err != nil {
		return nil, err
	}
	if err := sys(0, unix.Connect(c.client, sa), "connect(%d, %s)", c.client, lab.Sockaddr(sa)); err != nil {
		return nil, err
	}
	csa, err := unix.Getsockname(c.client)
	if err != nil {
		return nil, fmt.Errorf("getsockname: %w", err)
	}
	c.clientAddr = lab.AddrPortOf(csa)
	// connect() has returned, so the handshake is complete and the connection waits in the
	// accept queue: this accept does not block.
	c.server, _, err = unix.Accept4(lfd, unix.SOCK_CLOEXEC)
	if err := sys(c.server, err, "accept4(%d, ..., SOCK_CLOEXEC)", lfd); err != nil {
		return nil, err
	}
	err = unix.Close(lfd)
	sys(0, err, "close(%d)", lfd)
	lfd = -1
	if err != nil {
		return nil, err
	}
	for _, fd := range []int{c.client, c.server} {
		tv := unix.NsecToTimeval(safetyTimeout.Nanoseconds())
		if err := errors.Join(
			unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv),
			unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)); err != nil {
			return nil, fmt.Errorf("setsockopt SO_RCVTIMEO/SO_SNDTIMEO: %w", err)
		}
	}
	d.Say("client %v = fd %d, server %v = fd %d", c.clientAddr, c.client, c.serverAddr, c.server)
	return c, nil
}

// filter selects both ends of the connection (and nothing else) in a kernel table.
func (c *conn) filter() sockdiag.Filter {
	return sockdiag.Filter{Ports: []uint16{c.clientAddr.Port()}, Port: c.serverAddr.Port()}
}

// closeAll closes whatever fds the lab has not closed yet (on error paths and at the end of a
// part), so no part leaks a descriptor.
func (c *conn) closeAll() {
	for _, fd := range []*int{&c.client, &c.server} {
		if *fd >= 0 {
			unix.Close(*fd)
			*fd = -1
		}
	}
}

// closeClient and closeServer are close(2) on one end, narrated.
func (c *conn) closeClient(d *lab.Demo) error { return closeFD(d, &c.client) }
func (c *conn) closeServer(d *lab.Demo) error { return closeFD(d, &c.server) }

func closeFD(d *lab.Demo, fd *int) error {
	err := unix.Close(*fd)
	d.Sys(0, err, "close(%d)", *fd)
	*fd = -1
	return err
}
