//go:build linux

package capture_test

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"socklab/internal/capture"
	"socklab/internal/lab"
	"socklab/internal/labtest"
	"socklab/internal/sockdiag"
)

func TestMain(m *testing.M) { labtest.Main(m, nil) }

const wait = 3 * time.Second

// tcpiOptWScale is TCPI_OPT_WSCALE (include/uapi/linux/tcp.h), missing from x/sys.
const tcpiOptWScale = 4

// startCapture starts a capture limited to ports and stops it when the test ends.
func startCapture(t *testing.T, ports ...uint16) *capture.Capture {
	t.Helper()
	labtest.NeedPrivate(t)
	c, err := capture.Start(ports...)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, c.Close()) })
	return c
}

// conn is one loopback connection made by a test: the listener, the client and the accepted end.
type conn struct {
	lfd          int
	c, s         *endpoint
	laddr, caddr netip.AddrPort
}

// endpoint is an fd closed when the test ends unless the test closed it first. (Not
// labtest.Own/CloseNow: they remember closed fds by number per test, so a test that closes and
// gets back the same number twice would have its second cleanup close a number that another
// parallel test owns by then.)
type endpoint struct {
	fd     int
	closed bool
}

func own(t *testing.T, fd int) *endpoint {
	e := &endpoint{fd: fd}
	t.Cleanup(func() {
		if !e.closed {
			unix.Close(e.fd)
		}
	})
	return e
}

func (e *endpoint) close(t *testing.T) {
	t.Helper()
	e.closed = true
	require.NoError(t, unix.Close(e.fd))
}

// listen opens a listener on a fresh port of listenOn and starts a capture on that port before
// any connect, so the SYN is recorded.
func listen(t *testing.T, listenOn netip.AddrPort) (lfd int, laddr netip.AddrPort, c *capture.Capture) {
	t.Helper()
	labtest.NeedPrivate(t)
	lfd, laddr = labtest.Listen(t, listenOn, 16)
	return lfd, laddr, startCapture(t, laddr.Port())
}

func dial(t *testing.T, lfd int, laddr netip.AddrPort) conn {
	t.Helper()
	family := unix.AF_INET
	if laddr.Addr().Is6() {
		family = unix.AF_INET6
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	client := own(t, fd)
	require.NoError(t, unix.Connect(fd, lab.SockaddrOf(laddr)))
	caddr := labtest.LocalAddr(t, fd)
	pollIn(t, lfd)
	nfd, peer, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC)
	require.NoError(t, err)
	server := own(t, nfd)
	require.Equal(t, caddr, lab.AddrPortOf(peer))
	return conn{lfd: lfd, c: client, s: server, laddr: laddr, caddr: caddr}
}

// pollIn waits until fd is readable (a connection to accept, data or a FIN to read).
func pollIn(t *testing.T, fd int) {
	t.Helper()
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	deadline := time.Now().Add(wait)
	for {
		n, err := unix.Poll(fds, int(time.Until(deadline).Milliseconds())+1)
		if err == unix.EINTR {
			continue
		}
		require.NoError(t, err)
		require.Equal(t, 1, n, "fd %d never became readable", fd)
		return
	}
}

// readEOF waits until fd is readable and checks that read returns 0: the peer's FIN arrived.
func readEOF(t *testing.T, fd int) {
	t.Helper()
	pollIn(t, fd)
	buf := make([]byte, 64)
	n, err := unix.Read(fd, buf)
	require.NoError(t, err)
	require.Equal(t, 0, n, "read() after the peer's FIN")
}

// exchange sends one message from the client and reads it on the server. After it the server
// has received data, which arms its delayed-ACK machinery with the 40 ms minimum (TCP_ATO_MIN);
// on a connection that never carried data the ACK of a FIN leaves at the next timer tick.
func exchange(t *testing.T, k conn) {
	t.Helper()
	_, err := unix.Write(k.c.fd, []byte("hello"))
	require.NoError(t, err)
	buf := make([]byte, 64)
	n, err := unix.Read(k.s.fd, buf)
	require.NoError(t, err)
	require.Equal(t, 5, n)
}

// closeBoth closes the client first, then the server once it has read the FIN, and waits until
// the wire shows both FINs acknowledged.
func closeBoth(t *testing.T, c *capture.Capture, k conn) *capture.Conversation {
	t.Helper()
	k.c.close(t)
	readEOF(t, k.s.fd)
	k.s.close(t)
	conv, err := c.WaitConversation(k.caddr, k.laddr, wait, (*capture.Conversation).Closed)
	require.NoError(t, err, dump(conv))
	return conv
}

