//go:build linux

package main

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"socklab/internal/lab"
	"socklab/internal/sockdiag"
)

// The flood's little network, inside a fresh namespace: the server listens on floodServer,
// which lives on one end of a veth pair whose other end (in the same namespace) has no
// address, and the forged SYNs claim to come from other addresses of that subnet. The
// server's SYN-ACKs to them wait for an ARP answer that never comes and are dropped, exactly
// like SYN-ACKs sent to spoofed addresses that nobody answers. TEST-NET-1 (RFC 5737) is never
// routed, and nothing leaves the namespace.
var (
	floodPrefix  = netip.MustParsePrefix("192.0.2.1/24")
	floodServer  = floodPrefix.Addr()
	floodSources = netip.MustParseAddr("192.0.2.100") // forged sources start here
)

// floodBacklog is the listener's backlog in the flood experiments: the SYN queue of a
// listener holds about as many half-open requests as its backlog.
const floodBacklog = 8

// forgedSYN builds an IPv4 packet holding a TCP SYN from src to dst: 20 bytes of IP header
// (the kernel fills in the total length, the ID and the header checksum for IPPROTO_RAW
// sockets, raw(7)) and 20 bytes of TCP header with its checksum over the pseudo-header.
func forgedSYN(src, dst netip.AddrPort, seq uint32) []byte {
	p := make([]byte, 40)
	p[0] = 0x45                                // IPv4, header length 5 words
	binary.BigEndian.PutUint16(p[6:], 0x4000)  // don't fragment
	p[8] = 64                                  // TTL
	p[9] = unix.IPPROTO_TCP                    // protocol
	s, d := src.Addr().As4(), dst.Addr().As4() // addresses, network order
	copy(p[12:16], s[:])
	copy(p[16:20], d[:])
	tcp := p[20:]
	binary.BigEndian.PutUint16(tcp[0:], src.Port())
	binary.BigEndian.PutUint16(tcp[2:], dst.Port())
	binary.BigEndian.PutUint32(tcp[4:], seq)
	tcp[12] = 5 << 4                            // data offset: 5 words, no options
	tcp[13] = 0x02                              // SYN
	binary.BigEndian.PutUint16(tcp[14:], 64240) // window
	binary.BigEndian.PutUint16(tcp[16:], tcpChecksum(s, d, tcp))
	return p
}

// tcpChecksum is the Internet checksum (RFC 1071) of the TCP pseudo-header and segment.
func tcpChecksum(src, dst [4]byte, segment []byte) uint16 {
	var sum uint32
	add := func(b []byte) {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(binary.BigEndian.Uint16(b[i:]))
		}
		if len(b)%2 == 1 {
			sum += uint32(b[len(b)-1]) << 8
		}
	}
	add(src[:])
	add(dst[:])
	add([]byte{0, unix.IPPROTO_TCP, byte(len(segment) >> 8), byte(len(segment))})
	add(segment)
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// ipCommand runs ip(8) in the calling thread's namespace (it is forked from this locked
// thread) and prints it.
func ipCommand(n *lab.Narrator, args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		err = fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	n.Sys(0, err, "ip %s", strings.Join(args, " "))
	return err
}

// floodNetwork creates the veth pair holding floodServer.
func floodNetwork(n *lab.Narrator) error {
	if _, err := exec.LookPath("ip"); err != nil {
		return fmt.Errorf("the SYN flood lab needs ip(8) from iproute2: %w", err)
	}
	for _, args := range [][]string{
		{"link", "add", "flood0", "type", "veth", "peer", "name", "void0"},
		{"addr", "add", floodPrefix.String(), "dev", "flood0"},
		{"link", "set", "flood0", "up"},
		{"link", "set", "void0", "up"},
	} {
		if err := ipCommand(n, args...); err != nil {
			return err
		}
	}
	return nil
}

