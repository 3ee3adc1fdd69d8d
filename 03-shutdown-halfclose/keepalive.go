//go:build linux

package main

import (
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"socklab/internal/lab"
	"socklab/internal/netlab"
	"socklab/internal/sockdiag"
)

// ---------------------------------------------------------------------------------------
// H. TCP keepalive

// The two ends of part H's veth pair: the server in the lab's namespace, the client in a
// second namespace (netlab.Host), both in TEST-NET-1, never routed anywhere.
var (
	keepaliveServerNet = netip.MustParsePrefix("192.0.2.1/30")
	keepaliveClientNet = netip.MustParsePrefix("192.0.2.2/30")
)

// The client's keepalive settings: idle 1 s before the first probe, 1 s between probes, 3
// unanswered probes and the connection is dead. Found after about idle + cnt × intvl = 4 s.
const (
	keepIdle  = 1
	keepIntvl = 1
	keepCnt   = 3
)

// keepaliveSysctls are the namespace's defaults for sockets with SO_KEEPALIVE and no
// per-socket options, and the values part H gives them in the client's namespace to show that
// the options override them.
var keepaliveSysctls = []struct{ name, value string }{
	{"net.ipv4.tcp_keepalive_time", "600"},
	{"net.ipv4.tcp_keepalive_intvl", "30"},
	{"net.ipv4.tcp_keepalive_probes", "5"},
}

// keepaliveDeadline bounds the wait for the dead peer to be found: 4 s are expected.
const keepaliveDeadline = 15 * time.Second

func partKeepalive(d *lab.Demo) error {
	if !d.Env.Private { // one line, like the packet view's
		d.Skip("keepalive", "needs the private namespace (second host, sysctls)")
		return nil
	}
	_, err := keepalive(d)
	return err
}

// Keepalive is what part H's kernel showed.
type Keepalive struct {
	Defaults        map[string]string // the client namespace's keepalive sysctls, as it started
	Set             map[string]string // after SetSysctl: what the kernel reads back
	WithSysctls     End               // after SO_KEEPALIVE alone: the keepalive timer at tcp_keepalive_time
	WithOptions     End               // after TCP_KEEPIDLE/INTVL/CNT: the timer at keepIdle
	ServerAfterKill End               // the server's end once its address is gone: still ESTABLISHED
	Probes          []ProbeSeen       // each change of the probe count, as sock_diag and TCP_INFO showed it
	Found           time.Duration     // from the options to the kernel dropping the connection
	KeepaliveSent   int64             // TcpExt TCPKeepAlive in the client's namespace: probes sent
	ReadErr         error             // what the blocked application would get: ETIMEDOUT
	SoErrorAfter    int               // SO_ERROR after read() reported it: 0, the error is reported once
	SecondRead      int               // then read() returns 0
	FDState         sockdiag.State    // TCP_INFO on the fd: CLOSE
	Gone            End               // sock_diag in the client's namespace: no socket
}

// ProbeSeen is one moment of the probing, as the kernel reported it.
type ProbeSeen struct {
	At         time.Duration // since the keepalive options were set
	Diag       End           // sock_diag: keepalive timer, Retransmits = probes sent unanswered
	InfoProbes uint8         // TCP_INFO tcpi_probes on the fd
}

