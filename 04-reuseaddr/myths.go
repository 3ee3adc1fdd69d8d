//go:build linux

package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"socklab/internal/lab"
	"socklab/internal/netlab"
	"socklab/internal/sockdiag"
)

// E. Myths: what blog posts say about TIME_WAIT sysctls, checked in the private namespace
// (its sysctls are its own; the host's are never written).

// finTimeoutReport is what the kernel listed with tcp_fin_timeout lowered.
type finTimeoutReport struct {
	FinTimeout string          // the value in force during the experiment
	TimeWait   sockdiag.Socket // a real TIME_WAIT made under it
	Orphan     sockdiag.Socket // an orphaned FIN_WAIT2 made under it
}

// stepFinTimeout sets tcp_fin_timeout=5 and makes two closes: one that ends in TIME_WAIT (both
// sides closed) and one whose peer never closes (the closer is orphaned in FIN_WAIT2). Only the
// orphan's timer follows tcp_fin_timeout (tcp(7): "the time an orphaned connection will remain
// in the FIN_WAIT_2 state").
func stepFinTimeout(n *lab.Narrator) (finTimeoutReport, error) {
	var rep finTimeoutReport
	n.Step("myth: \"lower tcp_fin_timeout to shorten TIME_WAIT\"")
	restore, err := netlab.SetSysctls("net.ipv4.tcp_fin_timeout", "5")
	if err != nil {
		return rep, err
	}
	defer restore()
	rep.FinTimeout, _ = netlab.Sysctl("net.ipv4.tcp_fin_timeout")
	n.Sys(0, nil, "sysctl net.ipv4.tcp_fin_timeout=%s", rep.FinTimeout)
	l := openListener(lab.Quiet(), loopback0, false, false)
	if !l.OK() {
		return rep, fmt.Errorf("%s: %w", l.Call, l.Err)
	}
	defer unix.Close(l.FD)
	full, err := connectAndAccept(lab.Quiet(), l.FD, l.Addr)
	if err != nil {
		return rep, err
	}
	n.Say("Connection 1: the server closes first, the client follows (→ TIME_WAIT).")
	if rep.TimeWait, err = closeBoth(n, full, true); err != nil {
		return rep, err
	}
	half, err := connectAndAccept(lab.Quiet(), l.FD, l.Addr)
	if err != nil {
		return rep, err
	}
	defer unix.Close(half.Client) // closed last: the orphan then ends in TIME_WAIT as usual
	n.Say("Connection 2: the server closes, the client never does (→ orphaned FIN_WAIT2).")
	closeFD(n, half.Server)
	if rep.Orphan, err = awaitState(half.ServerAddr, half.ClientAddr, sockdiag.FinWait2); err != nil {
		return rep, err
	}
	n.Kernel(sockdiag.Filter{Local: l.Addr, States: []sockdiag.State{sockdiag.TimeWait, sockdiag.FinWait2}})
	n.Say("The TIME_WAIT still has %.0f s to go; only the orphaned FIN_WAIT2 (its peer never "+
		"closed, no fd holds it) got tcp_fin_timeout's %s s. TIME_WAIT lasts TCP_TIMEWAIT_LEN, "+
		"a constant compiled into the kernel.", rep.TimeWait.Expires.Seconds(), rep.FinTimeout)
	return rep, nil
}

// twSysctls lists the tcp_tw* sysctls this kernel has, and reads tcp_tw_recycle.
func twSysctls(n *lab.Narrator) (names []string, recycleErr error) {
	n.Step("myth: \"turn on tcp_tw_recycle\"")
	entries, err := os.ReadDir("/proc/sys/net/ipv4")
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "tcp_tw") {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	_, recycleErr = netlab.Sysctl("net.ipv4.tcp_tw_recycle")
	n.Say("/proc/sys/net/ipv4/tcp_tw*: %s. Reading tcp_tw_recycle: %v. It was removed in "+
		"Linux 4.12 because it broke clients behind NAT.", strings.Join(names, ", "), recycleErr)
	return names, recycleErr
}

// maxTwReport is what the kernel did with tcp_max_tw_buckets=0.
type maxTwReport struct {
	Closes         int   // server-first closes made under the limit
	Overflow       int64 // rise of TcpExt:TCPTimeWaitOverflow meanwhile
	TimeWaitsAfter int   // TIME_WAITs sock_diag listed for those connections afterwards
	Restart        listenAttempt
	Control        sockdiag.Socket // a TIME_WAIT made after the limit was restored
}

