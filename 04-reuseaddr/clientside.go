//go:build linux

package main

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"

	"socklab/internal/lab"
	"socklab/internal/netlab"
	"socklab/internal/sockdiag"
)

// C. The client side: the active closer keeps the TIME_WAIT, and a client's is on its
// ephemeral port (临时端口).

// stepClientTimeWait connects, lets the client close first, and returns the TIME_WAIT the
// kernel lists — on the client's ephemeral port — and the server's address.
func stepClientTimeWait(n *lab.Narrator) (sockdiag.Socket, netip.AddrPort, error) {
	n.Step("the client closes first")
	l := openListener(n, loopback0, false, false)
	if !l.OK() {
		return sockdiag.Socket{}, netip.AddrPort{}, fmt.Errorf("%s: %w", l.Call, l.Err)
	}
	defer closeFD(n, l.FD)
	c, err := connectAndAccept(n, l.FD, l.Addr)
	if err != nil {
		return sockdiag.Socket{}, netip.AddrPort{}, err
	}
	tw, err := closeBoth(n, c, false)
	if err != nil {
		return tw, l.Addr, err
	}
	n.Kernel(sockdiag.Filter{Port: l.Addr.Port()})
	n.Say("This time the TIME_WAIT is the client's, on its ephemeral port %d. The server's port "+
		"is free for a restart; the client never bound a port, so nothing blocks it either.",
		tw.Local.Port())
	return tw, l.Addr, nil
}

// stepNewPorts makes count connections to one server, the client closing first each time, and
// returns the TIME_WAITs the kernel lists: one per connection, each on a different client port,
// because connect() avoids a 4-tuple that is still in TIME_WAIT.
func stepNewPorts(n *lab.Narrator, count int) ([]sockdiag.Socket, error) {
	n.Step("%d connections in a row to the same server, the client closing first", count)
	l := openListener(lab.Quiet(), loopback0, false, false)
	if !l.OK() {
		return nil, fmt.Errorf("%s: %w", l.Call, l.Err)
	}
	defer unix.Close(l.FD)
	var tws []sockdiag.Socket
	for range count {
		c, err := connectAndAccept(lab.Quiet(), l.FD, l.Addr)
		if err != nil {
			return tws, err
		}
		tw, err := closeBoth(lab.Quiet(), c, false)
		if err != nil {
			return tws, err
		}
		n.Sys(0, nil, "connect(%d, %s) ... close()", c.Client, lab.Sockaddr(lab.SockaddrOf(l.Addr)))
		n.Result("client port %d, now in TIME_WAIT", tw.Local.Port())
		tws = append(tws, tw)
	}
	n.Kernel(sockdiag.Filter{Port: l.Addr.Port(), States: []sockdiag.State{sockdiag.TimeWait}})
	return tws, nil
}

// twReuseReport is what the kernel answered about tcp_tw_reuse and connect().
type twReuseReport struct {
	TimeWait sockdiag.Socket // the client's TIME_WAIT whose 4-tuple a new connect() wants
	// RefusedErr is connect()'s error with tcp_tw_reuse=0 (only in a private namespace).
	RefusedErr error
	Refused    bool // the tcp_tw_reuse=0 attempt was made
	// Reused is the new connection on the very same 4-tuple, as sock_diag lists it.
	Reused   sockdiag.Socket
	Attempts int // connect() calls until the kernel allowed the reuse
}

// connectFromPort is socket + IP_LOCAL_PORT_RANGE [port, port] + connect: the kernel may pick
// only this one ephemeral port, so connect() must reuse the TIME_WAIT's 4-tuple or fail.
// (IP_LOCAL_PORT_RANGE, ip(7), Linux 6.3: a per-socket narrowing of ip_local_port_range.)
func connectFromPort(n *lab.Narrator, port uint16, to netip.AddrPort) (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if n.Sys(fd, err, "socket(AF_INET, SOCK_STREAM, 0)") != nil {
		return -1, err
	}
	err = unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_LOCAL_PORT_RANGE, int(port)|int(port)<<16)
	if n.Sys(0, err, "setsockopt(%d, SOL_IP, IP_LOCAL_PORT_RANGE, [%d..%d], 4)", fd, port, port) != nil {
		unix.Close(fd)
		return -1, err
	}
	sa := lab.SockaddrOf(to)
	err = unix.Connect(fd, sa)
	if n.Sys(0, err, "connect(%d, %s)", fd, lab.Sockaddr(sa)) != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// stepTwReuseConnect shows that tcp_tw_reuse is about connect(): a client whose only
