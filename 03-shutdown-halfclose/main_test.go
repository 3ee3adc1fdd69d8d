//go:build linux

package main

import (
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"socklab/internal/lab"
	"socklab/internal/labtest"
	"socklab/internal/netlab"
	"socklab/internal/sockdiag"
)

func TestMain(m *testing.M) { labtest.Main(m, &program) }

// quiet is a demo that prints nothing, in the tests' namespace.
func quiet() *lab.Demo { return &lab.Demo{Narrator: lab.Quiet(), Env: labtest.Env} }

var sortInput = []byte("pear\napple\nfig\n")

// assertEnd checks one end as the kernel reported it.
func assertEnd(t *testing.T, e End, want sockdiag.State, what string) {
	t.Helper()
	if want == Gone {
		assert.False(t, e.Found, "%s: the kernel should have no socket, has %v", what, e)
		return
	}
	if assert.True(t, e.Found, "%s: the kernel has no socket, want %v", what, want) {
		assert.Equal(t, want, e.State, "%s: %v", what, e)
	}
}

func assertEnds(t *testing.T, e Ends, client, server sockdiag.State, when string) {
	t.Helper()
	assertEnd(t, e.Client, client, when+", client")
	assertEnd(t, e.Server, server, when+", server")
}

// ---- A. Half-close

func TestShutdownWriteLeavesClientFinWait2AndServerCloseWait(t *testing.T) {
	t.Parallel()
	r, err := halfClose(quiet(), nil, sortInput)
	require.NoError(t, err)
	assertEnds(t, r.AfterShutdown, sockdiag.FinWait2, sockdiag.CloseWait, "after shutdown(SHUT_WR)")
	assert.True(t, r.AfterShutdown.Client.HasFD() && r.AfterShutdown.Server.HasFD(), "both still held by fds")
	assert.Equal(t, uint8(sockdiag.ShutSend), r.AfterShutdown.Client.Shutdown, "client: SEND_SHUTDOWN only")
	assert.Equal(t, uint8(sockdiag.ShutRecv), r.AfterShutdown.Server.Shutdown, "server: the FIN shut its receiving half")
	assert.Equal(t, sockdiag.TimerNone, r.AfterShutdown.Client.Timer, "a FIN_WAIT2 that still has its fd has no timer")
}

func TestServerReadsZeroAfterClientFINYetStillSendsItsAnswer(t *testing.T) {
	t.Parallel()
	r, err := halfClose(quiet(), nil, sortInput)
	require.NoError(t, err)
	assert.Equal(t, sortInput, r.ServerGot, "the server got every byte before read() returned 0")
	assert.Equal(t, 0, r.ServerEOF)
	assert.Equal(t, []byte("apple\nfig\npear\n"), r.Reply, "the client read the answer after its own FIN")
	assertEnds(t, r.WhileReplying, sockdiag.FinWait2, sockdiag.CloseWait, "after the answer")
}

// The FIN occupies one sequence number: before the server reads, its Recv-Q (rcv_nxt -
// copied_seq) is the data plus one.
func TestFINConsumesOneSequenceNumber(t *testing.T) {
	t.Parallel()
	r, err := halfClose(quiet(), nil, sortInput)
	require.NoError(t, err)
	assert.Equal(t, uint32(len(sortInput)+1), r.AfterShutdown.Server.RecvQ, r.AfterShutdown.Server.String())
	assert.Equal(t, uint32(0), r.WhileReplying.Server.RecvQ, "read() = 0 consumed the FIN's sequence number")
}

func TestActiveCloserHoldsTimeWaitForSixtySecondsWithNoFD(t *testing.T) {
	t.Parallel()
	r, err := halfClose(quiet(), nil, sortInput)
	require.NoError(t, err)
	tw := r.AfterServerClose.Client
	assertEnd(t, tw, sockdiag.TimeWait, "client after the server's FIN")
	assert.False(t, tw.HasFD(), "TIME_WAIT is a mini-socket with no fd, even while the fd is open: %v", tw)
	assert.Equal(t, sockdiag.TimerTimeWait, tw.Timer)
	assert.Greater(t, tw.Expires, 50*time.Second, tw.String())
	assert.LessOrEqual(t, tw.Expires, 60*time.Second, tw.String())
	assert.Equal(t, 0, r.ClientEOF, "the client's read() after the server's FIN")
	assert.Equal(t, sockdiag.Close, r.ClientFDState, "TCP_INFO on the still-open fd says CLOSE")
	assertEnd(t, r.AfterClientClose.Client, sockdiag.TimeWait, "client after close()")
	assert.False(t, r.AfterClientClose.Client.HasFD())
}

