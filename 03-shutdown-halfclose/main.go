//go:build linux

// Command 03-shutdown-halfclose is socklab's chapter 03: how a TCP connection ends. It walks
// through the four-way close (四次挥手), half-close (半关闭) with shutdown(2), and shows every
// closing state in the kernel's own socket table: FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, LAST_ACK,
// CLOSING, TIME_WAIT and CLOSE, on the end where each appears. It also shows what close()
// does that shutdown() does not, SHUT_RD, EPIPE and SIGPIPE, the abortive close with RST, who
// gets TIME_WAIT, tcp_fin_timeout, and TCP keepalive finding a dead peer. In its private
// namespace it also captures the segments of its closes and draws them as sequence diagrams:
// FIN, ACK, FIN, ACK when the passive side waits; FIN, FIN+ACK, ACK when it closes at once.
//
// The lab holds both ends of each connection in one process, so after every system call it
// can print the kernel's view (sock_diag, like ss -tan) of both ends. The roles `server` and
// `client` let you do the same with two terminals and watch with `ss -tan` in a third.
//
// Read along: docs/03-shutdown-halfclose.md.
package main

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"time"

	"golang.org/x/sys/unix"

	"socklab/internal/capture"
	"socklab/internal/lab"
	"socklab/internal/netlab"
	"socklab/internal/sockdiag"
)

var program = lab.Program{
	Name:    "03-shutdown-halfclose",
	Summary: "the four-way close, half-close, every closing state",
	Doc:     "docs/03-shutdown-halfclose.md",
	Parts: []lab.Part{
		{Name: "halfclose", Title: "A. Half-close: shutdown(SHUT_WR), and the answer still comes", Run: partHalfClose},
		{Name: "zerowindow", Title: "B. FIN_WAIT1 and LAST_ACK, held still by a zero window", Run: partZeroWindow},
		{Name: "closing", Title: "C. CLOSING: a simultaneous close made deterministic", Run: partClosing},
		{Name: "shutdown", Title: "D. close() versus shutdown(); SHUT_RD; EPIPE and SIGPIPE", Run: partCloseVersusShutdown},
		{Name: "abort", Title: "E. Abortive close: RST instead of FIN", Run: partAbort},
		{Name: "timewait", Title: "F. Who gets TIME_WAIT: the end that closes first", Run: partWhoGetsTimeWait},
		{Name: "fintimeout", Title: "G. tcp_fin_timeout: the orphaned FIN_WAIT2 timer", Run: partFinTimeout},
		{Name: "keepalive", Title: "H. TCP keepalive: finding a dead peer", Run: partKeepalive},
	},
	Roles: []lab.Role{
		{Name: "server", Summary: "echo server (or -sort: answer after the client's FIN) on -addr", Run: runServer},
		{Name: "client", Summary: "stdin -> server; at EOF shutdown(SHUT_WR); print the reply", Run: runClient},
	},
}

func main() { program.Main() }

// ---------------------------------------------------------------------------------------
// A. Half-close

func partHalfClose(d *lab.Demo) error {
	view := newPacketView(d) // the half-close as segments on the wire
	defer view.stop()
	_, err := halfClose(d, view, []byte("pear\napple\nfig\n"))
	return err
}

// HalfClose is what part A's kernel showed.
type HalfClose struct {
	AfterShutdown    Ends   // client FIN_WAIT2, server CLOSE_WAIT
	ServerGot        []byte // everything the server read before read() returned 0
	ServerEOF        int    // read()'s return after the data: 0, the client's FIN
	Reply            []byte // the sorted lines, read by the client while in FIN_WAIT2
	WhileReplying    Ends   // after the answer went across: still FIN_WAIT2 / CLOSE_WAIT
	AfterServerClose Ends   // client TIME_WAIT, server gone
	ClientEOF        int    // the client's read() after the server's FIN: 0
	ClientFDState    sockdiag.State
	AfterClientClose Ends // the TIME_WAIT stays, with no fd
	// Wire is the connection as captured on loopback (nil without the packet view): the
	// client's data and FIN, the server's ACK, the server's answer after that FIN, the
	// server's FIN and the last ACK.
	Wire *capture.Conversation
}