func dump(conv *capture.Conversation) string {
	if conv == nil {
		return "no conversation"
	}
	s := ""
	for _, seg := range conv.Segments {
		s += "\n  " + seg.From.String() + " " + seg.String()
	}
	return s
}

// main flags of a segment, ignoring ECN bits.
const mainFlags = capture.SYN | capture.ACK | capture.FIN | capture.RST | capture.PSH | capture.URG

func requireSegment(t *testing.T, seg capture.Segment, from capture.Side, flags capture.Flags, what string) {
	t.Helper()
	require.Equal(t, from, seg.From, "%s: sender of %v", what, seg)
	require.Equal(t, flags, seg.Flags&mainFlags, "%s: flags of %v", what, seg)
}

// The handshake on the wire: SYN seq=x from the client, SYN-ACK seq=y ack=x+1 from the server,
// ACK seq=x+1 ack=y+1 from the client — in that order, each once.
func TestHandshakeIsSynSynAckAck(t *testing.T) {
	t.Parallel()
	lfd, laddr, c := listen(t, labtest.Loopback4)
	k := dial(t, lfd, laddr)
	conv, err := c.WaitConversation(k.caddr, k.laddr, wait, capture.AtLeast(3))
	require.NoError(t, err, dump(conv))
	require.Equal(t, k.caddr, conv.Client, "the client is the side that sent the SYN")
	require.Equal(t, k.laddr, conv.Server)

	syn, synAck, ack := conv.Segments[0], conv.Segments[1], conv.Segments[2]
	requireSegment(t, syn, capture.Client, capture.SYN, "first segment")
	requireSegment(t, synAck, capture.Server, capture.SYN|capture.ACK, "second segment")
	requireSegment(t, ack, capture.Client, capture.ACK, "third segment")

	assert.Equal(t, conv.ClientISN, syn.Seq)
	assert.Equal(t, conv.ServerISN, synAck.Seq)
	assert.Equal(t, syn.Seq+1, synAck.Ack, "SYN-ACK acknowledges the client's ISN + 1 (a SYN consumes one sequence number)")
	assert.Equal(t, syn.Seq+1, ack.Seq, "the final ACK carries the client's next sequence number")
	assert.Equal(t, synAck.Seq+1, ack.Ack, "the final ACK acknowledges the server's ISN + 1")
	for _, s := range conv.Segments[:3] {
		assert.Zero(t, s.Len, "no payload in the handshake: %v", s)
	}
	// Relative numbers, as Wireshark shows them.
	assert.Equal(t, [2]uint32{0, 0}, [2]uint32{syn.RelSeq, syn.RelAck})
	assert.Equal(t, [2]uint32{0, 1}, [2]uint32{synAck.RelSeq, synAck.RelAck})
	assert.Equal(t, [2]uint32{1, 1}, [2]uint32{ack.RelSeq, ack.RelAck})

	// Over the whole connection, including its close, each side sent exactly one SYN.
	conv = closeBoth(t, c, k)
	syns := map[capture.Side]int{}
	for _, s := range conv.Segments {
		if s.Flags&capture.SYN != 0 {
			syns[s.From]++
		}
	}
	assert.Equal(t, map[capture.Side]int{capture.Client: 1, capture.Server: 1}, syns, dump(conv))
}