func TestPassiveCloserSocketIsGoneAfterItsClose(t *testing.T) {
	t.Parallel()
	r, err := halfClose(quiet(), nil, sortInput)
	require.NoError(t, err)
	assertEnd(t, r.AfterServerClose.Server, Gone, "server after close()")
	assertEnd(t, r.AfterClientClose.Server, Gone, "server at the end")
}

func TestSortLines(t *testing.T) {
	for in, want := range map[string]string{
		"":                 "",
		"b\na\n":           "a\nb\n",
		"b\na":             "a\nb\n",
		"c\n\nb\n":         "\nb\nc\n",
		"pear\napple\nfig": "apple\nfig\npear\n",
	} {
		assert.Equal(t, want, string(sortLines([]byte(in))), "%q", in)
	}
}

// ---- B. FIN_WAIT1 and LAST_ACK

func TestZeroWindowHoldsFinWait1(t *testing.T) {
	t.Parallel()
	r, err := zeroWindow(quiet())
	require.NoError(t, err)
	for _, e := range []Ends{r.FinWait1, r.FinWait1Later} {
		assertEnds(t, e, sockdiag.FinWait1, sockdiag.Established, "after the client's shutdown")
		assert.Equal(t, sockdiag.TimerProbe, e.Client.Timer, "the zero-window probe timer: %v", e.Client)
		assert.Greater(t, e.Server.RecvQ, uint32(0), "the server's unread data closed the window")
	}
	// Send-Q (write_seq - snd_una) holds the unacknowledged data and the FIN behind it.
	fw1 := r.FinWait1.Client
	assert.Equal(t, uint32(r.ClientSent)-r.FinWait1.Server.RecvQ+1, fw1.SendQ,
		"Send-Q = bytes sent - bytes the server holds + 1 for the FIN: %v", fw1)
	assert.Equal(t, r.ClientSent, r.ServerReceived, "every byte arrived before the FIN")
	assertEnds(t, r.AfterDrain, sockdiag.FinWait2, sockdiag.CloseWait, "after the server read it all")
}

func TestZeroWindowHoldsLastAckOnAnOrphan(t *testing.T) {
	t.Parallel()
	r, err := zeroWindow(quiet())
	require.NoError(t, err)
	for _, e := range []Ends{r.LastAck, r.LastAckLater} {
		assertEnds(t, e, sockdiag.FinWait2, sockdiag.LastAck, "after the server's close()")
		assert.False(t, e.Server.HasFD(), "LAST_ACK after close() is an orphan: %v", e.Server)
		assert.Greater(t, e.Server.SendQ, uint32(1), "data and FIN still queued: %v", e.Server)
		assert.Equal(t, sockdiag.TimerProbe, e.Server.Timer, e.Server.String())
	}
	assert.Equal(t, r.ServerSent, r.ClientReceived, "the orphan still delivered every byte")
	assertEnds(t, r.AfterAll, sockdiag.TimeWait, Gone, "after the client read it all")
}

// ---- C. CLOSING

func TestSimultaneousCloseGoesThroughClosingToTimeWaitOnBothEnds(t *testing.T) {
	t.Parallel()
	r, err := simultaneousClose(quiet(), nil)
	require.NoError(t, err)
	assertEnds(t, r.BothFinWait1, sockdiag.FinWait1, sockdiag.FinWait1, "both shut down")
	for _, e := range []Ends{r.Closing, r.ClosingLater} {
		assertEnds(t, e, sockdiag.Closing, sockdiag.FinWait2, "after the client read the server's FIN")
	}
	assert.Equal(t, sockdiag.Closing, r.ClientFDState, "TCP_INFO agrees: tcpi_state 11")
	assert.EqualValues(t, 11, r.ClientFDState)
	assertEnds(t, r.BothTimeWait, sockdiag.TimeWait, sockdiag.TimeWait, "at the end")
	assert.False(t, r.BothTimeWait.Client.HasFD() || r.BothTimeWait.Server.HasFD(), "TIME_WAITs have no fd")
	assert.Equal(t, r.ServerSent, r.ClientRead, "the client got every byte, then the FIN")
	assert.Equal(t, r.ClientSent, r.ServerRead, "the server got every byte, then the FIN")
}

// ---- D. close() versus shutdown(), SHUT_RD, EPIPE

func TestCloseOfOneDupedFDSendsNothing(t *testing.T) {
	t.Parallel()
	r, err := closeVersusShutdown(quiet())
	require.NoError(t, err)
	assertEnds(t, r.AfterCloseDup, sockdiag.Established, sockdiag.Established, "after close() of the dup")
	assert.Equal(t, []byte("x"), r.ServerGotByte, "data sent after that close() arrives")
	assert.Zero(t, r.AfterCloseDup.Client.Shutdown, "no shutdown bit on the client")
}

