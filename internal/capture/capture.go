//go:build linux

// Package capture records the TCP segments of a lesson's own connections on the loopback
// interface, so a chapter can show the packets behind its system calls: the three-way handshake
// (三次握手) as SYN seq=x, SYN-ACK seq=y ack=x+1, ACK ack=y+1, and the FIN exchange of a close
// (四次挥手) in which each FIN consumes one sequence number.
//
// How: an AF_PACKET socket (packet(7)) of type SOCK_DGRAM bound to lo, so each packet starts at
// its IP header, read through a PACKET_RX_RING shared with the kernel (which stamps each packet
// as it arrives). Loopback shows every packet twice — once leaving (PACKET_OUTGOING) and once
// arriving (PACKET_HOST) — and only the arriving copy is kept, so each segment is recorded once.
// A classic BPF filter (SO_ATTACH_FILTER) runs in the kernel to drop the outgoing copies and
// everything that is not TCP on the lesson's ports, and cuts each packet to its headers.
//
// Opening a packet socket needs CAP_NET_RAW, which a student has inside the lesson's private
// user+network namespace (internal/netlab) and not on the host. Start refuses outside that
// namespace on purpose (ErrNotPrivate): on the host it would record other programs' loopback
// traffic. A demo running with -host says so in one line and continues without the packet view.
//
// The whole API:
//
//	c, err := capture.Start(port)              // before connect(); ports optional (≤ 32)
//	defer c.Close()
//	notes, err := capture.KernelStates(client, server) // after each step: both ends' states
//	conv, err := c.WaitConversation(client, server, 2*time.Second, (*capture.Conversation).Closed)
//	conv, err := c.WaitConversation(client, server, 2*time.Second, capture.AtLeast(3))
//	fmt.Print(conv.ASCII(notes...))            // sequence diagram, ≤ 80 columns
//	fmt.Print(conv.Mermaid(notes...))          // the same as a Mermaid sequenceDiagram
//	conv.Client, conv.Server, conv.ClientISN, conv.ServerISN, conv.From(capture.Server)
//	seg := conv.Segments[i] // Seq, Ack, RelSeq, RelAck, Flags (capture.SYN|capture.ACK ...),
//	                        // Len, Window, Win, MSS, WScale, Time, From; seg.Label(), seg.String()
//	segs := c.Segments(); segs, err := c.WaitFor(n, timeout) // every recorded segment
//
// Waiting is event-driven (each recorded segment wakes the waiters), never a sleep. See Example
// for a chapter's use.
package capture

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"socklab/internal/netlab"
)

// ErrNotPrivate is returned by Start outside the lesson's private network namespace.
var ErrNotPrivate = errors.New("packet capture runs only inside the lesson's private network namespace " +
	"(on the host it would need CAP_NET_RAW and would see other programs' loopback traffic)")

// Capture is a running capture of TCP segments on loopback. Its methods are safe for
// concurrent use.
type Capture struct {
	file *os.File // the packet socket, registered with Go's poller so Close can wake the reader
	conn syscall.RawConn
	ring *ring
	done chan struct{} // closed when the reader goroutine has returned

	mu      sync.Mutex
	segs    []Segment
	changed chan struct{} // closed and replaced whenever segs grows or the reader stops
	readErr error

	closeOnce sync.Once
	closeErr  error
}

// Start opens the capture on lo of the calling thread's network namespace and returns once the
// kernel is queueing packets to it: every segment sent after Start returns is recorded. With
// ports, only segments whose source or destination port is one of them are kept (up to 32);
// without, every TCP segment on lo. Close it when done.
func Start(ports ...uint16) (*Capture, error) {
	if !netlab.Current().Private {
		return nil, ErrNotPrivate
	}
	prog, err := filterProgram(ports)
	if err != nil {
		return nil, err
	}
	// Protocol 0: the socket receives nothing until bind names a protocol, so no packet slips
	// in before the filter is attached (packet(7)).
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("capture: socket(AF_PACKET, SOCK_DGRAM, 0): %w (needs CAP_NET_RAW)", err)
	}
	r, err := setup(fd, prog)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	file := os.NewFile(uintptr(fd), "packet-capture")
	conn, err := file.SyscallConn()
	if err != nil {
		r.unmap()
		file.Close()
		return nil, fmt.Errorf("capture: %w", err)
	}
	c := &Capture{file: file, conn: conn, ring: r, done: make(chan struct{}), changed: make(chan struct{})}
	go c.read()
	return c, nil
}

// setup attaches the filter, maps the receive ring and binds to lo.
func setup(fd int, prog []unix.SockFilter) (*ring, error) {
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &fprog); err != nil {
		return nil, fmt.Errorf("capture: setsockopt(SO_ATTACH_FILTER): %w", err)
	}
	r, err := mapRing(fd)
	if err != nil {
		return nil, err
	}
	ifr, err := unix.NewIfreq("lo")
	if err == nil {
		err = unix.IoctlIfreq(fd, unix.SIOCGIFINDEX, ifr)
	}
	if err != nil {
		r.unmap()
		return nil, fmt.Errorf("capture: ioctl(SIOCGIFINDEX, lo): %w", err)
	}
	sa := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: int(ifr.Uint32())}
	if err := unix.Bind(fd, sa); err != nil {
		r.unmap()
		return nil, fmt.Errorf("capture: bind(AF_PACKET, lo): %w", err)
	}
	return r, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// read is the reader goroutine: it records packets from the ring until Close sets a read