// The options the capture parses from the SYNs are the ones the kernel agreed on: the window
// scale each side announced equals tcpi_snd_wscale / tcpi_rcv_wscale in the client's TCP_INFO,
// and the scaled window is the raw field shifted by it.
func TestSYNOptionsMatchTCPInfo(t *testing.T) {
	t.Parallel()
	lfd, laddr, c := listen(t, labtest.Loopback4)
	k := dial(t, lfd, laddr)
	conv, err := c.WaitConversation(k.caddr, k.laddr, wait, capture.AtLeast(3))
	require.NoError(t, err, dump(conv))
	info, err := sockdiag.TCPInfo(k.c.fd)
	require.NoError(t, err)
	// x/sys's TCPInfo leaves the tcpi_snd_wscale:4 / tcpi_rcv_wscale:4 bitfield byte (offset 6
	// of struct tcp_info, include/uapi/linux/tcp.h) as padding; the kernel filled it in.
	wscales := (*[8]byte)(unsafe.Pointer(info))[6]
	sndWScale, rcvWScale := int(wscales&0x0f), int(wscales>>4)

	syn, synAck, ack := conv.Segments[0], conv.Segments[1], conv.Segments[2]
	require.NotZero(t, info.Options&tcpiOptWScale, "window scaling negotiated")
	assert.Equal(t, rcvWScale, syn.WScale, "client's SYN announces the scale it applies to its receive window")
	assert.Equal(t, sndWScale, synAck.WScale, "server's SYN-ACK announces the scale the client applies when sending")
	assert.NotZero(t, syn.MSS, "SYN carries an MSS option")
	assert.Equal(t, int(ack.Window)<<syn.WScale, ack.Win, "scaled window of the final ACK")
	assert.Equal(t, int(syn.Window), syn.Win, "a SYN's window is never scaled")
}

// A FIN consumes one sequence number: the ACK of a FIN acknowledges the FIN's seq + 1, and data
// before it counts one number per byte.
func TestFINConsumesOneSequenceNumber(t *testing.T) {
	t.Parallel()
	lfd, laddr, c := listen(t, labtest.Loopback4)
	k := dial(t, lfd, laddr)
	msg := []byte("hello")
	_, err := unix.Write(k.c.fd, msg)
	require.NoError(t, err)
	buf := make([]byte, 64)
	n, err := unix.Read(k.s.fd, buf)
	require.NoError(t, err)
	require.Equal(t, len(msg), n)

	conv := closeBoth(t, c, k)
	var finOf [2]*capture.Segment
	for i := range conv.Segments {
		s := &conv.Segments[i]
		if s.Flags&capture.FIN != 0 {
			require.Nil(t, finOf[s.From], "one FIN per side: %s", dump(conv))
			finOf[s.From] = s
		}
	}
	require.NotNil(t, finOf[capture.Client], dump(conv))
	require.NotNil(t, finOf[capture.Server], dump(conv))
	cfin, sfin := *finOf[capture.Client], *finOf[capture.Server]
	assert.Equal(t, uint32(1+len(msg)), cfin.RelSeq, "client FIN comes after the SYN's number and 5 bytes")
	assert.Equal(t, uint32(1), sfin.RelSeq, "server sent no data: its FIN uses number 1")
	for _, f := range []capture.Segment{cfin, sfin} {
		acked := false
		for _, s := range conv.Segments {
			if s.From != f.From && s.Flags&capture.ACK != 0 && s.Ack == f.Seq+1 {
				acked = true
			}
			assert.False(t, s.From != f.From && s.Ack == f.Seq+2, "nothing acknowledges more than FIN+1: %v", s)
		}
		assert.True(t, acked, "the ACK of %v is its seq + 1: %s", f, dump(conv))
	}
}

// closeTail returns the segments after the handshake, once the connection is closed.
func closeTail(t *testing.T, conv *capture.Conversation, handshake int) []capture.Segment {
	t.Helper()
	require.GreaterOrEqual(t, len(conv.Segments), handshake, dump(conv))
	return conv.Segments[handshake:]
}

// The passive side closes right after read() returns 0: its FIN leaves before the delayed-ACK
// timer (TCP_DELACK_MIN, 40 ms) fires, so the ACK of the client's FIN rides on it. Three
// segments: FIN, FIN-ACK, ACK.
func TestPromptPassiveCloseGivesThreeSegments(t *testing.T) {
	t.Parallel()
	lfd, laddr, c := listen(t, labtest.Loopback4)
	// The premise is that the passive close happens well inside the 40 ms timer. On a loaded
	// machine this goroutine can be descheduled for longer; that run proves nothing, so it is
	// repeated (at most 5 times), and the kernel's own timestamps decide which case happened.
	const promptGap = 20 * time.Millisecond
	for attempt := 1; attempt <= 5; attempt++ {
		k := dial(t, lfd, laddr)
		exchange(t, k)
		_, err := c.WaitConversation(k.caddr, k.laddr, wait, capture.AtLeast(5))
		require.NoError(t, err)
		k.c.close(t)
		readEOF(t, k.s.fd)
		k.s.close(t)
		conv, err := c.WaitConversation(k.caddr, k.laddr, wait, (*capture.Conversation).Closed)
		require.NoError(t, err, dump(conv))
		tail := closeTail(t, conv, 5)
		cfin := tail[0]
		requireSegment(t, cfin, capture.Client, capture.FIN|capture.ACK, "first close segment")
		sfin := conv.From(capture.Server)[len(conv.From(capture.Server))-1]
		if gap := sfin.Time.Sub(cfin.Time); gap > promptGap {
			t.Logf("attempt %d: the passive close came %v after the FIN (not prompt); again", attempt, gap)
			continue
		}
		require.Len(t, tail, 3, "FIN, FIN-ACK, ACK: %s", dump(conv))
		requireSegment(t, tail[1], capture.Server, capture.FIN|capture.ACK, "second close segment")
		requireSegment(t, tail[2], capture.Client, capture.ACK, "third close segment")
		assert.Equal(t, cfin.Seq+1, tail[1].Ack, "the server's FIN carries the ACK of the client's FIN")
		assert.Equal(t, tail[1].Seq+1, tail[2].Ack, "the last ACK acknowledges the server's FIN + 1")
		return
	}
	t.Fatalf("in 5 attempts the passive side never closed within %v of the FIN", promptGap)
}

