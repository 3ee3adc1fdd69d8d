//go:build linux

package main

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"golang.org/x/sys/unix"

	"socklab/internal/lab"
)

// roleSend connects to a recv role and sends one file with the chosen method:
//
//	go run ./07-sendfile-splice send -addr 127.0.0.1:9000 -file /etc/services -method splice
func roleSend(args []string, stdout, stderr io.Writer) error {
	fs := lab.NewFlagSet("send", stderr)
	addrFlag := fs.String("addr", "127.0.0.1:9000", "receiver address IP:PORT")
	path := fs.String("file", "", "file to send (required)")
	method := fs.String("method", "sendfile", "one of "+methodList())
	buf := fs.Int("buf", 64<<10, "readwrite: buffer size in bytes")
	pipe := fs.Int("pipe", 0, "splice: pipe size in bytes for F_SETPIPE_SZ (0 = default 64 KiB)")
	offset := fs.Int64("offset", 0, "first byte of the file to send")
	length := fs.Int64("length", -1, "bytes to send (-1 = to the end)")
	nonblock := fs.Bool("nonblock", false, "O_NONBLOCK socket: loop on EAGAIN with poll(2)")
	cc := fs.String("cc", "", "TCP congestion control for the socket, e.g. cubic or bbr (\"\" = the system's default)")
	if err := lab.ParseFlags(fs, args); err != nil {
		return err
	}
	m, ok := ParseMethod(*method)
	switch {
	case !ok:
		return lab.Usagef("-method %q: want one of %s", *method, methodList())
	case *path == "":
		return lab.Usagef("-file is required (the file to send)")
	case *buf <= 0 || *buf > 1<<30:
		return lab.Usagef("-buf %d: want 1..1073741824 bytes", *buf)
	case *pipe < 0 || *pipe > 1<<30:
		return lab.Usagef("-pipe %d: want 0 (default) or a size up to /proc/sys/fs/pipe-max-size", *pipe)
	case *offset < 0:
		return lab.Usagef("-offset %d: want ≥ 0", *offset)
	case *length < -1:
		return lab.Usagef("-length %d: want ≥ 0, or -1 for the rest of the file", *length)
	}
	addr, err := lab.ParseDialAddr("addr", *addrFlag)
	if err != nil {
		return err
	}
	// A missing or unreadable file is reported before any connection is made, so the
	// receiver in the other terminal is not left with an empty transfer.
	if err := checkSendable(*path, *offset, *length); err != nil {
		return err
	}
	n := lab.NewNarrator(stdout, false)
	fd, err := unix.Socket(afOf(addr.Addr().Is4()), unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	closed := false
	defer func() {
		if !closed {
			unix.Close(fd)
		}
	}()
	sa := lab.SockaddrOf(addr)
	if err := n.Sys(0, unix.Connect(fd, sa), "connect(%d, %s)", fd, lab.Sockaddr(sa)); err != nil {
		return fmt.Errorf("connect %v: %w", addr, err)
	}
	rep, err := Send(fd, SendOptions{Method: m, Path: *path, Offset: *offset, Length: *length,
		Buf: *buf, Pipe: *pipe, NonBlock: *nonblock, CPU: -1, Congestion: *cc})
	if rep != nil {
		rep.Calls.print(n)
		printSendSummary(n, rep)
	}
	if err != nil {
		return err
	}
	closed = true // close(2) sends our FIN: the receiver's read returns 0
	return n.Sys(0, unix.Close(fd), "close(%d)", fd)
}

// checkSendable opens path as Send will and checks it is a regular file holding the window
// [offset, offset+length) (length -1: to the end).
func checkSendable(path string, offset, length int64) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return openError(path, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("fstat %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("%s is not a regular file (sendfile, splice and mmap need a file with a page cache)", path)
	}
	if length < 0 {
		length = st.Size - offset
	}
	if length < 0 || offset+length > st.Size {
		return fmt.Errorf("window %d+%d is outside %s, which has %d bytes (hint: check -offset and -length)", offset, length, path, st.Size)
	}
	return nil
}

func printSendSummary(n *lab.Narrator, r *SendReport) {
	n.Result("%s: sent %d of %d bytes in %.3f s (%.0f MB/s), CPU user %v sys %v",
		r.Method, r.Sent, r.Want, r.Elapsed.Seconds(), mbps(r.Sent, r.Elapsed), r.CPU.User, r.CPU.Sys)
	if r.Method == IOCopy {
		n.Result("calls: made inside the Go runtime (kernel: syscr %s, syscw %s)", ioText(r.IO.SyscR, r.IOOK), ioText(r.IO.SyscW, r.IOOK))
	} else {
		n.Result("calls: %d (%s); kernel: syscr %s, syscw %s", r.Calls.Total(), r.Calls.Summary(), ioText(r.IO.SyscR, r.IOOK), ioText(r.IO.SyscW, r.IOOK))
	}
	n.Result("file bytes through our memory: %d (kernel rchar %s)", r.UserBytes, ioText(r.IO.RChar, r.IOOK))
	if r.PipeSize > 0 {
		n.Result("pipe size (F_GETPIPE_SZ): %d", r.PipeSize)
	}
	if r.Congestion != "" {
		n.Result("congestion control (getsockopt TCP_CONGESTION): %s", r.Congestion)
	}
}

func afOf(is4 bool) int {
	if is4 {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

func methodList() string {
	var names []string
	for _, m := range Methods {
		names = append(names, string(m))
	}
	return strings.Join(names, ", ")
}

// roleRecv listens and receives -n transfers, printing bytes and SHA-256 of each:
//
//	go run ./07-sendfile-splice recv -addr 127.0.0.1:9000 -out /tmp/got.bin -method splice
func roleRecv(args []string, stdout, stderr io.Writer) error {
	fs := lab.NewFlagSet("recv", stderr)
	addrFlag := fs.String("addr", "127.0.0.1:9000", "address to listen on IP:PORT")
	out := fs.String("out", "", "file to write the body to (default: nowhere for read, /dev/null for splice)")
	method := fs.String("method", RecvRead, "read (into a buffer, hashed) or splice (socket → pipe → -out)")
	buf := fs.Int("buf", 256<<10, "read: buffer size in bytes")
	pipe := fs.Int("pipe", 0, "splice: pipe size for F_SETPIPE_SZ (0 = default)")
	count := fs.Int("n", 1, "transfers to receive before exiting")
	if err := lab.ParseFlags(fs, args); err != nil {
		return err
	}
	switch {
	case *method != RecvRead && *method != RecvSplice:
		return lab.Usagef("-method %q: want read or splice", *method)
	case *buf <= 0 || *buf > 1<<30:
		return lab.Usagef("-buf %d: want 1..1073741824 bytes", *buf)
	case *pipe < 0 || *pipe > 1<<30:
		return lab.Usagef("-pipe %d: want 0 or a size up to /proc/sys/fs/pipe-max-size", *pipe)
	case *count < 1 || *count > 1_000_000:
		return lab.Usagef("-n %d: want 1..1000000", *count)
	}
	addr, err := lab.ParseAddrPort("addr", *addrFlag)
	if err != nil {
		return err
	}
	// An -out that cannot be written is reported now, not after a sender has connected.
	if *out != "" {
		fd, err := unix.Open(*out, unix.O_WRONLY|unix.O_CREAT|unix.O_CLOEXEC, 0o644)
		if errors.Is(err, unix.EACCES) {
			// Not wrapped: the shared hint for EACCES is about ports, not files.
			return fmt.Errorf("open -out %s: permission denied (hint: choose an -out you can write)", *out)
		}
		if err != nil {
			return fmt.Errorf("open -out %s: %w", *out, err)
		}
		unix.Close(fd)
	}
	n := lab.NewNarrator(stdout, false)
	lfd, err := unix.Socket(afOf(addr.Addr().Is4()), unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(lfd)
	sa := lab.SockaddrOf(addr)
	if err := n.Sys(0, unix.Bind(lfd, sa), "bind(%d, %s)", lfd, lab.Sockaddr(sa)); err != nil {
		return fmt.Errorf("bind %v: %w", addr, err)
	}
	if err := n.Sys(0, unix.Listen(lfd, 8), "listen(%d, 8)", lfd); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	if got, err := unix.Getsockname(lfd); err == nil {
		n.Result("listening on %v", lab.AddrPortOf(got))
	}
	for i := 0; i < *count; i++ {
		cfd, peer, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC)
		if err == unix.EINTR {
			i--
			continue
		}
		if err := n.Sys(cfd, err, "accept4(%d, %s)", lfd, lab.Sockaddr(peer)); err != nil {
			return fmt.Errorf("accept: %w", err)
		}
		rep, err := Receive(cfd, RecvOptions{Method: *method, Buf: *buf, Pipe: *pipe, Out: *out, CPU: -1})
		unix.Close(cfd)
		if rep != nil {
			n.Result("received %d of %d announced bytes in %.3f s, CPU user %v sys %v, %d calls (%s)",
				rep.Got, rep.Want, rep.Elapsed.Seconds(), rep.CPU.User, rep.CPU.Sys, rep.Calls.Total(), rep.Calls.Summary())
			if rep.Sum != nil {
				n.Result("sha256 %x", rep.Sum)
			} else {
				n.Result("sha256 not computed: the bytes were spliced to /dev/null and never seen")
			}
		}
		if err != nil {
			return err
		}
	}
	return nil
}
