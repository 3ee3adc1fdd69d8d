//go:build linux

package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"socklab/internal/lab"
	"socklab/internal/sockdiag"
)

// The roles run in the caller's own network namespace, so that `ss -tan` and `ss -ltn` in
// another terminal see them. In `ss -ltn`, a LISTEN socket's Recv-Q is the accept queue's
// current length and Send-Q its maximum (the backlog), exactly as in this program's tables.

// maxClients bounds the client role's -n so that a typo cannot exhaust file descriptors.
const maxClients = 1000

// runServerRole: socket → bind → listen, then accept (and read what each client says) or,
// with -accept=false, never accept and report the accept queue as it fills. Ctrl-C ends it.
func runServerRole(args []string, stdout, stderr io.Writer) error {
	fs := lab.NewFlagSet("server", stderr)
	addrFlag := fs.String("addr", "127.0.0.1:9000", "address to listen on, IP:PORT")
	backlog := fs.Int("backlog", 4, "the backlog given to listen(2)")
	doAccept := fs.Bool("accept", true, "accept connections; -accept=false never does, so the accept queue fills")
	if err := lab.ParseFlags(fs, args); err != nil {
		return err
	}
	addr, err := lab.ParseAddrPort("addr", *addrFlag)
	if err != nil {
		return err
	}
	if *backlog < 0 {
		return lab.Usagef("-backlog %d: must be 0 or more (listen(2) would quietly use 0)", *backlog)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	n := lab.NewNarrator(stdout, false)

	q, err := openListener(n, addr, *backlog)
	if err != nil {
		return fmt.Errorf("listen on %v: %w", addr, err)
	}
	defer q.Close()
	fmt.Fprintf(stdout, "listening on %v with backlog %d; Ctrl-C to stop\n", q.Addr, *backlog)
	n.Kernel(sockdiag.Filter{Local: q.Addr, States: []sockdiag.State{sockdiag.Listen}})
	if !*doAccept {
		fmt.Fprintln(stdout, "never calling accept(): watch the accept queue (Recv-Q) fill up")
		last := uint32(0)
		for ctx.Err() == nil {
			if l, err := q.listener(); err == nil && l.RecvQ != last {
				last = l.RecvQ
				fmt.Fprintf(stdout, "accept queue: %d of %d\n", l.RecvQ, l.SendQ)
			}
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond): // how often the queue is looked at
			}
		}
		fmt.Fprintln(stdout, "stopped")
		return nil
	}
	for ctx.Err() == nil {
		// poll(2) with a timeout, so that Ctrl-C is noticed between clients.
		pfd := []unix.PollFd{{Fd: int32(q.lfd), Events: unix.POLLIN}}
		k, err := unix.Poll(pfd, 200)
		if err == unix.EINTR || k == 0 {
			continue
		}
		if err != nil {
			return err
		}
		afd, peer, err := q.acceptOne()
		if err != nil {
			return err
		}
		// Read what the client says, waiting at most a second for it.
		pfd = []unix.PollFd{{Fd: int32(afd), Events: unix.POLLIN}}
		if k, _ := unix.Poll(pfd, 1000); k > 0 {
			buf := make([]byte, 256)
			rn, err := unix.Read(afd, buf)
			n.Sys(rn, err, "read(%d, buf, %d)", afd, len(buf))
			if rn > 0 {
				n.Result("%q from %v", buf[:rn], peer)
			}
		}
		n.Sys(0, unix.Close(afd), "close(%d)", afd)
		q.accepted = q.accepted[:len(q.accepted)-1]
	}
	fmt.Fprintln(stdout, "stopped")
	return nil
}

// runClientRole opens -n connections to -addr, says hello on those that get in, shows the
// kernel's view, and holds them for -hold so that another terminal can look.
func runClientRole(args []string, stdout, stderr io.Writer) error {
	fs := lab.NewFlagSet("client", stderr)
	addrFlag := fs.String("addr", "127.0.0.1:9000", "server address, IP:PORT")
	count := fs.Int("n", 1, fmt.Sprintf("number of connections (1-%d)", maxClients))
	hold := fs.Duration("hold", 30*time.Second, "keep the connections open this long (Ctrl-C ends earlier)")
	if err := lab.ParseFlags(fs, args); err != nil {
		return err
	}
	addr, err := lab.ParseDialAddr("addr", *addrFlag)
	if err != nil {
		return err
	}
	if *count < 1 || *count > maxClients {
		return lab.Usagef("-n %d: want 1 to %d connections", *count, maxClients)
	}
	if *hold < 0 {
		return lab.Usagef("-hold %v: must not be negative", *hold)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	n := lab.NewNarrator(stdout, false)
	family, fam := familyName(addr.Addr())
	sa := lab.SockaddrOf(addr)
	var fds []int
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	for range *count {
		fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err := n.Sys(fd, err, "socket(%s, SOCK_STREAM|SOCK_NONBLOCK, 0)", fam); err != nil {
			return err
		}
		fds = append(fds, fd)
		err = unix.Connect(fd, sa)
		n.Sys(0, err, "connect(%d, %s)", fd, lab.Sockaddr(sa))
		if err != nil && err != unix.EINPROGRESS {
			return fmt.Errorf("connect to %v: %w", addr, err)
		}
	}
	// Handshakes on loopback take microseconds; a client whose SYN was dropped stays in
	// SYN_SENT for seconds. Give them a second to settle before looking.
	states := make([]sockdiag.State, len(fds))
	lab.Poll(time.Second, func() bool {
		settled := true
		for i, fd := range fds {
			states[i], _ = sockdiag.StateOf(fd)
			if states[i] == sockdiag.SynSent {
				settled = false
			}
		}
		return settled
	})
	established, waiting := 0, 0
	for i, fd := range fds {
		switch states[i] {
		case sockdiag.Established:
			established++
			msg := []byte("hello")
			wn, err := unix.Write(fd, msg)
			n.Sys(wn, err, "write(%d, %q, %d)", fd, msg, len(msg))
		case sockdiag.SynSent:
			waiting++
		default:
			soErr, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
			if soErr != 0 {
				return fmt.Errorf("connect to %v: %w", addr, unix.Errno(soErr))
			}
		}
	}
	n.Kernel(sockdiag.Filter{Port: addr.Port()})
	fmt.Fprintf(stdout, "%d ESTABLISHED, %d SYN_SENT (waiting: their SYNs are being dropped)\n", established, waiting)
	if *hold > 0 {
		fmt.Fprintf(stdout, "holding the connections for %v; Ctrl-C to stop\n", *hold)
		select {
		case <-ctx.Done():
		case <-time.After(*hold):
		}
	}
	return nil
}
