//go:build linux

package sockdiag_test

import (
	"bufio"
	"bytes"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"socklab/internal/labtest"
	"socklab/internal/sockdiag"
)

func TestMain(m *testing.M) { labtest.Main(m, nil) }

// A listener that never accepts: the kernel reports its accept-queue length in Recv-Q and the
// backlog in Send-Q (tcp_diag_get_info in net/ipv4/tcp_diag.c).
func TestListenerReportsAcceptQueueAndBacklog(t *testing.T) {
	t.Parallel()
	lfd, laddr := labtest.Listen(t, labtest.Loopback4, 7)
	_ = lfd
	s, found, err := sockdiag.Find(laddr, netip.AddrPortFrom(netip.IPv4Unspecified(), 0))
	require.NoError(t, err)
	require.True(t, found, "listener %v not in the kernel table", laddr)
	assert.Equal(t, sockdiag.Listen, s.State)
	assert.EqualValues(t, 0, s.RecvQ, "accept queue before any client")
	assert.EqualValues(t, 7, s.SendQ, "backlog")
	assert.True(t, s.HasFD())

	for range 3 {
		labtest.Dial(t, laddr)
	}
	labtest.WaitFor(t, 2*time.Second, "three children in the accept queue", func() (bool, string) {
		s, _, err := sockdiag.Find(laddr, netip.AddrPortFrom(netip.IPv4Unspecified(), 0))
		return err == nil && s.RecvQ == 3, s.String()
	})
}

// Both ends of a connection are ESTABLISHED, each seen with its own 4-tuple, and the kernel's
// tcp_info agrees with TCP_INFO on the fd.
func TestEstablishedOnBothEnds(t *testing.T) {
	t.Parallel()
	lfd, laddr := labtest.Listen(t, labtest.Loopback4, 1)
	cfd, caddr := labtest.Dial(t, laddr)
	sfd, peer := labtest.Accept(t, lfd, 2*time.Second)
	require.Equal(t, caddr, peer)

	client, found, err := sockdiag.Find(caddr, laddr)
	require.NoError(t, err)
	require.True(t, found)
	server, found, err := sockdiag.Find(laddr, caddr)
	require.NoError(t, err)
	require.True(t, found)
	for _, s := range []sockdiag.Socket{client, server} {
		assert.Equal(t, sockdiag.Established, s.State, s.String())
		assert.True(t, s.HasFD())
		require.NotNil(t, s.Info, "tcp_info attribute")
		assert.EqualValues(t, sockdiag.Established, s.Info.State)
	}
	for _, fd := range []int{cfd, sfd} {
		st, err := sockdiag.StateOf(fd)
		require.NoError(t, err)
		assert.Equal(t, sockdiag.Established, st)
	}

	// Bytes written but not read show in the receiver's Recv-Q.
	_, err = unix.Write(cfd, []byte("hello"))
	require.NoError(t, err)
	labtest.WaitFor(t, 2*time.Second, "5 unread bytes on the server", func() (bool, string) {
		s, _, err := sockdiag.Find(laddr, caddr)
		return err == nil && s.RecvQ == 5, s.String()
	})
}

// The side that closes first ends in TIME_WAIT: no fd, the timewait timer near 60 s
// (TCP_TIMEWAIT_LEN), and its still-open fd reports CLOSE through TCP_INFO.
func TestTimeWaitHasTimerAndNoFD(t *testing.T) {
	t.Parallel()
	lfd, laddr := labtest.Listen(t, labtest.Loopback4, 1)
	cfd, caddr := labtest.Dial(t, laddr)
	sfd, _ := labtest.Accept(t, lfd, 2*time.Second)

	require.NoError(t, unix.Shutdown(cfd, unix.SHUT_WR)) // client closes first
	labtest.WaitState(t, laddr, caddr, sockdiag.CloseWait, 2*time.Second)
	labtest.CloseNow(t, sfd)
	tw := labtest.WaitState(t, caddr, laddr, sockdiag.TimeWait, 2*time.Second)

	assert.False(t, tw.HasFD(), "TIME_WAIT is a mini-socket with no fd: %v", tw)
	assert.Equal(t, sockdiag.TimerTimeWait, tw.Timer)
	assert.Greater(t, tw.Expires, 50*time.Second, tw.String())
	assert.LessOrEqual(t, tw.Expires, 60*time.Second, tw.String())
	st, err := sockdiag.StateOf(cfd)
	require.NoError(t, err)
	assert.Equal(t, sockdiag.Close, st, "the fd still held reports CLOSE, not TIME_WAIT")
	labtest.WaitGone(t, laddr, caddr, 2*time.Second) // the server's socket is gone entirely
}