// The passive side does not close at once: the kernel acknowledges the FIN on its own when the
// delayed-ACK timer fires (about 40 ms here), and the FIN that close() sends later is a segment
// of its own. Four segments: FIN, ACK, FIN, ACK.
func TestPassiveCloseAfterDelayedACKGivesFourSegments(t *testing.T) {
	t.Parallel()
	lfd, laddr, c := listen(t, labtest.Loopback4)
	k := dial(t, lfd, laddr)
	exchange(t, k) // handshake, data, its ACK: 5 segments
	_, err := c.WaitConversation(k.caddr, k.laddr, wait, capture.AtLeast(5))
	require.NoError(t, err)
	k.c.close(t)
	readEOF(t, k.s.fd)
	// The scenario: the passive side waits. Rather than sleeping a fixed 100 ms, wait for the
	// event itself — the kernel's stand-alone ACK of the FIN — with a deadline.
	isFINAck := func(conv *capture.Conversation) bool {
		tail := conv.Segments[min(5, len(conv.Segments)):]
		return len(tail) >= 2 && tail[0].Flags&capture.FIN != 0 &&
			tail[1].From == capture.Server && tail[1].Flags&mainFlags == capture.ACK && tail[1].Ack == tail[0].Seq+1
	}
	conv, err := c.WaitConversation(k.caddr, k.laddr, wait, isFINAck)
	require.NoError(t, err, "the kernel never acknowledged the FIN by itself: %s", dump(conv))
	delay := conv.Segments[6].Time.Sub(conv.Segments[5].Time)
	t.Logf("the FIN was acknowledged %v after it arrived (delayed ACK)", delay)
	assert.GreaterOrEqual(t, delay, 20*time.Millisecond, "the ACK of the FIN was delayed, not immediate")
	k.s.close(t)

	conv, err = c.WaitConversation(k.caddr, k.laddr, wait, (*capture.Conversation).Closed)
	require.NoError(t, err, dump(conv))
	tail := closeTail(t, conv, 5)
	require.Len(t, tail, 4, "FIN, ACK, FIN, ACK: %s", dump(conv))
	requireSegment(t, tail[0], capture.Client, capture.FIN|capture.ACK, "first close segment")
	requireSegment(t, tail[1], capture.Server, capture.ACK, "second close segment")
	requireSegment(t, tail[2], capture.Server, capture.FIN|capture.ACK, "third close segment")
	requireSegment(t, tail[3], capture.Client, capture.ACK, "fourth close segment")
	assert.Equal(t, tail[0].Seq+1, tail[1].Ack)
	assert.Equal(t, tail[0].Seq+1, tail[2].Ack, "the server's FIN repeats the same ACK")
	assert.Equal(t, tail[2].Seq+1, tail[3].Ack)
}

// Every connection starts from a different initial sequence number (RFC 6528: a keyed hash of
// the 4-tuple plus a clock), on both sides.
func TestISNsDifferPerConnection(t *testing.T) {
	t.Parallel()
	lfd, laddr, c := listen(t, labtest.Loopback4)
	const conns = 5
	clientISNs, serverISNs := map[uint32]bool{}, map[uint32]bool{}
	for range conns {
		k := dial(t, lfd, laddr)
		conv := closeBoth(t, c, k)
		require.True(t, conv.SawClientSYN && conv.SawServerSYN, dump(conv))
		assert.NotEqual(t, conv.ClientISN, conv.ServerISN)
		clientISNs[conv.ClientISN] = true
		serverISNs[conv.ServerISN] = true
	}
	assert.Len(t, clientISNs, conns, "client ISNs %v", clientISNs)
	assert.Len(t, serverISNs, conns, "server ISNs %v", serverISNs)
}