// halfClose is `sort` over a socket: the client sends lines and shuts down its sending half;
// the server can only know it has everything when read() returns 0, and answers after that.
func halfClose(d *lab.Demo, view *packetView, input []byte) (r HalfClose, err error) {
	d.Step("connect a client to a server")
	c, err := connectWatched(d, 0, view)
	if err != nil {
		return r, err
	}
	defer c.closeAll()
	view.note(c)
	d.Kernel(c.filter())

	d.Step("the client sends its lines, then shutdown(SHUT_WR): \"that is all\"")
	n, err := unix.Write(c.client, input)
	if err := d.Sys(n, err, "write(%d, %q, %d)", c.client, input, len(input)); err != nil {
		return r, err
	}
	// SHUT_WR queues a FIN after the data. The server's kernel ACKs it at once: the client
	// goes FIN_WAIT1 -> FIN_WAIT2 in microseconds, the server to CLOSE_WAIT.
	err = unix.Shutdown(c.client, unix.SHUT_WR)
	if err := d.Sys(0, err, "shutdown(%d, SHUT_WR)", c.client); err != nil {
		return r, err
	}
	r.AfterShutdown, err = c.awaitEnds(sockdiag.FinWait2, sockdiag.CloseWait)
	view.note(c)
	d.Kernel(c.filter())
	if err != nil {
		return r, err
	}
	d.Say("The client's FIN is acknowledged: the client waits in FIN_WAIT2 for the server's "+
		"FIN; the server is in CLOSE_WAIT, waiting for its application to close. The "+
		"server's Recv-Q is %d for %d bytes of data: a FIN takes one sequence number.",
		r.AfterShutdown.Server.RecvQ, len(input))

	d.Step("the server reads until read() returns 0 (end of file = the client's FIN)")
	buf := make([]byte, 4096)
	for range 1000 { // bounded: a few reads at most
		n, err := unix.Read(c.server, buf)
		d.Sys(n, err, "read(%d, %s, %d)", c.server, quoteRead(buf, n), len(buf))
		if err != nil {
			return r, err
		}
		if n == 0 {
			break
		}
		r.ServerGot = append(r.ServerGot, buf[:n]...)
	}
	d.Say("read() = 0 is how a program sees the peer's FIN. It means \"no more data will " +
		"come\", not \"the connection is closed\": the server can still send.")

	d.Step("the server answers in CLOSE_WAIT; the client reads in FIN_WAIT2")
	reply := sortLines(r.ServerGot)
	n, err = unix.Write(c.server, reply)
	if err := d.Sys(n, err, "write(%d, %q, %d)", c.server, reply, len(reply)); err != nil {
		return r, err
	}
	for len(r.Reply) < len(reply) {
		n, err := unix.Read(c.client, buf)
		d.Sys(n, err, "read(%d, %s, %d)", c.client, quoteRead(buf, n), len(buf))
		if err != nil {
			return r, err
		}
		if n == 0 {
			return r, errors.New("the client saw end of file before the whole reply")
		}
		r.Reply = append(r.Reply, buf[:n]...)
	}
	// The client's kernel acknowledges the answer (Send-Q 0 on the server: nothing
	// unacknowledged) before the server closes, so the ACK of the data and the ACK of the
	// server's FIN are two segments on the wire, not one.
	r.WhileReplying, err = awaitFunc(func() (Ends, bool, error) {
		e, err := c.ends()
		return e, err == nil && is(e.Server, sockdiag.CloseWait) && e.Server.SendQ == 0, err
	}, "the server's answer acknowledged (Send-Q 0)")
	view.note(c)
	d.Kernel(c.filter())
	if err != nil {
		return r, err
	}

	d.Step("the server closes: its FIN ends the second half of the conversation")
	if err := c.closeServer(d); err != nil {
		return r, err
	}
	r.AfterServerClose, err = c.awaitEnds(sockdiag.TimeWait, Gone)
	view.note(c)
	d.Kernel(c.filter())
	if err != nil {
		return r, err
	}
	d.Say("The server's socket went LAST_ACK -> gone as soon as the client ACKed its FIN. " +
		"The client, which closed first (the active closer, 主动关闭方), is in TIME_WAIT " +
		"for 60 s (2MSL on Linux).")

	d.Step("the client reads the server's FIN, then closes its fd")
	r.ClientEOF, err = unix.Read(c.client, buf)
	d.Sys(r.ClientEOF, err, "read(%d, \"\", %d)", c.client, len(buf))
	if err != nil {
		return r, err
	}
	r.ClientFDState, err = sockdiag.StateOf(c.client)
	if err != nil {
		return r, err
	}
	d.Result("getsockopt(%d, TCP_INFO): tcpi_state = %v", c.client, r.ClientFDState)
	d.Say("The fd's own socket is finished (CLOSE); the TIME_WAIT is a separate mini-socket.")
	if err := c.closeClient(d); err != nil {
		return r, err
	}
	r.AfterClientClose, err = c.ends()
	d.Kernel(c.filter())
	if err != nil {
		return r, err
	}
	d.Say("No process holds the TIME_WAIT (\"no fd\"): the kernel keeps it alone, to answer " +
		"a retransmitted FIN with the last ACK and to let old segments die out.")
	if r.Wire, err = view.closed(c); err != nil || r.Wire == nil {
		return r, err
	}
	view.show(r.Wire)
	d.Say("The half-close on the wire: the client's FIN takes one sequence number (the " +
		"server acknowledges its seq + 1) and the client sends nothing after it but ACKs, " +
		"whose seq stays at the FIN's seq + 1. The server's answer flows after that FIN, " +
		"its seq advancing, the client acknowledging it; then the server's FIN, and the " +
		"client's last ACK.")
	return r, nil
}

// sortLines is the server's answer: the input's lines, sorted, as sort(1) would.
func sortLines(b []byte) []byte {
	lines := bytes.SplitAfter(b, []byte("\n"))
	if n := len(lines); n > 0 && len(lines[n-1]) == 0 {
		lines = lines[:n-1]
	}
	if n := len(lines); n > 0 && !bytes.HasSuffix(lines[n-1], []byte("\n")) {
		lines[n-1] = append(slices.Clip(lines[n-1]), '\n')
	}
	slices.SortFunc(lines, bytes.Compare)
	return bytes.Join(lines, nil)
}

// quoteRead shows a read buffer as strace does: the bytes read, quoted.
func quoteRead(buf []byte, n int) string {
	if n <= 0 {
		return `""`
	}
	return fmt.Sprintf("%q", buf[:n])
}

// ---------------------------------------------------------------------------------------
// B. FIN_WAIT1 and LAST_ACK

// holdFor is how long parts B and C look again to show that a state is held, not passing.
// It is a demonstration, not synchronisation: the states are held by a zero window and stay
// as long as the peer does not read.
const holdFor = 500 * time.Millisecond

func partZeroWindow(d *lab.Demo) error {
	_, err := zeroWindow(d)
	return err
}

// ZeroWindow is what part B's kernel showed.
type ZeroWindow struct {
	ClientSent     int  // bytes the client queued before its send buffer filled
	FinWait1       Ends // client FIN_WAIT1 (its FIN waits behind unsent data), server ESTABLISHED
	FinWait1Later  Ends // the same, holdFor later
	ServerReceived int  // bytes the server read before read() returned 0
	AfterDrain     Ends // client FIN_WAIT2, server CLOSE_WAIT
	ServerSent     int
	LastAck        Ends // server LAST_ACK with no fd, client FIN_WAIT2
	LastAckLater   Ends
	ClientReceived int
	AfterAll       Ends // client TIME_WAIT, server gone
}