// A client whose SYN finds the accept queue full stays in SYN_SENT: listen(fd, 0) admits one
// connection, the second client's SYNs are dropped.
func TestSynSentWhileQueueFull(t *testing.T) {
	t.Parallel()
	_, laddr := labtest.Listen(t, labtest.Loopback4, 0)
	_, first := labtest.Dial(t, laddr)
	labtest.WaitState(t, laddr, first, sockdiag.Established, 2*time.Second)
	fd, second := labtest.DialNonblock(t, laddr)
	s := labtest.WaitState(t, second, laddr, sockdiag.SynSent, 2*time.Second)
	assert.Equal(t, sockdiag.TimerRetransmit, s.Timer, "SYN retransmission timer: %v", s)
	st, err := sockdiag.StateOf(fd)
	require.NoError(t, err)
	assert.Equal(t, sockdiag.SynSent, st)
}

func TestUDPSocketsAreListed(t *testing.T) {
	t.Parallel()
	fd := labtest.Socket(t, labtest.Loopback4, unix.SOCK_DGRAM)
	require.NoError(t, unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}))
	local := labtest.LocalAddr(t, fd)
	socks, err := sockdiag.Dump(sockdiag.UDP, sockdiag.Filter{Port: local.Port()})
	require.NoError(t, err)
	require.Len(t, socks, 1)
	assert.Equal(t, local, socks[0].Local)
	assert.Equal(t, "UNCONN", socks[0].StateName())
}

func TestIPv6AndFilters(t *testing.T) {
	t.Parallel()
	loop6 := netip.AddrPortFrom(netip.IPv6Loopback(), 0)
	lfd, laddr := labtest.Listen(t, loop6, 1)
	_, caddr := labtest.Dial(t, laddr)
	labtest.Accept(t, lfd, 2*time.Second)
	socks, err := sockdiag.Dump(sockdiag.TCP, sockdiag.Filter{Port: laddr.Port(), States: []sockdiag.State{sockdiag.Established}})
	require.NoError(t, err)
	assert.Len(t, socks, 2, "both ends of the IPv6 connection")
	for _, s := range socks {
		assert.Equal(t, unix.AF_INET6, s.Family)
	}
	socks, err = sockdiag.Dump(sockdiag.TCP, sockdiag.Tuple(caddr, laddr))
	require.NoError(t, err)
	require.Len(t, socks, 1)
	assert.Equal(t, caddr, socks[0].Local)
}

func TestStateNamesRoundTrip(t *testing.T) {
	for s := sockdiag.Established; s <= sockdiag.Closing; s++ {
		got, err := sockdiag.ParseState(s.String())
		require.NoError(t, err)
		assert.Equal(t, s, got)
	}
	_, err := sockdiag.ParseState("NOPE")
	assert.Error(t, err)
}

// Cross-check with ss(8): for the same sockets, ss -tan must list the same states and
// endpoints as our dump. ss shortens names (ESTAB, TIME-WAIT, FIN-WAIT-2, ...).
func TestAgreesWithSS(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("ss"); err != nil {
		t.Skip("ss (iproute2) is not installed")
	}
	lfd, laddr := labtest.Listen(t, labtest.Loopback4, 3)
	cfd, caddr := labtest.Dial(t, laddr)
	sfd, _ := labtest.Accept(t, lfd, 2*time.Second)
	require.NoError(t, unix.Shutdown(sfd, unix.SHUT_WR)) // server FIN_WAIT2, client CLOSE_WAIT
	labtest.WaitState(t, laddr, caddr, sockdiag.FinWait2, 2*time.Second)
	labtest.WaitState(t, caddr, laddr, sockdiag.CloseWait, 2*time.Second)
	_ = cfd

	ours, err := sockdiag.Dump(sockdiag.TCP, sockdiag.Filter{Port: laddr.Port()})
	require.NoError(t, err)
	out, err := exec.Command("ss", "-tanH", fmt.Sprintf("( sport = :%d or dport = :%d )", laddr.Port(), laddr.Port())).Output()
	require.NoError(t, err)
	theirs := parseSS(t, out)
	var want []string
	for _, s := range ours {
		want = append(want, ssName(s.State)+" "+s.Local.String()+" "+formatPeer(s.Remote))
	}
	assert.ElementsMatch(t, want, theirs, "ss output:\n%s", out)
	assert.Len(t, ours, 3, "listener, FIN_WAIT2 and CLOSE_WAIT")
}

func parseSS(t *testing.T, out []byte) []string {
	var rows []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 5 {
			continue
		}
		rows = append(rows, f[0]+" "+f[3]+" "+f[4])
	}
	return rows
}

func formatPeer(ap netip.AddrPort) string {
	if ap.Port() == 0 {
		return ap.Addr().String() + ":*"
	}
	return ap.String()
}

var ssNames = map[sockdiag.State]string{
	sockdiag.Established: "ESTAB", sockdiag.SynSent: "SYN-SENT", sockdiag.SynRecv: "SYN-RECV",
	sockdiag.FinWait1: "FIN-WAIT-1", sockdiag.FinWait2: "FIN-WAIT-2", sockdiag.TimeWait: "TIME-WAIT",
	sockdiag.Close: "UNCONN", sockdiag.CloseWait: "CLOSE-WAIT", sockdiag.LastAck: "LAST-ACK",
	sockdiag.Listen: "LISTEN", sockdiag.Closing: "CLOSING",
}