// sendFlood sends count forged SYNs to dst from a raw socket, each from its own address and
// port, and returns how many were sent.
func sendFlood(n *lab.Narrator, dst netip.AddrPort, count int) (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
	if err := n.Sys(fd, err, "socket(AF_INET, SOCK_RAW, IPPROTO_RAW)"); err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	to := &unix.SockaddrInet4{Addr: dst.Addr().As4()}
	base := floodSources.As4()
	sent := 0
	for i := range count {
		a := base
		a[3] += byte(i % 100)
		src := netip.AddrPortFrom(netip.AddrFrom4(a), uint16(20000+i))
		err := unix.Sendto(fd, forgedSYN(src, dst, uint32(i)*7919), 0, to)
		if i == 0 || err != nil {
			n.Sys(40, err, "sendto(%d, {SYN %v → %v}, 40, 0, ...)", fd, src, dst)
		}
		if err != nil {
			return sent, err
		}
		sent++
	}
	n.Result("... %d forged SYNs sent, from %d different addresses", sent, min(count, 100))
	return sent, nil
}

// floodFacts is what the kernel reported about one flood.
type floodFacts struct {
	Syncookies     string
	Sent           int
	HalfOpen       int   // SYN_RECV request sockets of the listener after the flood
	QueueFullDrops int64 // TcpExt TCPReqQFullDrop: SYNs dropped because the SYN queue was full
	CookiesSent    int64 // TcpExt SyncookiesSent
	ClientState    sockdiag.State
	ClientErr      error // SO_ERROR of the legitimate client once it gave up (waitFailure)
	ClientGotIn    bool
}

// halfOpenCount is the number of SYN_RECV entries of the listener on laddr.
func halfOpenCount(laddr netip.AddrPort) (int, error) {
	socks, err := sockdiag.Dump(sockdiag.TCP, sockdiag.Filter{Port: laddr.Port(), States: []sockdiag.State{sockdiag.SynRecv}})
	k := 0
	for _, s := range socks {
		if s.Local == laddr {
			k++
		}
	}
	return k, err
}

// counterDelta reads TcpExt counters.
func counters(names ...string) map[string]int64 {
	m := map[string]int64{}
	for _, name := range names {
		m[name], _ = sockdiag.Counter("TcpExt", name)
	}
	return m
}

// floodCount is what the kernel made of a flood: how many forged SYNs were sent, how many
// requests the listener keeps in SYN_RECV, and how each TcpExt counter moved.
type floodCount struct {
	Sent, HalfOpen int
	before, delta  map[string]int64
}

// floodListener sets sysctls in the calling thread's (fresh) namespace, opens a listener with
// backlog, sends count forged SYNs to it, and waits until every one is accounted for: kept as
// a half-open request, or counted in one of the TcpExt counters named in accountedBy. names
// are all the counters the caller reads (accountedBy among them).
func floodListener(n *lab.Narrator, sysctls [][2]string, backlog, count int, names, accountedBy []string) (*queueLab, floodCount, error) {
	for _, kv := range sysctls {
		if err := setSysctl(n, kv[0], kv[1]); err != nil {
			return nil, floodCount{}, err
		}
	}
	if err := floodNetwork(n); err != nil {
		return nil, floodCount{}, err
	}
	q, err := openListener(n, netip.AddrPortFrom(floodServer, 0), backlog)
	if err != nil {
		return nil, floodCount{}, err
	}
	c := floodCount{before: counters(names...)}
	if c.Sent, err = sendFlood(n, q.Addr, count); err != nil {
		q.Close()
		return nil, c, err
	}
	var last string
	if !lab.Poll(shortWait, func() bool {
		now := counters(names...)
		c.delta = map[string]int64{}
		for _, name := range names {
			c.delta[name] = now[name] - c.before[name]
		}
		c.HalfOpen, _ = halfOpenCount(q.Addr)
		total := int64(c.HalfOpen)
		for _, name := range accountedBy {
			total += c.delta[name]
		}
		last = fmt.Sprintf("%d half-open, counters %v", c.HalfOpen, c.delta)
		return total >= int64(c.Sent)
	}) {
		q.Close()
		return nil, c, fmt.Errorf("the flood was not fully accounted for within %v: %s", shortWait, last)
	}
	return q, c, nil
}