// zeroWindow holds the short-lived closing states still: a FIN is sent only after the data
// queued before it, and data cannot be sent into a zero window. A peer that does not read
// closes its window; the FIN waits, and the state with it.
func zeroWindow(d *lab.Demo) (r ZeroWindow, err error) {
	d.Step("connect with small buffers (so that a few KiB fill them)")
	c, err := connect(d, smallBuffers)
	if err != nil {
		return r, err
	}
	defer c.closeAll()

	d.Step("the client fills the server's window; the server does not read")
	if r.ClientSent, err = c.fill(d, true); err != nil {
		return r, err
	}
	d.Step("the client shuts down its sending half: the FIN queues behind the data")
	err = unix.Shutdown(c.client, unix.SHUT_WR)
	if err := d.Sys(0, err, "shutdown(%d, SHUT_WR)", c.client); err != nil {
		return r, err
	}
	r.FinWait1, err = c.awaitEndsWhere(sockdiag.FinWait1, sockdiag.Established,
		clientProbing, "the client's probe timer pending")
	d.Kernel(c.filter())
	if err != nil {
		return r, err
	}
	if r.FinWait1Later, err = c.hold(d, sockdiag.FinWait1, sockdiag.Established,
		clientProbing, "the client's probe timer pending"); err != nil {
		return r, err
	}
	d.Say("FIN_WAIT1: the application has closed its sending half, but the FIN has not been " +
		"acknowledged (here it cannot even be sent). The timer is the zero-window probe.")

	d.Step("the server reads everything: the data, then the FIN (read() = 0)")
	if r.ServerReceived, err = drain(d, c.server); err != nil {
		return r, err
	}
	if r.AfterDrain, err = c.awaitEnds(sockdiag.FinWait2, sockdiag.CloseWait); err != nil {
		return r, err
	}
	d.Kernel(c.filter())

	d.Step("now the server fills the client's window, then close()s")
	if r.ServerSent, err = c.fill(d, false); err != nil {
		return r, err
	}
	if err := c.closeServer(d); err != nil {
		return r, err
	}
	r.LastAck, err = c.awaitEndsWhere(sockdiag.FinWait2, sockdiag.LastAck,
		serverProbing, "the server's probe timer pending")
	d.Kernel(c.filter())
	if err != nil {
		return r, err
	}
	if r.LastAckLater, err = c.hold(d, sockdiag.FinWait2, sockdiag.LastAck,
		serverProbing, "the server's probe timer pending"); err != nil {
		return r, err
	}
	d.Say("LAST_ACK: the passive closer has closed too; its FIN is queued, and it will wait for " +
		"the ACK of that FIN. The socket has no fd any more (an orphan): the kernel " +
		"finishes the close on its own.")

	d.Step("the client reads everything: data, then the server's FIN")
	if r.ClientReceived, err = drain(d, c.client); err != nil {
		return r, err
	}
	r.AfterAll, err = c.awaitEnds(sockdiag.TimeWait, Gone)
	d.Kernel(c.filter())
	return r, err
}