func ssName(s sockdiag.State) string { return ssNames[s] }

func TestWriteTable(t *testing.T) {
	var b strings.Builder
	// The widest IPv4 row the chapters print: the longest state name in the
	// table, five-digit ports on both ends, a timer and no fd, behind the
	// narrator's "  | " prefix.
	sockdiag.WriteTable(&b, "  | ", []sockdiag.Socket{{
		Protocol: unix.IPPROTO_TCP, State: sockdiag.TimeWait,
		Local:  netip.MustParseAddrPort("127.0.0.1:59000"),
		Remote: netip.MustParseAddrPort("127.0.0.1:40000"),
		Timer:  sockdiag.TimerTimeWait, Expires: 59800 * time.Millisecond,
	}, {
		Protocol: unix.IPPROTO_TCP, State: sockdiag.Established, Inode: 1,
		Local:  netip.MustParseAddrPort("127.0.0.1:65535"),
		Remote: netip.MustParseAddrPort("127.0.0.1:65534"),
		Timer:  sockdiag.TimerRetransmit, Expires: 204 * time.Millisecond, Retransmits: 1,
	}})
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	require.Len(t, lines, 3)
	assert.Contains(t, lines[1], "TIME_WAIT")
	// Long timers in whole seconds, as ss prints them...
	assert.Contains(t, lines[1], "timewait 60s no fd")
	// ...short ones in tenths, where the difference matters.
	assert.Contains(t, lines[2], "on 0.2s retrans 1")
	assert.NotContains(t, lines[2], "no fd")
	for _, l := range lines {
		assert.LessOrEqual(t, len(l), 80, "fits an 80-column terminal: %q", l)
	}
}

func TestCounterReadsNetstat(t *testing.T) {
	before, err := sockdiag.Counter("Tcp", "ActiveOpens")
	require.NoError(t, err)
	lfd, laddr := labtest.Listen(t, labtest.Loopback4, 1)
	labtest.Dial(t, laddr)
	labtest.Accept(t, lfd, 2*time.Second)
	after, err := sockdiag.Counter("Tcp", "ActiveOpens")
	require.NoError(t, err)
	assert.GreaterOrEqual(t, after-before, int64(1), "one active open (connect) was counted")
	_, err = sockdiag.Counter("TcpExt", "ListenOverflows")
	require.NoError(t, err)
	_, err = sockdiag.Counter("TcpExt", "NoSuchCounter")
	assert.Error(t, err)
}

// A row that would pass 80 columns moves its timer (or, for the header, "Timer/fd") under the
// Local column: a retransmitting request socket, a table of IPv4-mapped IPv6 addresses.
func TestWriteTableKeepsWideRowsWithin80Columns(t *testing.T) {
	var b strings.Builder
	sockdiag.WriteTable(&b, "  | ", []sockdiag.Socket{{
		Protocol: unix.IPPROTO_TCP, State: sockdiag.Established, Inode: 7,
		Local:  netip.MustParseAddrPort("127.0.0.1:53421"),
		Remote: netip.MustParseAddrPort("127.0.0.1:49206"),
	}, {
		Protocol: unix.IPPROTO_TCP, State: sockdiag.SynRecv,
		Local:  netip.MustParseAddrPort("127.0.0.1:53421"),
		Remote: netip.MustParseAddrPort("127.0.0.1:49207"),
		Timer:  sockdiag.TimerRetransmit, Expires: 4 * time.Second, Retransmits: 2,
	}})
	lines := strings.Split(strings.TrimRight(b.String(), "\n"), "\n")
	require.Len(t, lines, 4, b.String())
	assert.True(t, strings.HasPrefix(lines[2], "  | SYN_RECV "), lines[2])
	assert.NotContains(t, lines[2], "retrans")
	local := strings.Index(lines[2], "127.0.0.1:53421")
	assert.Equal(t, strings.Repeat(" ", local-4)+"on 4.0s retrans 2 no fd", lines[3][4:], "under Local")

	b.Reset()
	sockdiag.WriteTable(&b, "  | ", []sockdiag.Socket{{
		Protocol: unix.IPPROTO_TCP, State: sockdiag.Established, Inode: 9,
		Local:  netip.MustParseAddrPort("[::ffff:127.0.0.1]:45678"),
		Remote: netip.MustParseAddrPort("[::ffff:127.0.0.1]:56789"),
	}})
	header := strings.SplitN(b.String(), "\n", 3)
	require.Len(t, header, 3)
	assert.Equal(t, strings.Index(header[0], "Local"), strings.Index(header[1], "Timer/fd"),
		"the header's last column moved under Local: %q", b.String())
	for _, l := range strings.Split(strings.TrimRight(b.String(), "\n"), "\n") {
		assert.LessOrEqual(t, len(l), 80, "%q", l)
	}
	for _, l := range lines {
		assert.LessOrEqual(t, len(l), 80, "%q", l)
	}
}