// synFlood floods a listener with forged SYNs in a fresh namespace where
// net.ipv4.tcp_syncookies is set to syncookies, then lets a legitimate client connect. With
// waitFailure and no cookies it waits for that client to give up (TCP_SYNCNT=1: about 3 s).
func synFlood(n *lab.Narrator, syncookies string, count int, waitFailure bool) (floodFacts, error) {
	f := floodFacts{Syncookies: syncookies}
	n.Step("tcp_syncookies=%s: %d forged SYNs, then a legitimate client", syncookies, count)
	err := inFreshHost(n, "synflood", func() error {
		// Every forged SYN ends up counted somewhere: as a half-open request, as dropped
		// because the SYN queue was full, or as answered with a cookie.
		names := []string{"TCPReqQFullDrop", "SyncookiesSent", "TCPReqQFullDoCookies"}
		q, c, err := floodListener(n, [][2]string{{"net.ipv4.tcp_syncookies", syncookies}},
			floodBacklog, count, names, []string{"TCPReqQFullDrop", "SyncookiesSent"})
		if err != nil {
			return err
		}
		defer q.Close()
		before := c.before
		f.Sent, f.HalfOpen = c.Sent, c.HalfOpen
		f.QueueFullDrops, f.CookiesSent = c.delta["TCPReqQFullDrop"], c.delta["SyncookiesSent"]
		n.Result("%d half-open (SYN_RECV); TCPReqQFullDrop +%d, SyncookiesSent +%d",
			f.HalfOpen, f.QueueFullDrops, f.CookiesSent)
		n.Kernel(sockdiag.Filter{Port: q.Addr.Port()})

		cfd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err := n.Sys(cfd, err, "socket(AF_INET, SOCK_STREAM|SOCK_NONBLOCK, 0)   /* legitimate client */"); err != nil {
			return err
		}
		defer unix.Close(cfd)
		// One retransmission only, so that giving up takes seconds, not minutes (tcp(7)).
		err = unix.SetsockoptInt(cfd, unix.IPPROTO_TCP, unix.TCP_SYNCNT, 1)
		if err := n.Sys(0, err, "setsockopt(%d, IPPROTO_TCP, TCP_SYNCNT, 1)", cfd); err != nil {
			return err
		}
		err = unix.Connect(cfd, lab.SockaddrOf(q.Addr))
		n.Sys(0, err, "connect(%d, %s)", cfd, lab.Sockaddr(lab.SockaddrOf(q.Addr)))
		if err != nil && err != unix.EINPROGRESS {
			return err
		}
		f.ClientGotIn = lab.Poll(shortWait, func() bool {
			st, _ := sockdiag.StateOf(cfd)
			f.ClientState = st
			if st == sockdiag.Established {
				return true
			}
			// Without cookies a full SYN queue drops the SYN: once the kernel counted that
			// drop, waiting longer changes nothing until a retransmission.
			now := counters("TCPReqQFullDrop")
			return syncookies == "0" && now["TCPReqQFullDrop"]-before["TCPReqQFullDrop"] > f.QueueFullDrops
		}) && f.ClientState == sockdiag.Established
		n.Kernel(sockdiag.Tuple(lab.AddrPortOf(mustSockname(cfd)), q.Addr))
		if f.ClientGotIn {
			now := counters(names...)
			f.CookiesSent = now["SyncookiesSent"] - before["SyncookiesSent"]
			n.Result("the client is ESTABLISHED; SyncookiesSent is now +%d", f.CookiesSent)
			n.Say("With the SYN queue full the kernel stored nothing for new SYNs: it encoded the " +
				"connection's parameters in the SYN-ACK's sequence number (the cookie) and rebuilt " +
				"the connection from the client's ACK. Forged SYNs cost it no memory.")
			return nil
		}
		n.Say("The SYN queue (半连接队列) is full of requests that will never complete, so the " +
			"client's SYN is dropped like the forged ones.")
		if waitFailure {
			start := time.Now()
			lab.Poll(retransmitWait, func() bool {
				st, _ := sockdiag.StateOf(cfd)
				f.ClientState = st
				return st == sockdiag.Close
			})
			soErr, err := unix.GetsockoptInt(cfd, unix.SOL_SOCKET, unix.SO_ERROR)
			if err == nil && soErr != 0 {
				f.ClientErr = unix.Errno(soErr)
			}
			n.Sys(soErr, err, "getsockopt(%d, SOL_SOCKET, SO_ERROR)   /* after %.1fs */", cfd, time.Since(start).Seconds())
			if f.ClientErr != nil {
				n.Result("%s: the legitimate client could not connect", lab.ErrnoString(errnoOf(f.ClientErr)))
			}
		}
		return nil
	})
	return f, err
}

