//go:build linux

package main

import (
	"fmt"
	"io"

	"golang.org/x/sys/unix"

	"socklab/internal/lab"
)

// runServer is the `server` role: a one-connection-at-a-time TCP server for two-terminal
// labs. By default it echoes; with -sort it reads until the client's FIN (read() = 0) and
// only then answers with the sorted lines — an answer that cannot start before the client
// has half-closed. Either way it closes after the client's FIN, so while it answers,
// `ss -tan` shows the client in FIN_WAIT2 and the server in CLOSE_WAIT.
func runServer(args []string, stdout, stderr io.Writer) error {
	fs := lab.NewFlagSet("server", stderr)
	addrFlag := fs.String("addr", "127.0.0.1:9000", "address to listen on, IP:PORT (port 0: any free port)")
	sortMode := fs.Bool("sort", false, "read until the client's FIN, then answer with the sorted lines")
	count := fs.Int("count", 0, "serve this many connections, then exit (0: until interrupted)")
	if err := lab.ParseFlags(fs, args); err != nil {
		return err
	}
	addr, err := lab.ParseAddrPort("addr", *addrFlag)
	if err != nil {
		return err
	}
	if *count < 0 {
		return lab.Usagef("-count %d: want 0 (serve forever) or more", *count)
	}
	n := lab.NewNarrator(stdout, false)

	family := unix.AF_INET
	if addr.Addr().Is6() {
		family = unix.AF_INET6
	}
	lfd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err := n.Sys(lfd, err, "socket(%s, SOCK_STREAM|SOCK_CLOEXEC, 0)", familyName(family)); err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(lfd)
	sa := lab.SockaddrOf(addr)
	if err := n.Sys(0, unix.Bind(lfd, sa), "bind(%d, %s)", lfd, lab.Sockaddr(sa)); err != nil {
		return fmt.Errorf("bind %v: %w", addr, err)
	}
	if err := n.Sys(0, unix.Listen(lfd, 16), "listen(%d, 16)", lfd); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	bound, err := unix.Getsockname(lfd)
	if err != nil {
		return fmt.Errorf("getsockname: %w", err)
	}
	mode := "echo"
	if *sortMode {
		mode = "sort (answers after your EOF)"
	}
	// Tests read this line to learn the port when -addr has port 0.
	n.Say("listening on %v, mode %s; try: go run ./03-shutdown-halfclose client -addr %v",
		lab.AddrPortOf(bound), mode, lab.AddrPortOf(bound))

	for served := 0; *count == 0 || served < *count; served++ {
		cfd, peer, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC)
		if err == unix.EINTR || err == unix.ECONNABORTED {
			served--
			continue
		}
		if err := n.Sys(cfd, err, "accept4(%d, ..., SOCK_CLOEXEC)", lfd); err != nil {
			return fmt.Errorf("accept: %w", err)
		}
		n.Result("client %v", lab.AddrPortOf(peer))
		err = serve(n, cfd, *sortMode)
		n.Sys(0, unix.Close(cfd), "close(%d)", cfd)
		if err != nil {
			// One client's failure (say, a reset) does not stop the server.
			n.Say("connection ended with an error: %v", err)
		}
	}
	return nil
}

// serve talks to one client until its FIN. Echo mode writes back each read as it comes;
// sort mode keeps everything until read() returns 0, then writes the sorted lines.
func serve(n *lab.Narrator, fd int, sortMode bool) error {
	buf := make([]byte, 4096)
	var all []byte
	for {
		r, err := unix.Read(fd, buf)
		n.Sys(r, err, "read(%d, %s, %d)", fd, quoteRead(buf, r), len(buf))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if r == 0 {
			n.Say("read() = 0: the client's FIN. We are in CLOSE_WAIT and may still send.")
			break
		}
		if sortMode {
			all = append(all, buf[:r]...)
			continue
		}
		if err := writeAll(n, fd, buf[:r]); err != nil {
			return err
		}
	}
	if sortMode {
		return writeAll(n, fd, sortLines(all))
	}
	return nil
}

// writeAll writes p completely (a stream socket may take less per call), with MSG_NOSIGNAL
// so a vanished peer gives EPIPE instead of a signal.
func writeAll(n *lab.Narrator, fd int, p []byte) error {
	for len(p) > 0 {
		w, err := unix.SendmsgN(fd, p, nil, nil, unix.MSG_NOSIGNAL)
		n.Sys(w, err, "send(%d, %q, %d, MSG_NOSIGNAL)", fd, p, len(p))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		p = p[w:]
	}
	return nil
}

func familyName(family int) string {
	if family == unix.AF_INET6 {
		return "AF_INET6"
	}
	return "AF_INET"
}