func TestShutdownOfAnyDupedFDSendsFINAtOnce(t *testing.T) {
	t.Parallel()
	r, err := closeVersusShutdown(quiet())
	require.NoError(t, err)
	assertEnds(t, r.AfterShutdownDup, sockdiag.FinWait2, sockdiag.CloseWait, "after shutdown() of a dup")
	assert.True(t, r.AfterShutdownDup.Client.HasFD(), "the original fd still holds the socket")
	assert.Equal(t, 0, r.ServerEOF)
}

func TestShutRDSendsNothingAndReadReturnsZero(t *testing.T) {
	t.Parallel()
	r, err := shutRead(quiet())
	require.NoError(t, err)
	assertEnds(t, r.Ends, sockdiag.Established, sockdiag.Established, "after SHUT_RD")
	assert.Equal(t, uint8(sockdiag.ShutRecv), r.ShutdownBits, "RCV_SHUTDOWN set on the client")
	assert.Zero(t, r.Ends.Server.Shutdown, "the server knows nothing")
	assert.Equal(t, 0, r.EmptyRead, "read() returns 0 instead of blocking")
}

func TestShutRDDoesNotDiscardLateDataOnLinux(t *testing.T) {
	t.Parallel()
	r, err := shutRead(quiet())
	require.NoError(t, err)
	assert.Equal(t, 9, r.PeerSent, "the server can still send")
	assert.Equal(t, uint32(9), r.LateRecvQ, "the kernel queued the late data")
	assert.Equal(t, []byte("late data"), r.LateRead, "and read() returns it")
}

func TestSecondWriteAfterPeerCloseFailsWithEPIPE(t *testing.T) {
	t.Parallel()
	r, err := writeAfterPeerClosed(quiet())
	require.NoError(t, err)
	assertEnds(t, r.AfterServerClose, sockdiag.CloseWait, sockdiag.FinWait2, "after the server's close()")
	assert.False(t, r.AfterServerClose.Server.HasFD(), "an orphaned FIN_WAIT2")
	assert.NoError(t, r.FirstErr, "the first write succeeds")
	assert.Equal(t, 6, r.FirstWrite)
	assertEnds(t, r.AfterRST, Gone, Gone, "after the first write: the orphan answered RST")
	assert.Equal(t, sockdiag.Close, r.ClientFDState)
	assert.ErrorIs(t, r.SecondErr, unix.EPIPE, "send(MSG_NOSIGNAL)")
	assert.ErrorIs(t, r.PlainWriteErr, unix.EPIPE, "write(): EPIPE, and this test binary survives the SIGPIPE")
}

// An orphaned FIN_WAIT2 (its fd closed) is kept as a TIME_WAIT-style mini-socket in substate
// FIN_WAIT2, on a timer of tcp_fin_timeout (tcp_close() in net/ipv4/tcp.c, when the timeout is
// at most TCP_TIMEWAIT_LEN).
func TestOrphanedFinWait2IsAMiniSocketOnTheFinTimeoutTimer(t *testing.T) {
	t.Parallel()
	v, err := netlab.Sysctl("net.ipv4.tcp_fin_timeout")
	require.NoError(t, err)
	seconds, err := strconv.Atoi(v)
	require.NoError(t, err)
	if seconds > 60 {
		t.Skipf("tcp_fin_timeout is %d s here; above 60 s the kernel keeps a full socket instead", seconds)
	}
	r, err := writeAfterPeerClosed(quiet())
	require.NoError(t, err)
	orphan := r.AfterServerClose.Server
	assertEnd(t, orphan, sockdiag.FinWait2, "the server after close()")
	assert.False(t, orphan.HasFD(), orphan.String())
	assert.Equal(t, sockdiag.TimerTimeWait, orphan.Timer, "a timewait timer on a FIN_WAIT2: %v", orphan)
	assert.Greater(t, orphan.Expires, time.Duration(0))
	assert.LessOrEqual(t, orphan.Expires, time.Duration(seconds)*time.Second, "at most tcp_fin_timeout: %v", orphan)
}

// The kernel does raise SIGPIPE for write() without MSG_NOSIGNAL; Go's runtime ignores it
// for fds other than 1 and 2 unless the program asks for it with signal.Notify, as here.
// Not parallel: signal.Notify is process-wide, and no other test raises SIGPIPE.
func TestPlainWriteRaisesSIGPIPEWhichGoIgnoresOnSockets(t *testing.T) {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGPIPE)
	defer signal.Stop(sigs)
	r, err := writeAfterPeerClosed(quiet())
	require.NoError(t, err)
	require.ErrorIs(t, r.PlainWriteErr, unix.EPIPE)
	select {
	case s := <-sigs:
		assert.Equal(t, syscall.SIGPIPE, s)
	case <-time.After(5 * time.Second): // a deadline for a signal, not a synchronising sleep
		t.Fatal("the kernel sent no SIGPIPE for write() on a broken connection")
	}
}

// ---- E. Abortive close