func mustSockname(fd int) unix.Sockaddr {
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return &unix.SockaddrInet4{}
	}
	return sa
}

// halfOpenLifetime floods with count SYNs (all fit in the SYN queue) in a namespace where
// net.ipv4.tcp_synack_retries is retries, and measures how long the half-open entries live.
func halfOpenLifetime(n *lab.Narrator, retries string, count int) (initial int, lived time.Duration, err error) {
	n.Step("tcp_synack_retries=%s: how long half-open entries live", retries)
	err = inFreshHost(n, "synack", func() error {
		if err := setSysctl(n, "net.ipv4.tcp_synack_retries", retries); err != nil {
			return err
		}
		if err := floodNetwork(n); err != nil {
			return err
		}
		q, err := openListener(n, netip.AddrPortFrom(floodServer, 0), 4*count)
		if err != nil {
			return err
		}
		defer q.Close()
		if _, err := sendFlood(n, q.Addr, count); err != nil {
			return err
		}
		start := time.Now()
		lab.Poll(shortWait, func() bool { initial, _ = halfOpenCount(q.Addr); return initial == count })
		n.Result("%d half-open requests", initial)
		if !lab.Poll(retransmitWait, func() bool { k, err := halfOpenCount(q.Addr); return err == nil && k == 0 }) {
			return fmt.Errorf("half-open requests still there after %v", retransmitWait)
		}
		lived = time.Since(start)
		n.Result("all gone after %.1fs: SYN-ACK, %s retransmission(s), dropped", lived.Seconds(), retries)
		return nil
	})
	return initial, lived, err
}

func runSynFlood(d *lab.Demo) error {
	n := d.Narrator
	d.Say("A SYN flood sends SYNs from forged addresses: each one makes the server keep a " +
		"half-open request and retransmit its SYN-ACK into the void, until the SYN queue is " +
		"full and real clients are turned away.")
	if !d.NeedPrivate("SYN flood (forged packets from a raw socket)") {
		return nil
	}
	if _, err := synFlood(n, "0", 64, true); err != nil {
		return err
	}
	if _, err := synFlood(n, "1", 64, false); err != nil {
		return err
	}
	if _, _, err := halfOpenLifetime(n, "1", 16); err != nil {
		return err
	}
	if _, err := maxSynBacklogFlood(n, 16, 200, true); err != nil {
		return err
	}
	_, err := maxSynBacklogFlood(n, 1024, 200, false)
	return err
}

// synBacklogListen is the listen() backlog of the tcp_max_syn_backlog experiment: large, so
// that the sysctl, not the backlog, is the first limit a flood meets.
const synBacklogListen = 128