// fill sends from one end until its send buffer is full (EAGAIN), then waits until the
// kernel shows that end's zero-window probe timer: proof that the peer's window is closed
// and data is queued unsent, so a FIN queued now cannot leave.
func (c *conn) fill(d *lab.Demo, fromClient bool) (int, error) {
	fd, local, remote := c.server, c.serverAddr, c.clientAddr
	if fromClient {
		fd, local, remote = c.client, c.clientAddr, c.serverAddr
	}
	buf := make([]byte, 4096)
	total, calls := 0, 0
	for range 1 << 14 { // at most 64 MiB: far more than any socket buffer
		// MSG_DONTWAIT: fail with EAGAIN instead of blocking once the buffer is full.
		n, err := unix.SendmsgN(fd, buf, nil, nil, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
		if err == unix.EAGAIN {
			d.Sys(total, nil, "send(%d, buf, %d, MSG_DONTWAIT) x%d until EAGAIN, total", fd, len(buf), calls+1)
			_, werr := awaitFunc(func() (Ends, bool, error) {
				e, err := look(local, remote)
				return Ends{Client: e}, err == nil && e.Found && e.Timer == sockdiag.TimerProbe, err
			}, "the sender's zero-window probe timer")
			return total, werr
		}
		if err != nil {
			return total, d.Sys(0, err, "send(%d, buf, %d, MSG_DONTWAIT)", fd, len(buf))
		}
		total += n
		calls++
	}
	return total, errors.New("the send buffer never filled: is the peer reading?")
}

// drain reads from fd until read() returns 0 (the peer's FIN) and returns the bytes read.
func drain(d *lab.Demo, fd int) (int, error) {
	buf := make([]byte, 64*1024)
	total, calls := 0, 0
	for range 1 << 16 {
		n, err := unix.Read(fd, buf)
		if err != nil {
			return total, d.Sys(n, err, "read(%d, buf, %d)", fd, len(buf))
		}
		if n == 0 {
			d.Sys(total, nil, "read(%d, buf, %d) x%d until it returned 0, total", fd, len(buf), calls+1)
			return total, nil
		}
		total += n
		calls++
	}
	return total, errors.New("read() never returned 0")
}

// hold shows that the two ends are still in these states holdFor later, meeting also as
// awaitEndsWhere does (nil: no more than the states).
func (c *conn) hold(d *lab.Demo, client, server sockdiag.State, also func(Ends) bool, what string) (Ends, error) {
	time.Sleep(holdFor) // a pause to show the state is held, not a wait for something
	e, err := c.ends()
	if err != nil {
		return e, err
	}
	if !is(e.Client, client) || !is(e.Server, server) {
		return e, fmt.Errorf("the states did not hold: client %v, server %v", e.Client, e.Server)
	}
	if also != nil && !also(e) {
		// The states held; the condition on them is asked again (see clientProbing).
		if e, err = c.awaitEndsWhere(client, server, also, what); err != nil {
			return e, err
		}
	}
	d.Say("%v later, the kernel still shows client %v, server %v.", holdFor, e.Client.State, e.Server.State)
	return e, nil
}

// clientProbing and serverProbing are the conditions the waits of part B add to the states:
// that end's zero-window probe timer is pending. One sample is not enough: for the moment
// the timer's handler runs, the kernel reports no timer at all (see sockdiag.TimerNone).
func clientProbing(e Ends) bool { return e.Client.Timer == sockdiag.TimerProbe }

func serverProbing(e Ends) bool { return e.Server.Timer == sockdiag.TimerProbe }

// ---------------------------------------------------------------------------------------
// C. CLOSING

func partClosing(d *lab.Demo) error {
	view := newPacketView(d) // the two FINs as segments on the wire
	defer view.stop()
	_, err := simultaneousClose(d, view)
	return err
}

// SimultaneousClose is what part C's kernel showed.
type SimultaneousClose struct {
	ClientSent    int // bytes each end queued before its send buffer filled
	ServerSent    int
	BothFinWait1  Ends // both FINs queued behind data neither side reads
	ClientRead    int  // bytes the client read before the server's FIN
	Closing       Ends // client CLOSING (it got a FIN before its own was ACKed), server FIN_WAIT2
	ClosingLater  Ends
	ClientFDState sockdiag.State // TCP_INFO on the client fd while CLOSING
	ServerRead    int
	BothTimeWait  Ends // both ends closed actively: TIME_WAIT on both
	// Wire is the connection as captured on loopback (nil without the packet view).
	Wire *capture.Conversation
}

// simultaneousClose makes both ends close before either has received the other's FIN.
// Crossing FINs on a wire are a race; here both FINs wait behind data in a zero window, and
// the lab decides which one is delivered first by choosing which side reads first.
func simultaneousClose(d *lab.Demo, view *packetView) (r SimultaneousClose, err error) {
	d.Step("connect with small buffers")
	c, err := connectWatched(d, smallBuffers, view)
	if err != nil {
		return r, err
	}
	defer c.closeAll()
	view.note(c)

	d.Step("both ends fill the other's window; nobody reads")
	if r.ClientSent, err = c.fill(d, true); err != nil {
		return r, err
	}
	if r.ServerSent, err = c.fill(d, false); err != nil {
		return r, err
	}
	d.Step("both ends shutdown(SHUT_WR): two FINs, each stuck behind data")
	for _, fd := range []int{c.client, c.server} {
		if err := d.Sys(0, unix.Shutdown(fd, unix.SHUT_WR), "shutdown(%d, SHUT_WR)", fd); err != nil {
			return r, err
		}
	}
	r.BothFinWait1, err = c.awaitEnds(sockdiag.FinWait1, sockdiag.FinWait1)
	view.note(c)
	d.Kernel(c.filter())
	if err != nil {
		return r, err
	}

	d.Step("the client reads: the server's FIN arrives before the client's is ACKed")
	if r.ClientRead, err = drain(d, c.client); err != nil {
		return r, err
	}
	r.Closing, err = c.awaitEnds(sockdiag.Closing, sockdiag.FinWait2)
	view.note(c)
	d.Kernel(c.filter())
	if err != nil {
		return r, err
	}
	if r.ClientFDState, err = sockdiag.StateOf(c.client); err != nil {
		return r, err
	}
	d.Result("getsockopt(%d, TCP_INFO): tcpi_state = %d (%v)", c.client, r.ClientFDState, r.ClientFDState)
	if r.ClosingLater, err = c.hold(d, sockdiag.Closing, sockdiag.FinWait2, nil, ""); err != nil {
		return r, err
	}
	d.Say("CLOSING: the client has received a FIN while its own FIN is still unacknowledged " +
		"— both ends closed at the same time. (The server's FIN was ACKed, so it is in " +
		"FIN_WAIT2: in this lab one FIN is delivered first, on purpose.)")

	d.Step("the server reads: the client's data and FIN")
	if r.ServerRead, err = drain(d, c.server); err != nil {
		return r, err
	}
	r.BothTimeWait, err = c.awaitEnds(sockdiag.TimeWait, sockdiag.TimeWait)
	view.note(c)
	d.Kernel(c.filter())
	if err != nil {
		return r, err
	}
	d.Say("Both ends closed actively, so both wait in TIME_WAIT.")
	if r.Wire, err = view.closed(c); err != nil || r.Wire == nil {
		return r, err
	}
	view.showClose(r.Wire)
	d.Say("On the wire the FINs do not cross: the server's FIN left first, and the client " +
		"acknowledged it (ack = that FIN's seq + 1) while its own FIN was still queued " +
		"behind data in the server's zero window. That is CLOSING: a FIN received while " +
		"the end's own FIN is unacknowledged (here not even sent). The client's FIN " +
		"followed once the server read; the server, in FIN_WAIT2, acknowledged it.")
	return r, nil
}

// ---------------------------------------------------------------------------------------
// D. close() versus shutdown(), SHUT_RD, EPIPE

func partCloseVersusShutdown(d *lab.Demo) error {
	if _, err := closeVersusShutdown(d); err != nil {
		return err
	}
	if _, err := shutRead(d); err != nil {
		return err
	}
	_, err := writeAfterPeerClosed(d)
	return err
}

// CloseVersusShutdown is what the first half of part D's kernel showed.
type CloseVersusShutdown struct {
	AfterCloseDup    Ends   // both ESTABLISHED: closing one of two fds sent nothing
	ServerGotByte    []byte // a byte sent after that close arrives, and no FIN before it
	AfterShutdownDup Ends   // client FIN_WAIT2, server CLOSE_WAIT, although an fd is still open
	ServerEOF        int    // the server's read(): 0
}

// closeVersusShutdown: close() releases one reference to the socket; the FIN is sent only
// when the last reference goes (dup(2), fork(2) and SCM_RIGHTS all add references).
// shutdown() acts on the connection itself, whatever the number of references.
func closeVersusShutdown(d *lab.Demo) (r CloseVersusShutdown, err error) {
	d.Step("dup() the client's fd, then close() the copy")
	c, err := connect(d, 0)
	if err != nil {
		return r, err
	}
	defer c.closeAll()
	dup, err := unix.Dup(c.client)
	if err := d.Sys(dup, err, "dup(%d)", c.client); err != nil {
		return r, err
	}
	err = unix.Close(dup)
	if err := d.Sys(0, err, "close(%d)", dup); err != nil {
		return r, err
	}
	// Segments are delivered in order: if that close() had sent a FIN, the server would see
	// it before this byte and be in CLOSE_WAIT when the byte arrives.
	n, err := unix.Write(c.client, []byte("x"))
	if err := d.Sys(n, err, "write(%d, \"x\", 1)", c.client); err != nil {
		return r, err
	}
	buf := make([]byte, 16)
	n, err = unix.Read(c.server, buf)
	if err := d.Sys(n, err, "read(%d, %s, %d)", c.server, quoteRead(buf, n), len(buf)); err != nil {
		return r, err
	}
	r.ServerGotByte = slices.Clone(buf[:n])
	r.AfterCloseDup, err = c.ends()
	d.Kernel(c.filter())
	if err != nil {
		return r, err
	}
	d.Say("close() only dropped one of two references: no FIN, both ends ESTABLISHED, and " +
		"data sent afterwards arrives normally.")

	d.Step("dup() again and shutdown(SHUT_WR) the copy: the FIN leaves at once")
	dup, err = unix.Dup(c.client)
	if err := d.Sys(dup, err, "dup(%d)", c.client); err != nil {
		return r, err
	}
	defer unix.Close(dup)
	err = unix.Shutdown(dup, unix.SHUT_WR)
	if err := d.Sys(0, err, "shutdown(%d, SHUT_WR)", dup); err != nil {
		return r, err
	}
	r.AfterShutdownDup, err = c.awaitEnds(sockdiag.FinWait2, sockdiag.CloseWait)
	d.Kernel(c.filter())
	if err != nil {
		return r, err
	}
	r.ServerEOF, err = unix.Read(c.server, buf)
	if err := d.Sys(r.ServerEOF, err, "read(%d, \"\", %d)", c.server, len(buf)); err != nil {
		return r, err
	}
	d.Say("shutdown() acts on the connection, not on the descriptor: fd %d is still open, yet "+
		"the server has its FIN. Use shutdown() when other processes (after fork) may hold the "+
		"socket, or to half-close; close() to release your descriptor.", c.client)
	return r, nil
}

// ShutRead is what the SHUT_RD step's kernel showed.
type ShutRead struct {
	Ends         Ends  // both still ESTABLISHED: SHUT_RD sends nothing
	ShutdownBits uint8 // sock_diag's sk_shutdown bits of the client: RCV_SHUTDOWN
	EmptyRead    int   // read() with nothing queued: 0 at once, instead of blocking
	PeerSent     int   // the server can still send
	LateRecvQ    uint32
	LateRead     []byte // what the client reads of the data that came after SHUT_RD
}

// shutRead shows Linux's SHUT_RD: it sends nothing to the peer and does not stop data from
// arriving; it only makes read() return 0 instead of blocking when nothing is queued.
func shutRead(d *lab.Demo) (r ShutRead, err error) {
	d.Step("shutdown(SHUT_RD) on the client")
	c, err := connect(d, 0)
	if err != nil {
		return r, err
	}
	defer c.closeAll()
	err = unix.Shutdown(c.client, unix.SHUT_RD)
	if err := d.Sys(0, err, "shutdown(%d, SHUT_RD)", c.client); err != nil {
		return r, err
	}
	r.Ends, err = c.ends()
	d.Kernel(c.filter())
	if err != nil {
		return r, err
	}
	r.ShutdownBits = r.Ends.Client.Shutdown
	d.Result("sock_diag: client sk_shutdown = %d (RCV_SHUTDOWN)", r.ShutdownBits)
	d.Say("Nothing was sent: both ends are still ESTABLISHED.")
	buf := make([]byte, 64)
	r.EmptyRead, err = unix.Read(c.client, buf)
	if err := d.Sys(r.EmptyRead, err, "read(%d, \"\", %d)", c.client, len(buf)); err != nil {
		return r, err
	}
	d.Say("read() returned 0 at once: nothing was queued and the receiving half is shut.")

	d.Step("the server, which knows nothing of it, sends more")
	late := []byte("late data")
	r.PeerSent, err = unix.Write(c.server, late)
	if err := d.Sys(r.PeerSent, err, "write(%d, %q, %d)", c.server, late, len(late)); err != nil {
		return r, err
	}
	e, err := awaitFunc(func() (Ends, bool, error) {
		e, err := c.ends()
		return e, err == nil && e.Client.Found && e.Client.RecvQ > 0, err
	}, "the late data in the client's receive queue")
	d.Kernel(c.filter())
	r.LateRecvQ = e.Client.RecvQ
	if err != nil {
		return r, err
	}
	n, err := unix.Read(c.client, buf)
	if err := d.Sys(n, err, "read(%d, %s, %d)", c.client, quoteRead(buf, n), len(buf)); err != nil {
		return r, err
	}
	r.LateRead = slices.Clone(buf[:n])
	d.Say("On Linux, SHUT_RD neither tells the peer nor discards what it sends: the data is " +
		"ACKed, queued and readable. Other systems differ (some discard it); do not rely on " +
		"SHUT_RD to stop a peer — close the connection instead.")
	return r, nil
}

// WriteAfterClose is what the EPIPE step showed.
type WriteAfterClose struct {
	AfterServerClose Ends // client CLOSE_WAIT, server FIN_WAIT2 (no fd)
	FirstWrite       int  // succeeds: the kernel cannot know yet that nobody will read it
	FirstErr         error
	AfterRST         Ends           // both gone: the server's orphan answered with RST
	ClientFDState    sockdiag.State // CLOSE
	SecondErr        error          // EPIPE, with MSG_NOSIGNAL
	PlainWriteErr    error          // EPIPE from write(), whose SIGPIPE Go's runtime ignores
}

// writeAfterPeerClosed: a FIN only says the peer will send nothing more. The first write
// after it is accepted; the peer, whose socket is closed, answers it with RST; the next write
// fails with EPIPE (and raises SIGPIPE unless MSG_NOSIGNAL is given).
func writeAfterPeerClosed(d *lab.Demo) (r WriteAfterClose, err error) {
	d.Step("the server closes; the client writes twice")
	c, err := connect(d, 0)
	if err != nil {
		return r, err
	}
	defer c.closeAll()
	if err := c.closeServer(d); err != nil {
		return r, err
	}
	r.AfterServerClose, err = c.awaitEnds(sockdiag.CloseWait, sockdiag.FinWait2)
	d.Kernel(c.filter())
	if err != nil {
		return r, err
	}
	msg := []byte("hello?")
	// MSG_NOSIGNAL: report EPIPE as an error, without raising SIGPIPE (send(2)).
	r.FirstWrite, r.FirstErr = unix.SendmsgN(c.client, msg, nil, nil, unix.MSG_NOSIGNAL)
	if err := d.Sys(r.FirstWrite, r.FirstErr, "send(%d, %q, %d, MSG_NOSIGNAL)", c.client, msg, len(msg)); err != nil {
		return r, err
	}
	r.AfterRST, err = c.awaitEnds(Gone, Gone)
	d.Kernel(c.filter())
	if err != nil {
		return r, err
	}
	if r.ClientFDState, err = sockdiag.StateOf(c.client); err != nil {
		return r, err
	}
	d.Say("The first write succeeded, but the server's socket no longer exists for reading: "+
		"it answered with RST, and both ends are gone from the table (TCP_INFO on fd %d: %v).",
		c.client, r.ClientFDState)
	_, r.SecondErr = unix.SendmsgN(c.client, msg, nil, nil, unix.MSG_NOSIGNAL)
	d.Sys(0, r.SecondErr, "send(%d, %q, %d, MSG_NOSIGNAL)", c.client, msg, len(msg))
	_, r.PlainWriteErr = unix.Write(c.client, msg)
	d.Sys(0, r.PlainWriteErr, "write(%d, %q, %d)", c.client, msg, len(msg))
	d.Say("The second write fails with EPIPE. Without MSG_NOSIGNAL the kernel also sends " +
		"SIGPIPE, whose default action kills a C program. Go's runtime catches SIGPIPE: a " +
		"broken pipe on fd 1 or 2 still ends the program, but on any other fd (like this " +
		"socket) the signal is ignored and the call just returns EPIPE (os/signal docs).")
	if !errors.Is(r.SecondErr, unix.EPIPE) {
		return r, fmt.Errorf("second write: got %v, the lesson expects EPIPE", r.SecondErr)
	}
	return r, nil
}

// ---------------------------------------------------------------------------------------
// E. Abortive close

func partAbort(d *lab.Demo) error {
	if _, err := lingerZero(d); err != nil {
		return err
	}
	_, err := closeWithUnreadData(d)
	return err
}

// Abort is what an abortive close showed on the peer.
type Abort struct {
	AfterClose       Ends           // both gone from sock_diag at once: no FIN_WAIT, no TIME_WAIT
	ServerFDState    sockdiag.State // TCP_INFO on the server's fd: CLOSE
	FirstReadErr     error          // ECONNRESET
	SecondRead       int            // 0
	SecondReadErr    error
	AfterServerClose Ends // still nothing: no TIME_WAIT on either side
}

// lingerZero: SO_LINGER with l_onoff=1, l_linger=0 makes close() abort the connection: the
// kernel sends RST and forgets the socket at once (socket(7), SO_LINGER).
func lingerZero(d *lab.Demo) (r Abort, err error) {
	d.Step("SO_LINGER {on, 0 s} on the client, then close(): RST instead of FIN")
	c, err := connect(d, 0)
	if err != nil {
		return r, err
	}
	defer c.closeAll()
	err = unix.SetsockoptLinger(c.client, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
	if err := d.Sys(0, err, "setsockopt(%d, SOL_SOCKET, SO_LINGER, {l_onoff=1, l_linger=0}, 8)", c.client); err != nil {
		return r, err
	}
	if err := c.closeClient(d); err != nil {
		return r, err
	}
	return r, c.afterAbort(d, &r)
}

// closeWithUnreadData: closing a socket whose receive queue holds unread data sends RST, not
// FIN, telling the peer that data was lost (RFC 2525, section 2.17; tcp_close()).
func closeWithUnreadData(d *lab.Demo) (r Abort, err error) {
	d.Step("the server sends; the client close()s without reading: RST")
	c, err := connect(d, 0)
	if err != nil {
		return r, err
	}
	defer c.closeAll()
	msg := []byte("you will never read this")
	n, err := unix.Write(c.server, msg)
	if err := d.Sys(n, err, "write(%d, %q, %d)", c.server, msg, len(msg)); err != nil {
		return r, err
	}
	if _, err := awaitFunc(func() (Ends, bool, error) {
		e, err := c.ends()
		return e, err == nil && e.Client.RecvQ == uint32(len(msg)), err
	}, "the data in the client's receive queue"); err != nil {
		return r, err
	}
	d.Kernel(c.filter())
	if err := c.closeClient(d); err != nil {
		return r, err
	}
	return r, c.afterAbort(d, &r)
}

// afterAbort shows the peer's side of an abortive close: its socket is reset, its next read
// reports ECONNRESET once, then end of file; and no TIME_WAIT exists anywhere.
func (c *conn) afterAbort(d *lab.Demo, r *Abort) (err error) {
	r.AfterClose, err = c.awaitEnds(Gone, Gone)
	d.Kernel(c.filter())
	if err != nil {
		return err
	}
	if r.ServerFDState, err = sockdiag.StateOf(c.server); err != nil {
		return err
	}
	d.Result("getsockopt(%d, TCP_INFO): tcpi_state = %v", c.server, r.ServerFDState)
	d.Say("The RST finished the server's socket at once; it is out of the table, only the fd is left.")
	buf := make([]byte, 64)
	n, err := unix.Read(c.server, buf)
	r.FirstReadErr = err
	d.Sys(n, err, "read(%d, \"\", %d)", c.server, len(buf))
	r.SecondRead, r.SecondReadErr = unix.Read(c.server, buf)
	d.Sys(r.SecondRead, r.SecondReadErr, "read(%d, \"\", %d)", c.server, len(buf))
	if err := c.closeServer(d); err != nil {
		return err
	}
	r.AfterServerClose, err = c.ends()
	d.Kernel(c.filter())
	d.Say("The error is reported once (ECONNRESET), then the socket reads as end of file. " +
		"No FIN_WAIT, no TIME_WAIT on either end: an abort skips the whole closing " +
		"sequence — and with it TIME_WAIT's protection against old duplicate segments.")
	return err
}

// ---------------------------------------------------------------------------------------
// F. Who gets TIME_WAIT

func partWhoGetsTimeWait(d *lab.Demo) error {
	view := newPacketView(d) // the same closes, as segments on the wire
	defer view.stop()
	if _, err := whoGetsTimeWait(d, view, true); err != nil {
		return err
	}
	if _, err := whoGetsTimeWait(d, view, false); err != nil {
		return err
	}
	_, err := promptPassiveClose(d, view)
	return err
}

// WhoGetsTimeWait is what part F's kernel showed for one order of closing.
type WhoGetsTimeWait struct {
	AfterFirstClose  Ends // the first closer in FIN_WAIT2, the other in CLOSE_WAIT
	AfterSecondClose Ends // TIME_WAIT on the first closer only; the other end gone
	// Wire is the connection as captured on loopback (nil without the packet view):
	// handshake, then FIN, ACK, FIN, ACK, because the second closer waits.
	Wire *capture.Conversation
}

// whoGetsTimeWait runs the same close twice, only the order differs: TIME_WAIT belongs to
// the end that sent the first FIN (the active closer), whichever role it plays.
func whoGetsTimeWait(d *lab.Demo, view *packetView, serverFirst bool) (r WhoGetsTimeWait, err error) {
	first, second := "client", "server"
	if serverFirst {
		first, second = "server", "client"
	}
	d.Step("the %s closes first, then the %s", first, second)
	c, err := connectWatched(d, 0, view)
	if err != nil {
		return r, err
	}
	defer c.closeAll()
	view.note(c)
	closeFirst, closeSecond := c.closeClient, c.closeServer
	secondFD := c.server
	want1 := [2]sockdiag.State{sockdiag.FinWait2, sockdiag.CloseWait}
	want2 := [2]sockdiag.State{sockdiag.TimeWait, Gone}
	if serverFirst {
		closeFirst, closeSecond = c.closeServer, c.closeClient
		secondFD = c.client
		want1 = [2]sockdiag.State{sockdiag.CloseWait, sockdiag.FinWait2}
		want2 = [2]sockdiag.State{Gone, sockdiag.TimeWait}
	}
	if err := closeFirst(d); err != nil {
		return r, err
	}
	// FIN_WAIT2 means the first closer has the ACK of its FIN: the second closer's kernel
	// acknowledged the FIN on its own, before the second close() below. On the wire that
	// makes the close four segments, every time.
	r.AfterFirstClose, err = c.awaitEnds(want1[0], want1[1])
	view.note(c)
	d.Kernel(c.filter())
	if err != nil {
		return r, err
	}
	buf := make([]byte, 16)
	n, err := unix.Read(secondFD, buf)
	if err := d.Sys(n, err, "read(%d, \"\", %d)", secondFD, len(buf)); err != nil {
		return r, err
	}
	if err := closeSecond(d); err != nil {
		return r, err
	}
	r.AfterSecondClose, err = c.awaitEnds(want2[0], want2[1])
	view.note(c)
	d.Kernel(c.filter())
	if err != nil {
		return r, err
	}
	d.Say("TIME_WAIT is on the %s (local port %d), which closed first.", first,
		map[bool]uint16{true: c.serverAddr.Port(), false: c.clientAddr.Port()}[serverFirst])
	if r.Wire, err = view.closed(c); err != nil {
		return r, err
	}
	if r.Wire != nil {
		view.show(r.Wire)
		d.Say("The close took %d segments: %s. The %s did not close at once, so its kernel "+
			"acknowledged the FIN by itself (a delayed ACK) and its own FIN followed in a "+
			"segment of its own. A FIN takes one sequence number: each ACK of a FIN "+
			"acknowledges the FIN's seq + 1.",
			len(closeSegments(r.Wire)), describeClose(closeSegments(r.Wire)), second)
	}
	return r, nil
}

// PromptClose is what the close in which the passive side closes at once showed.
type PromptClose struct {
	// ServerATO is tcpi_ato of the server before the FIN arrived: how long its kernel will
	// delay an ACK (the delayed-ACK timeout, 40 ms once data has been received).
	ServerATO time.Duration
	ServerEOF int  // the server's read(): 0, the client's FIN
	End       Ends // client TIME_WAIT, server gone
	// Wire is the captured connection (nil without the packet view): after the handshake
	// and the data, usually three segments, FIN, FIN+ACK, ACK.
	Wire *capture.Conversation
	// FINGap is the time between the client's FIN and the server's FIN on the wire, as the
	// kernel stamped them (0 without the packet view).
	FINGap time.Duration
}

// promptPassiveClose: the passive side closes as soon as read() returns 0. The ACK of the
// client's FIN is delayed by the server's kernel (tcp_send_delayed_ack: it hopes to send it
// with data), so when the server's FIN leaves within that delay it carries the ACK, and the
// close takes three segments instead of four.
func promptPassiveClose(d *lab.Demo, view *packetView) (r PromptClose, err error) {
	d.Step("the client sends a last message and closes; the server closes at once")
	c, err := connectWatched(d, 0, view)
	if err != nil {
		return r, err
	}
	defer c.closeAll()
	view.note(c)
	msg := []byte("bye")
	n, err := unix.Write(c.client, msg)
	if err := d.Sys(n, err, "write(%d, %q, %d)", c.client, msg, len(msg)); err != nil {
		return r, err
	}
	buf := make([]byte, 64)
	n, err = unix.Read(c.server, buf)
	if err := d.Sys(n, err, "read(%d, %s, %d)", c.server, quoteRead(buf, n), len(buf)); err != nil {
		return r, err
	}
	info, err := sockdiag.TCPInfo(c.server)
	if err != nil {
		return r, err
	}
	r.ServerATO = time.Duration(info.Ato) * time.Microsecond
	d.Result("getsockopt(%d, TCP_INFO): tcpi_ato = %d", c.server, info.Ato)
	d.Say("tcpi_ato is how long (µs) the server's kernel may delay an ACK, hoping to send "+
		"it with data or a FIN: the delayed-ACK timeout (延迟确认), %.0f ms here.", ms(r.ServerATO))

	// The three calls run back to back and are printed afterwards: the lesson is that the
	// server's close() follows its read() of 0 at once.
	clientFD, serverFD := c.client, c.server
	closeErr := unix.Close(c.client)
	c.client = -1
	r.ServerEOF, err = unix.Read(c.server, buf) // blocks until the FIN is there
	serverCloseErr := unix.Close(c.server)
	c.server = -1
	d.Sys(0, closeErr, "close(%d)", clientFD)
	d.Sys(r.ServerEOF, err, "read(%d, \"\", %d)", serverFD, len(buf))
	d.Sys(0, serverCloseErr, "close(%d)", serverFD)
	if err := errors.Join(closeErr, err, serverCloseErr); err != nil {
		return r, err
	}
	r.End, err = c.awaitEnds(sockdiag.TimeWait, Gone)
	view.note(c)
	d.Kernel(c.filter())
	if err != nil {
		return r, err
	}
	if r.Wire, err = view.closed(c); err != nil || r.Wire == nil {
		return r, err
	}
	view.show(r.Wire)
	segs := closeSegments(r.Wire)
	r.FINGap = finGap(r.Wire)
	if len(segs) == 3 {
		d.Say("Three segments: %s. The server's FIN left %.3f ms after the client's FIN, "+
			"before its kernel's delayed-ACK timer (%.0f ms) fired, so the ACK of the client's "+
			"FIN rode on the server's FIN. That is why a close is sometimes three segments "+
			"on the wire, not four.", describeClose(segs), ms(r.FINGap), ms(r.ServerATO))
	} else {
		d.Say("%d segments this time: %s. The server's FIN left %.3f ms after the client's "+
			"FIN — later than its delayed-ACK timer (%.0f ms), so the ACK went alone. (This "+
			"process was not scheduled in time; usually the close follows within "+
			"microseconds and takes three segments.)", len(segs), describeClose(segs),
			ms(r.FINGap), ms(r.ServerATO))
	}
	return r, nil
}

// finGap is the time from the client's FIN to the server's FIN on the wire.
func finGap(conv *capture.Conversation) time.Duration {
	var fin [2]time.Time
	for _, s := range conv.Segments {
		if s.Flags&capture.FIN != 0 && fin[s.From].IsZero() {
			fin[s.From] = s.Time
		}
	}
	if fin[capture.Client].IsZero() || fin[capture.Server].IsZero() {
		return 0
	}
	return fin[capture.Server].Sub(fin[capture.Client])
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// ---------------------------------------------------------------------------------------
// G. tcp_fin_timeout

// finTimeoutSeconds is the value part G gives net.ipv4.tcp_fin_timeout in its namespace.
const finTimeoutSeconds = 3

func partFinTimeout(d *lab.Demo) error {
	if !d.NeedPrivate("setting net.ipv4.tcp_fin_timeout") {
		return nil
	}
	_, err := finTimeout(d, finTimeoutSeconds)
	return err
}

// FinTimeout is what part G's kernel showed.
type FinTimeout struct {
	Orphan        End           // FIN_WAIT2 with no fd, its timer at most tcp_fin_timeout
	TimeWait      End           // a TIME_WAIT made at the same moment: 60 s
	OrphanLived   time.Duration // from close() to the kernel forgetting the orphan
	TimeWaitAfter End           // the TIME_WAIT, when the orphan has gone: still there, ~55+ s
	ServerAfter   End           // the orphan's peer, still in CLOSE_WAIT
}

// finTimeout: a socket closed with close() while the peer keeps its end open waits in
// FIN_WAIT2 for a FIN that may never come. Since no process can read from it any more, the
// kernel limits that wait to net.ipv4.tcp_fin_timeout (tcp(7)); TIME_WAIT is not affected.
func finTimeout(d *lab.Demo, seconds int) (r FinTimeout, err error) {
	d.Step("set net.ipv4.tcp_fin_timeout = %d in this private namespace", seconds)
	old, err := netlab.Sysctl("net.ipv4.tcp_fin_timeout")
	if err != nil {
		return r, err
	}
	restore, err := netlab.SetSysctls("net.ipv4.tcp_fin_timeout", fmt.Sprint(seconds))
	if err != nil {
		return r, err
	}
	defer restore()
	d.Say("write /proc/sys/net/ipv4/tcp_fin_timeout: %s -> %d (this namespace only)", old, seconds)

	d.Step("connection 1 closes client first, completely: a TIME_WAIT")
	tw, err := connect(d, 0)
	if err != nil {
		return r, err
	}
	defer tw.closeAll()
	if err := tw.closeClient(d); err != nil {
		return r, err
	}
	if err := tw.closeServer(d); err != nil {
		return r, err
	}
	twEnds, err := tw.awaitEnds(sockdiag.TimeWait, Gone)
	if err != nil {
		return r, err
	}
	r.TimeWait = twEnds.Client

	d.Step("connection 2: the client close()s, the server never does: an orphan")
	c, err := connect(d, 0)
	if err != nil {
		return r, err
	}
	defer c.closeAll()
	if err := c.closeClient(d); err != nil {
		return r, err
	}
	start := time.Now()
	e, err := c.awaitEnds(sockdiag.FinWait2, sockdiag.CloseWait)
	both := sockdiag.Filter{Ports: []uint16{tw.serverAddr.Port(), c.serverAddr.Port()}}
	d.Kernel(both)
	if err != nil {
		return r, err
	}
	r.Orphan = e.Client

	d.Step("wait for the kernel to drop the orphan")
	deadline := time.Duration(seconds)*time.Second + awaitTimeout
	lab.Poll(deadline-time.Since(start), func() bool {
		e, err = c.ends()
		return err != nil || !e.Client.Found
	})
	if err != nil {
		return r, err
	}
	r.OrphanLived = time.Since(start)
	r.ServerAfter = e.Server
	if e.Client.Found {
		return r, fmt.Errorf("the orphaned FIN_WAIT2 still exists after %v: %v", r.OrphanLived, e.Client)
	}
	twNow, err := look(tw.clientAddr, tw.serverAddr)
	if err != nil {
		return r, err
	}
	r.TimeWaitAfter = twNow
	d.Kernel(both)
	d.Say("The orphaned FIN_WAIT2 vanished after about %.1f s (tcp_fin_timeout = %d s); "+
		"the TIME_WAIT made just before it still has most of its 60 s: tcp_fin_timeout "+
		"does not shorten TIME_WAIT, whatever some tuning guides say.", r.OrphanLived.Seconds(), seconds)

	d.Step("the server finally closes: its FIN finds no socket, and is answered with RST")
	if err := c.closeServer(d); err != nil {
		return r, err
	}
	_, err = c.awaitEnds(Gone, Gone)
	d.Kernel(both)
	return r, err
}