// Loopback delivers every packet to a packet socket twice (leaving and arriving); the capture
// keeps each segment once. The witness is the kernel's own count: the client's tcpi_segs_out and
// tcpi_segs_in equal the segments recorded in each direction.
func TestEachSegmentRecordedOnce(t *testing.T) {
	t.Parallel()
	lfd, laddr, c := listen(t, labtest.Loopback4)
	k := dial(t, lfd, laddr)
	buf := make([]byte, 256)
	for i := range 5 { // small messages: one segment each (no GSO super-packets)
		_, err := unix.Write(k.c.fd, []byte(fmt.Sprintf("ping %d", i)))
		require.NoError(t, err)
		_, err = unix.Read(k.s.fd, buf)
		require.NoError(t, err)
		_, err = unix.Write(k.s.fd, []byte("pong"))
		require.NoError(t, err)
		_, err = unix.Read(k.c.fd, buf)
		require.NoError(t, err)
	}
	labtest.WaitFor(t, wait, "captured segments to equal the client's TCP_INFO counts", func() (bool, string) {
		info, err := sockdiag.TCPInfo(k.c.fd)
		if err != nil {
			return false, err.Error()
		}
		conv := c.Conversation(k.caddr, k.laddr)
		out, in := len(conv.From(capture.Client)), len(conv.From(capture.Server))
		return uint32(out) == info.Segs_out && uint32(in) == info.Segs_in,
			fmt.Sprintf("captured %d out / %d in, kernel counts segs_out=%d segs_in=%d",
				out, in, info.Segs_out, info.Segs_in)
	})
	conv := c.Conversation(k.caddr, k.laddr)
	seen := map[string]bool{}
	for _, s := range conv.Segments {
		key := s.String()
		assert.False(t, seen[key], "segment recorded twice: %v", key)
		seen[key] = true
	}
}

// The BPF filter runs in the kernel: a capture on one port records nothing of a connection on
// another port, which an unfiltered capture running at the same time does record.
func TestPortFilterExcludesOtherConnections(t *testing.T) {
	t.Parallel()
	labtest.NeedPrivate(t)
	lfdA, laddrA := labtest.Listen(t, labtest.Loopback4, 4)
	lfdB, laddrB := labtest.Listen(t, labtest.Loopback4, 4)
	onlyA := startCapture(t, laddrA.Port())
	everything := startCapture(t)

	// B first and completely: its segments reach the capture sockets before any of A's, so by
	// the time A's conversation is recorded, B's would have been read if the filter let them in.
	b := dial(t, lfdB, laddrB)
	convB := closeBoth(t, everything, b)
	require.GreaterOrEqual(t, len(convB.Segments), 6, "the unfiltered capture saw connection B")
	a := dial(t, lfdA, laddrA)
	closeBoth(t, onlyA, a)

	for _, s := range onlyA.Segments() {
		assert.True(t, s.Src.Port() == laddrA.Port() || s.Dst.Port() == laddrA.Port(),
			"filtered capture recorded a segment of another port: %v", s)
	}
	assert.Empty(t, onlyA.Conversation(b.caddr, b.laddr).Segments)
}

// IPv6 works the same way: ::1, a 40-byte header, the same handshake.
func TestIPv6Handshake(t *testing.T) {
	t.Parallel()
	labtest.NeedPrivate(t)
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	err = unix.Bind(fd, &unix.SockaddrInet6{Addr: [16]byte{15: 1}})
	unix.Close(fd)
	if err != nil {
		t.Skipf("no ::1 in this namespace: %v", err)
	}
	lfd, laddr, c := listen(t, netip.MustParseAddrPort("[::1]:0"))
	k := dial(t, lfd, laddr)
	conv, err := c.WaitConversation(k.caddr, k.laddr, wait, capture.AtLeast(3))
	require.NoError(t, err, dump(conv))
	requireSegment(t, conv.Segments[0], capture.Client, capture.SYN, "first segment")
	requireSegment(t, conv.Segments[1], capture.Server, capture.SYN|capture.ACK, "second segment")
	requireSegment(t, conv.Segments[2], capture.Client, capture.ACK, "third segment")
	assert.Equal(t, conv.Segments[0].Seq+1, conv.Segments[1].Ack)
	assert.Equal(t, conv.Segments[1].Seq+1, conv.Segments[2].Ack)
	closeBoth(t, c, k)
}