// stepMaxTwBuckets sets tcp_max_tw_buckets=0: no TIME_WAIT may be created, so the kernel
// destroys the socket at once and counts TCPTimeWaitOverflow ("TCP: time wait bucket table
// overflow" in older logs). The port is then free even without SO_REUSEADDR.
func stepMaxTwBuckets(n *lab.Narrator, closes int) (maxTwReport, error) {
	rep := maxTwReport{Closes: closes}
	n.Step("myth: \"set tcp_max_tw_buckets low to get rid of TIME_WAIT\"")
	before, err := sockdiag.Counter("TcpExt", "TCPTimeWaitOverflow")
	if err != nil {
		return rep, err
	}
	restore, err := netlab.SetSysctls("net.ipv4.tcp_max_tw_buckets", "0")
	if err != nil {
		return rep, err
	}
	n.Sys(0, nil, "sysctl net.ipv4.tcp_max_tw_buckets=0")
	l := openListener(lab.Quiet(), loopback0, false, false)
	if !l.OK() {
		restore()
		return rep, fmt.Errorf("%s: %w", l.Call, l.Err)
	}
	var made []conn
	closeOne := func() error {
		c, err := connectAndAccept(lab.Quiet(), l.FD, l.Addr)
		if err != nil {
			return err
		}
		made = append(made, c)
		closeFD(lab.Quiet(), c.Server)
		if _, err = awaitState(c.ClientAddr, c.ServerAddr, sockdiag.CloseWait); err != nil {
			unix.Close(c.Client)
			return err
		}
		closeFD(lab.Quiet(), c.Client)
		// The server side would now enter TIME_WAIT; with no bucket allowed it is destroyed.
		return awaitGone(c.ServerAddr, c.ClientAddr)
	}
	for range closes {
		if err = closeOne(); err != nil {
			break
		}
	}
	unix.Close(l.FD)
	after, cerr := sockdiag.Counter("TcpExt", "TCPTimeWaitOverflow")
	restore()
	if err != nil {
		return rep, err
	}
	if cerr != nil {
		return rep, cerr
	}
	rep.Overflow = after - before
	for _, c := range made {
		if _, found, _ := sockdiag.Find(c.ServerAddr, c.ClientAddr); found {
			rep.TimeWaitsAfter++
		}
	}
	n.Sys(0, nil, "%d × (connect, accept, server close, client close)", closes)
	// Sockets on the listener's own address only: the port bind(0) picked may be the peer
	// port of a client-side TIME_WAIT left by part B, which is not this step's.
	n.Kernel(sockdiag.Filter{Local: l.Addr})
	n.Say("No TIME_WAIT: the kernel counted TcpExt:TCPTimeWaitOverflow %d → %d (nstat -az "+
		"TcpExtTCPTimeWaitOverflow) and simply destroyed each socket.", before, after)
	rep.Restart = openListener(n, l.Addr, false, false)
	if rep.Restart.OK() {
		closeFD(n, rep.Restart.FD)
	}
	n.Say("So the restart without SO_REUSEADDR got %s — at the price of the protection "+
		"TIME_WAIT gives: a delayed segment of the old connection may now land in a new one.",
		rep.Restart.Result())

	n.Step("limit restored: TIME_WAIT is back")
	r, err := runCell(lab.Quiet(), cell{ServerFirst: true})
	rep.Control = r.TimeWait
	if err == nil {
		n.Say("tcp_max_tw_buckets restored; a server-first close leaves %s.", r.TimeWait.State)
	}
	return rep, err
}

// stepReuseAddrKeepsTimeWait checks the myth "SO_REUSEADDR removes TIME_WAIT": both listeners
// set it, the restart succeeds, and the TIME_WAIT is listed before and after, its timer still
// running down.
func stepReuseAddrKeepsTimeWait(n *lab.Narrator) (before, after sockdiag.Socket, r cellResult, err error) {
	n.Step("myth: \"SO_REUSEADDR removes TIME_WAIT\"")
	r, err = runCell(lab.Quiet(), cell{OldReuse: true, NewReuse: true, ServerFirst: true})
	if err != nil {
		return r.TimeWait, after, r, err
	}
	after, found, err := sockdiag.Find(r.TimeWait.Local, r.TimeWait.Remote)
	if err == nil && !found {
		err = errors.New("TIME_WAIT not found after the restart")
	}
	n.Say("Restart with SO_REUSEADDR on both listeners: %s. The TIME_WAIT %v → %v is still "+
		"listed, timer %.1f s: the option shares the port, it removes nothing.",
		r.Restart.Result(), r.TimeWait.Local, r.TimeWait.Remote, after.Expires.Seconds())
	return r.TimeWait, after, r, err
}

func partMyths(d *lab.Demo) error {
	if _, _, _, err := stepReuseAddrKeepsTimeWait(d.Narrator); err != nil {
		return err
	}
	if _, err := twSysctls(d.Narrator); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if !d.NeedPrivate("tcp_fin_timeout and tcp_max_tw_buckets (sysctls)") {
		return nil
	}
	if _, err := stepFinTimeout(d.Narrator); err != nil {
		return err
	}
	_, err := stepMaxTwBuckets(d.Narrator, 3)
	return err
}
