//go:build linux

package main

import (
	"fmt"
	"net"
	"net/netip"

	"golang.org/x/sys/unix"

	"socklab/internal/lab"
	"socklab/internal/sockdiag"
)

// F. Go's net.Listen sets SO_REUSEADDR on every listening socket (net/sockopt_linux.go,
// setDefaultListenerSockopts), which is why a Go server restarts where the raw one fails.

// reuseAddrOf is getsockopt(fd, SOL_SOCKET, SO_REUSEADDR): what the kernel says is set.
func reuseAddrOf(n *lab.Narrator, fd int) (int, error) {
	v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR)
	n.Sys(0, err, "getsockopt(%d, SOL_SOCKET, SO_REUSEADDR, [%d], [4])", fd, v)
	return v, err
}

// goListenerOption asks the kernel for SO_REUSEADDR on a Go net.Listen listener and on a raw
// socket()+bind()+listen() listener.
func goListenerOption(n *lab.Narrator) (goValue, rawValue int, err error) {
	n.Step("ask the kernel: is SO_REUSEADDR set on a Go listener?")
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	n.Say("ln, err := net.Listen(\"tcp4\", \"127.0.0.1:0\")  // err = %v", err)
	if err != nil {
		return 0, 0, err
	}
	defer ln.Close()
	rc, err := ln.(*net.TCPListener).SyscallConn()
	if err != nil {
		return 0, 0, err
	}
	var optErr error
	// SyscallConn().Control runs the function with the listener's real file descriptor.
	if err := rc.Control(func(fd uintptr) { goValue, optErr = reuseAddrOf(n, int(fd)) }); err != nil {
		return 0, 0, err
	}
	if optErr != nil {
		return 0, 0, optErr
	}
	raw := openListener(n, loopback0, false, false)
	if !raw.OK() {
		return 0, 0, fmt.Errorf("%s: %w", raw.Call, raw.Err)
	}
	defer closeFD(n, raw.FD)
	rawValue, err = reuseAddrOf(n, raw.FD)
	return goValue, rawValue, err
}

// goRestartReport is what the kernel answered to a Go server's restart.
type goRestartReport struct {
	TimeWait    sockdiag.Socket // the Go server's TIME_WAIT, on its own port
	Raw         listenAttempt   // a raw restart without SO_REUSEADDR
	GoErr       error           // net.Listen's error on the same address
	StillListed bool            // the TIME_WAIT was listed after net.Listen succeeded
}

// goRestart runs a Go stdlib server that closes its connection first and exits, then restarts
// it on the same address twice: raw (no option) and with net.Listen.
func goRestart(n *lab.Narrator) (goRestartReport, error) {
	var rep goRestartReport
	n.Step("a Go server closes its connection first and exits; then it restarts")
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return rep, err
	}
	addr := netip.MustParseAddrPort(ln.Addr().String())
	n.Say("ln, _ := net.Listen(\"tcp4\", \"127.0.0.1:0\")  // %v", addr)
	cfd, caddr, err := dial(n, addr)
	if err != nil {
		ln.Close()
		return rep, err
	}
	c, err := ln.Accept()
	if err != nil {
		unix.Close(cfd)
		ln.Close()
		return rep, err
	}
	n.Say("c, _ := ln.Accept(); c.Close(); ln.Close()  // the server closes first, then exits")
	c.Close()
	if _, err := awaitState(caddr, addr, sockdiag.CloseWait); err != nil {
		unix.Close(cfd)
		ln.Close()
		return rep, err
	}
	closeFD(n, cfd)
	ln.Close()
	if rep.TimeWait, err = awaitState(addr, caddr, sockdiag.TimeWait); err != nil {
		return rep, err
	}
	n.Kernel(sockdiag.Filter{Port: addr.Port()})

	rep.Raw = openListener(n, addr, false, false)
	if rep.Raw.OK() {
		closeFD(n, rep.Raw.FD)
	}
	ln2, err := net.Listen("tcp4", addr.String())
	rep.GoErr = err
	n.Say("ln, err = net.Listen(\"tcp4\", %q)  // err = %v", addr.String(), err)
	if err == nil {
		_, rep.StillListed, err = findState(rep.TimeWait, sockdiag.TimeWait)
		ln2.Close()
	} else {
		err = nil
	}
	n.Say("The raw restart got %s; net.Listen, which set SO_REUSEADDR on both the old and "+
		"the new listener, succeeded, and the TIME_WAIT is still there.", rep.Raw.Result())
	return rep, err
}

func partGolang(d *lab.Demo) error {
	goValue, rawValue, err := goListenerOption(d.Narrator)
	if err != nil {
		return err
	}
	d.Say("The kernel says SO_REUSEADDR=%d on Go's listener, %d on ours. Go sets it in "+
		"setDefaultListenerSockopts (net/sockopt_linux.go) for every listening socket.",
		goValue, rawValue)
	_, err = goRestart(d.Narrator)
	return err
}