func assertAbort(t *testing.T, r Abort) {
	t.Helper()
	assertEnds(t, r.AfterClose, Gone, Gone, "right after the abortive close: no TIME_WAIT, no FIN_WAIT")
	assert.Equal(t, sockdiag.Close, r.ServerFDState, "the RST closed the server's socket (TCP_INFO)")
	assert.ErrorIs(t, r.FirstReadErr, unix.ECONNRESET, "the first read reports the reset")
	assert.NoError(t, r.SecondReadErr)
	assert.Equal(t, 0, r.SecondRead, "then end of file")
	assertEnds(t, r.AfterServerClose, Gone, Gone, "after the server's close: no TIME_WAIT either")
}

func TestLingerZeroCloseSendsRSTWithoutTimeWait(t *testing.T) {
	t.Parallel()
	r, err := lingerZero(quiet())
	require.NoError(t, err)
	assertAbort(t, r)
}

func TestCloseWithUnreadDataSendsRST(t *testing.T) {
	t.Parallel()
	r, err := closeWithUnreadData(quiet())
	require.NoError(t, err)
	assertAbort(t, r)
}

// ---- F. Who gets TIME_WAIT

func TestTimeWaitIsOnTheServerWhenItClosesFirst(t *testing.T) {
	t.Parallel()
	r, err := whoGetsTimeWait(quiet(), nil, true)
	require.NoError(t, err)
	assertEnds(t, r.AfterFirstClose, sockdiag.CloseWait, sockdiag.FinWait2, "after the server's close()")
	assertEnds(t, r.AfterSecondClose, Gone, sockdiag.TimeWait, "after both closed")
	assert.False(t, r.AfterSecondClose.Server.HasFD())
}

func TestTimeWaitIsOnTheClientWhenItClosesFirst(t *testing.T) {
	t.Parallel()
	r, err := whoGetsTimeWait(quiet(), nil, false)
	require.NoError(t, err)
	assertEnds(t, r.AfterFirstClose, sockdiag.FinWait2, sockdiag.CloseWait, "after the client's close()")
	assertEnds(t, r.AfterSecondClose, sockdiag.TimeWait, Gone, "after both closed")
	assert.False(t, r.AfterSecondClose.Client.HasFD())
}

// ---- G. tcp_fin_timeout

// Not parallel: it changes a sysctl of the namespace all this package's tests share, so it
// runs before the parallel tests start (and restores the value).
func TestTcpFinTimeoutExpiresOrphanedFinWait2ButNotTimeWait(t *testing.T) {
	labtest.NeedPrivate(t)
	r, err := finTimeout(quiet(), finTimeoutSeconds)
	require.NoError(t, err)
	limit := finTimeoutSeconds * time.Second
	assertEnd(t, r.Orphan, sockdiag.FinWait2, "the closed client")
	assert.False(t, r.Orphan.HasFD(), "an orphan: %v", r.Orphan)
	assert.Greater(t, r.Orphan.Expires, time.Duration(0), r.Orphan.String())
	assert.LessOrEqual(t, r.Orphan.Expires, limit, "its timer is tcp_fin_timeout: %v", r.Orphan)
	assert.GreaterOrEqual(t, r.OrphanLived, limit-time.Second, "it lived about tcp_fin_timeout")
	assert.Less(t, r.OrphanLived, limit+awaitTimeout)
	assertEnd(t, r.ServerAfter, sockdiag.CloseWait, "its peer, which never closed")
	assertEnd(t, r.TimeWait, sockdiag.TimeWait, "the other connection")
	assertEnd(t, r.TimeWaitAfter, sockdiag.TimeWait, "the other connection, once the orphan is gone")
	assert.Greater(t, r.TimeWaitAfter.Expires, 50*time.Second, "TIME_WAIT keeps its 60 s: %v", r.TimeWaitAfter)
}

// ---- the whole demo, as a student runs it

func TestDemoRunsEveryPart(t *testing.T) {
	t.Parallel()
	out, errOut, code := labtest.RunProgram(t, nil)
	require.Equal(t, 0, code, "stderr: %s", errOut)
	for _, part := range program.Parts {
		assert.Contains(t, out, part.Title)
	}
	for _, state := range []string{"FIN_WAIT1", "FIN_WAIT2", "CLOSE_WAIT", "LAST_ACK", "CLOSING", "TIME_WAIT"} {
		assert.Contains(t, out, state)
	}
	assert.Contains(t, out, "ECONNRESET")
	assert.Contains(t, out, "EPIPE")
	for _, line := range strings.Split(out, "\n") {
		// Kernel tables ("    | ...") come from internal/lab and may be a little wider.
		if !strings.HasPrefix(line, "    | ") {
			assert.LessOrEqual(t, lab.Columns(line), 80, "fits 80 columns: %q", line)
		}
	}
}