// halfOpenLimit is the most half-open (SYN_RECV) requests a listener keeps when SYN cookies are
// off, from tcp_conn_request() in net/ipv4/tcp_input.c. A SYN is dropped when the SYN queue
// already holds more than the backlog (inet_csk_reqsk_queue_is_full, counted as
// TCPReqQFullDrop), or — for peers the kernel has never completed a connection with — when
// fewer than a quarter of tcp_max_syn_backlog remains: max - qlen < max>>2. A request is
// therefore added while qlen <= max - max>>2, and the queue stops at one more than that.
func halfOpenLimit(maxSynBacklog, backlog int) int {
	return min(backlog+1, maxSynBacklog-maxSynBacklog>>2+1)
}

// synBacklogFacts is what the kernel kept of a SYN flood at one net.ipv4.tcp_max_syn_backlog.
type synBacklogFacts struct {
	MaxSynBacklog, Backlog, Sent int
	HalfOpen                     int   // SYN_RECV requests of the listener
	ListenDrops                  int64 // TcpExt ListenDrops: every SYN a listener dropped
	QueueFullDrops               int64 // TcpExt TCPReqQFullDrop: dropped as the SYN queue was full
	Overflows                    int64 // TcpExt ListenOverflows: dropped as the accept queue was full
}

// maxSynBacklogFlood floods a listen(fd, 128) listener with count forged SYNs in a fresh
// namespace where tcp_syncookies=0 and tcp_max_syn_backlog=maxSynBacklog, and counts what the
// kernel kept and what it dropped.
func maxSynBacklogFlood(n *lab.Narrator, maxSynBacklog, count int, table bool) (synBacklogFacts, error) {
	f := synBacklogFacts{MaxSynBacklog: maxSynBacklog, Backlog: synBacklogListen}
	n.Step("tcp_max_syn_backlog=%d, no cookies: %d forged SYNs to listen(fd, %d)",
		maxSynBacklog, count, synBacklogListen)
	err := inFreshHost(n, "synbacklog", func() error {
		// Every forged SYN ends up either as a half-open request or as a drop the kernel
		// counted (tcp_listendrop counts each drop on this path as ListenDrops).
		q, c, err := floodListener(n, [][2]string{
			{"net.ipv4.tcp_syncookies", "0"},
			{"net.ipv4.tcp_max_syn_backlog", fmt.Sprint(maxSynBacklog)},
		}, synBacklogListen, count, []string{"ListenDrops", "TCPReqQFullDrop", "ListenOverflows"},
			[]string{"ListenDrops"})
		if err != nil {
			return err
		}
		defer q.Close()
		f.Sent, f.HalfOpen = c.Sent, c.HalfOpen
		f.ListenDrops, f.QueueFullDrops, f.Overflows = c.delta["ListenDrops"], c.delta["TCPReqQFullDrop"], c.delta["ListenOverflows"]
		n.Result("%d half-open (SYN_RECV), %d dropped", f.HalfOpen, f.ListenDrops)
		n.Result("TcpExt ListenDrops +%d, TCPReqQFullDrop +%d, ListenOverflows +%d",
			f.ListenDrops, f.QueueFullDrops, f.Overflows)
		if table {
			n.Kernel(sockdiag.Filter{Port: q.Addr.Port()})
		}
		limit := halfOpenLimit(maxSynBacklog, synBacklogListen)
		if limit <= synBacklogListen {
			n.Say("The SYN queue stopped at %d, far below the backlog's %d: without cookies "+
				"the kernel keeps the last quarter of tcp_max_syn_backlog for peers it has "+
				"completed a connection with before. It adds a request while the queue "+
				"holds at most %d - %d/4 = %d, so it stops at %d; the other SYNs are "+
				"dropped and counted only as ListenDrops.",
				f.HalfOpen, synBacklogListen+1, maxSynBacklog, maxSynBacklog,
				maxSynBacklog-maxSynBacklog>>2, limit)
		} else {
			n.Say("Now the backlog is the limit: %d half-open requests (backlog+1); "+
				"three quarters of tcp_max_syn_backlog would be %d. The rest found the "+
				"SYN queue full (TCPReqQFullDrop).", f.HalfOpen, maxSynBacklog-maxSynBacklog>>2)
		}
		return nil
	})
	return f, err
}