// WaitFor returns the segments once enough are recorded, and says how many are missing when
// they never come.
func TestWaitForCountsAndTimesOut(t *testing.T) {
	t.Parallel()
	lfd, laddr, c := listen(t, labtest.Loopback4)
	dial(t, lfd, laddr)
	segs, err := c.WaitFor(3, wait)
	require.NoError(t, err)
	require.GreaterOrEqual(t, len(segs), 3)
	_, err = c.WaitFor(1000, 50*time.Millisecond)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "of 1000 segments")
}

// KernelStates reads both ends' states from sock_diag; recorded after each step of a close, they
// appear beside the arrows that caused them: FIN_WAIT2 / CLOSE_WAIT after the ACK of the first
// FIN, TIME_WAIT / CLOSED after the last ACK.
func TestKernelStatesBesideTheClose(t *testing.T) {
	t.Parallel()
	lfd, laddr, c := listen(t, labtest.Loopback4)
	k := dial(t, lfd, laddr)
	notes, err := capture.KernelStates(k.caddr, k.laddr)
	require.NoError(t, err)
	require.Equal(t, []string{"ESTABLISHED", "ESTABLISHED"}, []string{notes[0].Text, notes[1].Text})

	k.c.close(t)
	labtest.WaitState(t, k.caddr, k.laddr, sockdiag.FinWait2, wait)
	labtest.WaitState(t, k.laddr, k.caddr, sockdiag.CloseWait, wait)
	more, err := capture.KernelStates(k.caddr, k.laddr)
	require.NoError(t, err)
	notes = append(notes, more...)

	readEOF(t, k.s.fd)
	k.s.close(t)
	labtest.WaitState(t, k.caddr, k.laddr, sockdiag.TimeWait, wait)
	labtest.WaitGone(t, k.laddr, k.caddr, wait)
	more, err = capture.KernelStates(k.caddr, k.laddr)
	require.NoError(t, err)
	notes = append(notes, more...)
	require.Equal(t, []string{"TIME_WAIT", "CLOSED"}, []string{more[0].Text, more[1].Text})

	conv, err := c.WaitConversation(k.caddr, k.laddr, wait, (*capture.Conversation).Closed)
	require.NoError(t, err, dump(conv))
	ascii := conv.ASCII(notes...)
	t.Log("\n" + ascii)
	lines := strings.Split(ascii, "\n")
	row := func(substr string) string {
		for _, l := range lines {
			if strings.Contains(l, substr) {
				return l
			}
		}
		return ""
	}
	// The ACK of the client's FIN is the server's segment that acknowledges FIN+1.
	fin := conv.From(capture.Client)[len(conv.From(capture.Client))-2]
	require.NotZero(t, fin.Flags&capture.FIN, dump(conv))
	finAck := "ack=" + strconv.FormatUint(uint64(fin.RelSeq+1), 10) + " --|"
	assert.Contains(t, row("FIN_WAIT2"), finAck, "FIN_WAIT2 beside the ACK of the FIN:\n%s", ascii)
	assert.Contains(t, row("CLOSE_WAIT"), finAck)
	assert.Contains(t, row("TIME_WAIT"), "|-- ACK", "TIME_WAIT beside the last ACK")
	assert.True(t, strings.HasSuffix(row("TIME_WAIT"), "| CLOSED"), row("TIME_WAIT"))
}

// Outside the private namespace (on the host loopback, or a demo's -host) Start refuses: a packet
// socket there would need CAP_NET_RAW and would see other programs' traffic. Runs only where
// namespaces are unavailable; everywhere else the namespace tests above run instead.
func TestStartRefusedOutsidePrivateNamespace(t *testing.T) {
	t.Parallel()
	if labtest.Env.Private {
		t.Skip("running in a private namespace: the refusal is for the host")
	}
	c, err := capture.Start()
	if c != nil {
		c.Close()
	}
	require.ErrorIs(t, err, capture.ErrNotPrivate)
}