// possible port is held by its own TIME_WAIT gets EADDRNOTAVAIL with tcp_tw_reuse=0, and
// reuses the TIME_WAIT's 4-tuple with tcp_tw_reuse=2 (the default: loopback only). The
// sysctl part needs the private namespace; without it only the reuse is shown.
func stepTwReuseConnect(n *lab.Narrator, private bool) (twReuseReport, error) {
	var rep twReuseReport
	n.Step("tcp_tw_reuse: connect() from a port whose 4-tuple is in TIME_WAIT")
	l := openListener(lab.Quiet(), loopback0, false, false)
	if !l.OK() {
		return rep, fmt.Errorf("%s: %w", l.Call, l.Err)
	}
	defer unix.Close(l.FD)
	c, err := connectAndAccept(lab.Quiet(), l.FD, l.Addr)
	if err != nil {
		return rep, err
	}
	if rep.TimeWait, err = closeBoth(lab.Quiet(), c, false); err != nil {
		return rep, err
	}
	port := rep.TimeWait.Local.Port()
	n.Say("A first connection from port %d ended with the client closing first, so %v → %v "+
		"is in TIME_WAIT. Now a client may use only port %d.", port, rep.TimeWait.Local, l.Addr, port)

	if private {
		restore, err := netlab.SetSysctls("net.ipv4.tcp_tw_reuse", "0")
		if err != nil {
			return rep, err
		}
		n.Sys(0, nil, "sysctl net.ipv4.tcp_tw_reuse=0")
		fd, err := connectFromPort(n, port, l.Addr)
		restore()
		rep.Refused, rep.RefusedErr = true, err
		if err == nil {
			unix.Close(fd)
			return rep, errors.New("connect reused a TIME_WAIT with tcp_tw_reuse=0")
		}
		// The wait before reuse is tcp_tw_reuse_delay (Linux 6.13, default 1000 ms); shorten it
		// here so the lesson does not wait. Older kernels lack it: then the retries wait 1 s.
		if restore, err := netlab.SetSysctls("net.ipv4.tcp_tw_reuse", "2", "net.ipv4.tcp_tw_reuse_delay", "1"); err == nil {
			n.Sys(0, nil, "sysctl net.ipv4.tcp_tw_reuse=2 net.ipv4.tcp_tw_reuse_delay=1")
			defer restore()
		}
	}
	reuse, _ := netlab.Sysctl("net.ipv4.tcp_tw_reuse")
	n.Say("With tcp_tw_reuse=%s connect() may take over a TIME_WAIT whose last timestamp is "+
		"older than tcp_tw_reuse_delay (TCP timestamps tell old segments from new ones).", reuse)
	var fd int
	ok := lab.Poll(waitLimit, func() bool {
		rep.Attempts++
		narr := lab.Quiet()
		if rep.Attempts == 1 {
			narr = n
		}
		fd, err = connectFromPort(narr, port, l.Addr)
		return err == nil
	})
	if !ok {
		return rep, fmt.Errorf("connect from port %d: %w after %d attempts", port, err, rep.Attempts)
	}
	defer unix.Close(fd)
	if rep.Attempts > 1 {
		n.Sys(0, nil, "connect(%d, %s)", fd, lab.Sockaddr(lab.SockaddrOf(l.Addr)))
		n.Result("succeeded at attempt %d", rep.Attempts)
	}
	sfd, _, err := acceptOne(lab.Quiet(), l.FD)
	if err != nil {
		return rep, err
	}
	defer unix.Close(sfd)
	rep.Reused, _, err = sockdiag.Find(rep.TimeWait.Local, rep.TimeWait.Remote)
	n.Kernel(sockdiag.Tuple(rep.TimeWait.Local, rep.TimeWait.Remote))
	n.Say("The same 4-tuple is ESTABLISHED again: the TIME_WAIT was replaced. bind() never " +
		"does this, whatever tcp_tw_reuse says (next step).")
	return rep, err
}

// stepTwReuseNotBind repeats part A's restart with tcp_tw_reuse on (1 in the private
// namespace; the default 2 already covers loopback): bind() still fails with EADDRINUSE.
func stepTwReuseNotBind(n *lab.Narrator, private bool) (string, cellResult, error) {
	n.Step("tcp_tw_reuse does not help bind()")
	if private {
		restore, err := netlab.SetSysctls("net.ipv4.tcp_tw_reuse", "1")
		if err != nil {
			return "", cellResult{}, err
		}
		defer restore()
		n.Sys(0, nil, "sysctl net.ipv4.tcp_tw_reuse=1")
	}
	reuse, err := netlab.Sysctl("net.ipv4.tcp_tw_reuse")
	if err != nil {
		return "", cellResult{}, err
	}
	r, err := runCell(lab.Quiet(), cell{ServerFirst: true})
	if err == nil {
		n.Say("Server closes first, exits, restarts without SO_REUSEADDR, with tcp_tw_reuse=%s: "+
			"the restart's %s. tcp_tw_reuse is consulted only when connect() picks a 4-tuple.",
			reuse, r.Restart.Result())
	}
	return reuse, r, err
}

func partClientSide(d *lab.Demo) error {
	if _, _, err := stepClientTimeWait(d.Narrator); err != nil {
		return err
	}
	if _, err := stepNewPorts(d.Narrator, 4); err != nil {
		return err
	}
	private := d.NeedPrivate("tcp_tw_reuse=0 (a sysctl)")
	start := time.Now()
	if _, err := stepTwReuseConnect(d.Narrator, private); err != nil {
		return err
	}
	d.Detail("the reuse took %v", time.Since(start).Round(time.Millisecond))
	_, _, err := stepTwReuseNotBind(d.Narrator, private)
	return err
}