// keepalive: a peer that vanishes without a FIN or RST (power cut, cable pulled, a NAT that
// forgot the connection) leaves the other end ESTABLISHED forever if it only waits to read.
// TCP keepalive (tcp(7), SO_KEEPALIVE) sends a probe after an idle time; a live peer ACKs it,
// a dead one does not, and after TCP_KEEPCNT unanswered probes the kernel drops the connection
// and reports ETIMEDOUT to the application.
func keepalive(d *lab.Demo) (r Keepalive, err error) {
	d.Step("a second host: the client's own namespace, joined to this one by veth")
	h, err := netlab.NewHost("client")
	if err != nil {
		return r, err
	}
	defer h.Close()
	link, err := h.Connect(keepaliveServerNet, keepaliveClientNet)
	if err != nil {
		return r, err
	}
	d.Say("server side %s on %s (this namespace), client side %s on %s (host %q)",
		link.LocalAddr, link.LocalIf, link.PeerAddr, link.PeerIf, h.Name)

	d.Step("the client's namespace: its keepalive sysctls, and new values")
	r.Defaults, r.Set = map[string]string{}, map[string]string{}
	var restore func()
	err = h.Do(func() error {
		var kv []string
		for _, s := range keepaliveSysctls {
			v, err := netlab.Sysctl(s.name)
			if err != nil {
				return err
			}
			r.Defaults[s.name] = v
			kv = append(kv, s.name, s.value)
		}
		var err error
		if restore, err = netlab.SetSysctls(kv...); err != nil {
			return err
		}
		for _, s := range keepaliveSysctls {
			if r.Set[s.name], err = netlab.Sysctl(s.name); err != nil {
				return err
			}
		}
		return nil
	})
	if restore != nil {
		// SetSysctl acts on the calling thread's namespace: restore on the host's thread.
		defer h.Do(func() error { restore(); return nil })
	}
	if err != nil {
		return r, err
	}
	for _, s := range keepaliveSysctls {
		d.Say("%s: %s -> %s (the client's namespace only)", s.name, r.Defaults[s.name], r.Set[s.name])
	}
	d.Say("Each network namespace has its own keepalive sysctls. They are the defaults for "+
		"sockets with SO_KEEPALIVE; the kernel's (%s s idle, then %s probes %s s apart) would "+
		"take 2 h 11 min to find a dead peer.", r.Defaults["net.ipv4.tcp_keepalive_time"],
		r.Defaults["net.ipv4.tcp_keepalive_probes"], r.Defaults["net.ipv4.tcp_keepalive_intvl"])

	d.Step("the client connects from its namespace and turns on SO_KEEPALIVE")
	lfd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err := d.Sys(lfd, err, "socket(AF_INET, SOCK_STREAM|SOCK_CLOEXEC, 0)"); err != nil {
		return r, err
	}
	defer unix.Close(lfd)
	serverSA := lab.SockaddrOf(netip.AddrPortFrom(link.LocalAddr.Addr(), 0))
	if err := d.Sys(0, unix.Bind(lfd, serverSA), "bind(%d, %s)", lfd, lab.Sockaddr(serverSA)); err != nil {
		return r, err
	}
	if err := d.Sys(0, unix.Listen(lfd, 1), "listen(%d, 1)", lfd); err != nil {
		return r, err
	}
	sa, err := unix.Getsockname(lfd)
	if err != nil {
		return r, err
	}
	serverAddr := lab.AddrPortOf(sa)
	client := -1
	var clientAddr netip.AddrPort
	defer func() {
		if client >= 0 {
			unix.Close(client)
		}
	}()
	// The client's socket is made on the host's thread, so it belongs to the host's
	// namespace; its fd then works from any thread of this process.
	err = h.Do(func() error {
		var err error
		client, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err := d.Sys(client, err, "socket(AF_INET, SOCK_STREAM|SOCK_CLOEXEC, 0)  [in %s]", h.Name); err != nil {
			client = -1
			return err
		}
		if err := d.Sys(0, unix.Connect(client, sa), "connect(%d, %s)", client, lab.Sockaddr(sa)); err != nil {
			return err
		}
		csa, err := unix.Getsockname(client)
		if err != nil {
			return err
		}
		clientAddr = lab.AddrPortOf(csa)
		tv := unix.NsecToTimeval(safetyTimeout.Nanoseconds())
		return unix.SetsockoptTimeval(client, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	})
	if err != nil {
		return r, err
	}
	server, _, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC)
	if err := d.Sys(server, err, "accept4(%d, ..., SOCK_CLOEXEC)", lfd); err != nil {
		return r, err
	}
	defer func() {
		// The server's end never learns anything: abort it (RST, no orphan left behind).
		_ = unix.SetsockoptLinger(server, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
		unix.Close(server)
	}()
	clientEnd := func() (End, error) {
		var e End
		err := h.Do(func() error {
			var err error
			e, err = look(clientAddr, serverAddr)
			return err
		})
		return e, err
	}
	showClient := func() {
		_ = h.Do(func() error {
			d.Kernel(sockdiag.Tuple(clientAddr, serverAddr))
			return nil
		})
	}
	err = unix.SetsockoptInt(client, unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1)
	if err := d.Sys(0, err, "setsockopt(%d, SOL_SOCKET, SO_KEEPALIVE, [1], 4)", client); err != nil {
		return r, err
	}
	if r.WithSysctls, err = clientEnd(); err != nil {
		return r, err
	}
	showClient()
	d.Say("The client's keepalive timer is armed from tcp_keepalive_time, the namespace's "+
		"default: %.0fs. (This table is the client's namespace; the server's end lives in "+
		"this one.)", r.WithSysctls.Expires.Seconds())

	d.Step("the server's host dies: its address disappears, nothing is sent")
	cmd := []string{"ip", "addr", "del", link.LocalAddr.String(), "dev", link.LocalIf}
	out, err := exec.Command(cmd[0], cmd[1:]...).CombinedOutput()
	if err != nil {
		return r, fmt.Errorf("%s: %v: %s", strings.Join(cmd, " "), err, strings.TrimSpace(string(out)))
	}
	d.Say("$ %s", strings.Join(cmd, " "))
	if r.ServerAfterKill, err = look(serverAddr, clientAddr); err != nil {
		return r, err
	}
	d.Kernel(sockdiag.Tuple(serverAddr, clientAddr))
	d.Say("Segments to %v now die in silence in this namespace (no local address, no "+
		"forwarding, so no ICMP either), as if its machine had lost power. Neither end "+
		"knows: both still say ESTABLISHED, and a client waiting to read would wait forever.",
		serverAddr.Addr())

	d.Step("per-socket options: idle %d s, probes %d s apart, %d probes", keepIdle, keepIntvl, keepCnt)
	before, err := keepaliveCounter(h)
	if err != nil {
		return r, err
	}
	for _, o := range []struct {
		name  string
		opt   int
		value int
	}{{"TCP_KEEPINTVL", unix.TCP_KEEPINTVL, keepIntvl}, {"TCP_KEEPCNT", unix.TCP_KEEPCNT, keepCnt},
		{"TCP_KEEPIDLE", unix.TCP_KEEPIDLE, keepIdle}} {
		err := unix.SetsockoptInt(client, unix.IPPROTO_TCP, o.opt, o.value)
		if err := d.Sys(0, err, "setsockopt(%d, IPPROTO_TCP, %s, [%d], 4)", client, o.name, o.value); err != nil {
			return r, err
		}
	}
	start := time.Now()
	if r.WithOptions, err = clientEnd(); err != nil {
		return r, err
	}
	showClient()
	d.Say("The socket's options override the namespace's sysctls: the timer is now "+
		"%.1f s. (TCP_KEEPIDLE last: setting it re-arms the timer.)", r.WithOptions.Expires.Seconds())

	d.Step("the kernel probes the silent peer; the client application does nothing")
	last := -1
	for time.Since(start) < keepaliveDeadline {
		e, err := clientEnd()
		if err != nil {
			return r, err
		}
		if !e.Found {
			r.Found = time.Since(start)
			break
		}
		// No timer at all means the keepalive timer's handler is running right now: the
		// kernel unlinks a timer before it calls the handler, and inet_diag reports a timer,
		// and the probe count with it, only while timer_pending() (net/ipv4/inet_diag.c). CI
		// once caught the last probe's handler before its tcp_done(): ESTABLISHED, no timer,
		// count 0. Such a sample says nothing about the probes; the next one will.
		if e.Timer != sockdiag.TimerNone && int(e.Retransmits) != last {
			last = int(e.Retransmits)
			seen := ProbeSeen{At: time.Since(start), Diag: e}
			// TCP_INFO (the application's view, on its fd) is read right after the dump;
			// a probe falling between the two would make it one higher.
			if info, err := sockdiag.TCPInfo(client); err == nil {
				seen.InfoProbes = info.Probes
			}
			r.Probes = append(r.Probes, seen)
			if last > 0 {
				d.Result("%.1f s: sock_diag %s, retrans %d; TCP_INFO tcpi_probes = %d",
					seen.At.Seconds(), e.Timer, e.Retransmits, seen.InfoProbes)
			}
		}
		time.Sleep(20 * time.Millisecond) // a polling interval; the kernel's timer decides
	}
	if r.Found == 0 {
		return r, fmt.Errorf("after %v the kernel still has the connection", keepaliveDeadline)
	}
	after, err := keepaliveCounter(h)
	if err != nil {
		return r, err
	}
	r.KeepaliveSent = after - before
	showClient()
	d.Say("Gone after %.1f s: %d probes unanswered (TcpExt TCPKeepAlive in the client's "+
		"namespace counted %d sent), then the kernel dropped the connection — no FIN "+
		"exchange, no TIME_WAIT.", r.Found.Seconds(), keepCnt, r.KeepaliveSent)

	d.Step("the application learns it at its next call")
	buf := make([]byte, 64)
	n, err := unix.Read(client, buf)
	r.ReadErr = err
	d.Sys(n, err, "read(%d, \"\", %d)", client, len(buf))
	r.SoErrorAfter, err = unix.GetsockoptInt(client, unix.SOL_SOCKET, unix.SO_ERROR)
	if err := d.Sys(0, err, "getsockopt(%d, SOL_SOCKET, SO_ERROR, [%d], [4])", client, r.SoErrorAfter); err != nil {
		return r, err
	}
	r.SecondRead, err = unix.Read(client, buf)
	d.Sys(r.SecondRead, err, "read(%d, \"\", %d)", client, len(buf))
	if r.FDState, err = sockdiag.StateOf(client); err != nil {
		return r, err
	}
	d.Result("getsockopt(%d, TCP_INFO): tcpi_state = %v", client, r.FDState)
	if r.Gone, err = clientEnd(); err != nil {
		return r, err
	}
	d.Say("ETIMEDOUT (Connection timed out) is reported once, by whatever call comes next " +
		"(read, write, or SO_ERROR after poll() says POLLERR); then the socket reads as end " +
		"of file. An application that must notice a dead peer while idle needs keepalive, " +
		"or its own heartbeat with a read timeout.")
	if !errors.Is(r.ReadErr, unix.ETIMEDOUT) {
		return r, fmt.Errorf("read after the keepalive gave up: %v, the lesson expects ETIMEDOUT", r.ReadErr)
	}
	return r, nil
}

// keepaliveCounter reads TcpExt TCPKeepAlive (keepalive probes sent) in h's namespace.
func keepaliveCounter(h *netlab.Host) (int64, error) {
	var n int64
	err := h.Do(func() error {
		var err error
		n, err = sockdiag.Counter("TcpExt", "TCPKeepAlive")
		return err
	})
	return n, err
}