// deadline, then takes what the kernel had already put in the ring.
func (c *Capture) read() {
	defer close(c.done)
	// Returning false asks Go's poller to wait until the socket is readable again, which a
	// packet socket with a ring reports when a frame is ready for us (packet_poll).
	err := c.conn.Read(func(uintptr) bool {
		c.ring.each(c.record)
		return false
	})
	c.ring.each(c.record)
	c.mu.Lock()
	if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		c.readErr = fmt.Errorf("capture: %w", err)
	}
	c.notifyLocked()
	c.mu.Unlock()
}

// record parses one packet and keeps it if it is an arriving TCP segment.
func (c *Capture) record(pkt []byte, pkttype uint8, ts time.Time) {
	// The filter already drops outgoing copies; checking again keeps each segment once even if
	// the filter were ever detached.
	if pkttype == unix.PACKET_OUTGOING {
		return
	}
	seg, ok := parseIP(pkt)
	if !ok {
		return
	}
	seg.Time = ts
	c.mu.Lock()
	c.segs = append(c.segs, seg)
	c.notifyLocked()
	c.mu.Unlock()
}

func (c *Capture) notifyLocked() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// Segments returns a copy of every segment recorded so far, in the order the kernel queued
// them to the capture.
func (c *Capture) Segments() []Segment {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Segment(nil), c.segs...)
}

// WaitFor waits until at least n segments have been recorded, or timeout passes, and returns the
// segments recorded so far. The error says how many were missing.
func (c *Capture) WaitFor(n int, timeout time.Duration) ([]Segment, error) {
	segs, err := c.wait(timeout, func(segs []Segment) bool { return len(segs) >= n })
	if err != nil {
		return segs, fmt.Errorf("capture: %d of %d segments recorded: %w", len(segs), n, err)
	}
	return segs, nil
}

// Conversation returns the segments recorded so far between a and b (in either order), with
// relative numbers filled in.
func (c *Capture) Conversation(a, b netip.AddrPort) *Conversation {
	return NewConversation(a, b, c.Segments())
}

// WaitConversation waits until the conversation between a and b satisfies until (e.g.
// AtLeast(3), or (*Conversation).Closed), or timeout passes, and returns it. On timeout it
// returns what was recorded and an error describing it.
func (c *Capture) WaitConversation(a, b netip.AddrPort, timeout time.Duration, until func(*Conversation) bool) (*Conversation, error) {
	var conv *Conversation
	_, err := c.wait(timeout, func(segs []Segment) bool {
		conv = NewConversation(a, b, segs)
		return until(conv)
	})
	if err != nil {
		return conv, fmt.Errorf("capture: conversation %v ↔ %v has %d segments, not what was awaited: %w",
			a, b, len(conv.Segments), err)
	}
	return conv, nil
}

// AtLeast is a WaitConversation condition: at least n segments recorded.
func AtLeast(n int) func(*Conversation) bool {
	return func(c *Conversation) bool { return len(c.Segments) >= n }
}

// errTimeout is wrapped by the wait errors so callers can tell a timeout from a failed socket.
var errTimeout = errors.New("timed out")

// wait blocks until done(segments) is true; it wakes on every new segment, never polls.
func (c *Capture) wait(timeout time.Duration, done func([]Segment) bool) ([]Segment, error) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		c.mu.Lock()
		segs := append([]Segment(nil), c.segs...)
		changed, readErr := c.changed, c.readErr
		stopped := isClosed(c.done)
		c.mu.Unlock()
		if done(segs) {
			return segs, nil
		}
		if readErr != nil {
			return segs, readErr
		}
		if stopped {
			return segs, errors.New("capture closed")
		}
		select {
		case <-changed:
		case <-timer.C:
			return segs, fmt.Errorf("%w after %v", errTimeout, timeout)
		}
	}
}

func isClosed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// Close stops the capture. Segments the kernel had already queued are still recorded, and
// Segments keeps working afterwards. It reports an error if the kernel dropped packets because
// the capture's receive buffer was full (then a diagram may miss segments).
func (c *Capture) Close() error {
	c.closeOnce.Do(func() {
		// The deadline wakes the reader without closing the fd under it.
		_ = c.file.SetReadDeadline(time.Now())
		<-c.done
		var dropped uint32
		_ = c.conn.Control(func(fd uintptr) {
			if st, err := unix.GetsockoptTpacketStats(int(fd), unix.SOL_PACKET, unix.PACKET_STATISTICS); err == nil {
				dropped = st.Drops
			}
		})
		c.ring.unmap()
		err := c.file.Close()
		c.mu.Lock()
		readErr := c.readErr
		c.mu.Unlock()
		switch {
		case err != nil:
			c.closeErr = fmt.Errorf("capture: close: %w", err)
		case readErr != nil:
			c.closeErr = readErr
		case dropped > 0:
			c.closeErr = fmt.Errorf("capture: the kernel dropped %d packets (receive buffer full); the record is incomplete", dropped)
		}
	})
	return c.closeErr
}
