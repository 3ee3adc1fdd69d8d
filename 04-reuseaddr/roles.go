//go:build linux

package main

import (
	"fmt"
	"io"
	"net/netip"

	"golang.org/x/sys/unix"

	"socklab/internal/lab"
	"socklab/internal/sockdiag"
)

// Roles for a two-terminal lab, run in the caller's own network so that `ss -tan state
// time-wait` in a third terminal sees them:
//
//	go run ./04-reuseaddr server -addr 127.0.0.1:9000          # terminal 1
//	go run ./04-reuseaddr client -addr 127.0.0.1:9000          # terminal 2
//	go run ./04-reuseaddr server -addr 127.0.0.1:9000          # terminal 1 again: EADDRINUSE
//	go run ./04-reuseaddr server -addr 127.0.0.1:9000 -reuseaddr   # both runs need it

// greeting is what the server sends before it closes each connection.
const greeting = "hello from the server; it closes first, so the TIME_WAIT will be on its side\n"

// runServer listens on -addr, and for each of -count connections sends a greeting and closes
// first (the active close that leaves TIME_WAIT on the server's port), then exits.
func runServer(args []string, stdout, stderr io.Writer) error {
	fs := lab.NewFlagSet("server", stderr)
	addrFlag := fs.String("addr", "127.0.0.1:9000", "address to listen on (IP:PORT; port 0 = any)")
	reuseAddr := fs.Bool("reuseaddr", false, "set SO_REUSEADDR before bind")
	reusePort := fs.Bool("reuseport", false, "set SO_REUSEPORT before bind (run several servers)")
	count := fs.Int("count", 1, "connections to serve before exiting (0 = until interrupted)")
	if err := lab.ParseFlags(fs, args); err != nil {
		return err
	}
	addr, err := lab.ParseAddrPort("addr", *addrFlag)
	if err != nil {
		return err
	}
	if *count < 0 {
		return lab.Usagef("-count %d: want 0 (forever) or more", *count)
	}
	n := lab.NewNarrator(stdout, false)
	l := openListener(n, addr, *reuseAddr, *reusePort)
	if !l.OK() {
		return fmt.Errorf("%s %v: %w", l.Call, addr, l.Err)
	}
	defer closeFD(n, l.FD)
	fmt.Fprintf(stdout, "listening on %v (SO_REUSEADDR=%v SO_REUSEPORT=%v)\n", l.Addr, *reuseAddr, *reusePort)
	for served := 0; *count == 0 || served < *count; served++ {
		fd, peer, err := acceptBlocking(l.FD)
		if n.Sys(fd, err, "accept4(%d, ...)", l.FD) != nil {
			return fmt.Errorf("accept: %w", err)
		}
		n.Result("%s", lab.Sockaddr(lab.SockaddrOf(peer)))
		wrote, err := unix.Write(fd, []byte(greeting))
		n.Sys(wrote, err, "write(%d, %q..., %d)", fd, greeting[:10], len(greeting))
		closeFD(n, fd)
		n.Kernel(sockdiag.Filter{Port: l.Addr.Port()})
	}
	n.Say("Exiting. Restart at once on %v: without -reuseaddr (on both runs) bind() fails "+
		"while the TIME_WAIT above lives (60 s). Watch it: ss -tan state time-wait", l.Addr)
	return nil
}

// acceptBlocking is accept4 on a blocking listener, retried when a signal interrupts it.
func acceptBlocking(lfd int) (int, netip.AddrPort, error) {
	for {
		fd, sa, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC)
		if err == unix.EINTR {
			continue
		}
		return fd, lab.AddrPortOf(sa), err
	}
}

// runClient connects to -addr -count times, reads until the server closes, then closes.
func runClient(args []string, stdout, stderr io.Writer) error {
	fs := lab.NewFlagSet("client", stderr)
	addrFlag := fs.String("addr", "127.0.0.1:9000", "server address (IP:PORT)")
	count := fs.Int("count", 1, "connections to make, one after another")
	if err := lab.ParseFlags(fs, args); err != nil {
		return err
	}
	addr, err := lab.ParseDialAddr("addr", *addrFlag)
	if err != nil {
		return err
	}
	if *count < 1 {
		return lab.Usagef("-count %d: want 1 or more", *count)
	}
	n := lab.NewNarrator(stdout, false)
	for range *count {
		fd, local, err := dial(n, addr)
		if err != nil {
			return err
		}
		total, err := readToEOF(n, fd)
		if err != nil {
			unix.Close(fd)
			return err
		}
		closeFD(n, fd)
		fmt.Fprintf(stdout, "received %d bytes from %v on local port %d\n", total, addr, local.Port())
	}
	n.Kernel(sockdiag.Filter{Port: addr.Port()})
	return nil
}

// readToEOF reads until read() returns 0 (the peer's FIN), printing the first and last call.
func readToEOF(n *lab.Narrator, fd int) (int, error) {
	buf := make([]byte, 4096)
	total := 0
	for {
		got, err := unix.Read(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if got <= 0 || err != nil {
			n.Sys(got, err, "read(%d, ...)", fd)
		} else {
			n.Sys(got, nil, "read(%d, %q..., 4096)", fd, buf[:min(got, 10)])
		}
		if err != nil {
			return total, fmt.Errorf("read: %w", err)
		}
		if got == 0 {
			return total, nil
		}
		total += got
	}
}
