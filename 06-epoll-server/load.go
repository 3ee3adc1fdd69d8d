//go:build linux

package main

import (
	"bytes"
	"container/heap"
	"fmt"
	"net/netip"
	"slices"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"socklab/internal/lab"
)

// LoadConfig describes a load run: Conns connections to Addr, each sending a Size-byte
// message, waiting for the whole echo, and sending again, for Duration.
type LoadConfig struct {
	Addr     netip.AddrPort
	Conns    int
	Size     int
	Duration time.Duration
	// Idle opens the connections and holds them without sending, until Duration passes or
	// Stop delivers; Ready is called once all are connected.
	Idle  bool
	Stop  <-chan struct{}
	Ready func(open int)
	// Rate, if positive, paces the ping-pong to that many round trips per second over all
	// connections: each connection keeps to a schedule of one message every Conns/Rate
	// seconds, the first ones spread over one interval. A message whose turn came while its
	// predecessor's echo was still out goes as soon as the echo is back; more than one
	// interval late, the schedule starts afresh from then (no bursts to catch up). Zero sends
	// again as soon as each echo is back, as fast as the server and this generator can go.
	// Why pace: at full speed both processes run at a full core, so "CPU per round trip" is
	// mostly one over the rate each reached; at the same paced rate it compares the CPU
	// each server needs for the same work (docs/06-epoll-server.md, "Results").
	Rate float64
}

// LoadResult is what a load run measured.
type LoadResult struct {
	Conns      int
	Size       int
	Seconds    float64
	RoundTrips int64
	PerSecond  float64 // round trips per second
	P50us      float64 // median round-trip latency, microseconds
	P99us      float64
	Errors     int64 // wrong echoes, resets, unexpected closes
}

// String is the one-line summary the load role prints.
func (r LoadResult) String() string {
	return fmt.Sprintf("%d conns × %d B for %.1fs: %d round trips, %.0f rt/s, p50 %.1f µs, p99 %.1f µs, %d errors",
		r.Conns, r.Size, r.Seconds, r.RoundTrips, r.PerSecond, r.P50us, r.P99us, r.Errors)
}

// maxSamples bounds latency memory; after it, every round trip still counts but only a
// stride of them is sampled.
const maxSamples = 1 << 20

type loadConn struct {
	index    int // in the connection table, and the epoll_data of its events
	fd       int
	sent     int       // bytes of the current message sent
	got      int       // bytes of its echo received
	started  time.Time // when the message's first byte was sent
	next     time.Time // paced: when the next message may start
	finished bool
}

// dueQueue holds the paced connections waiting to start their next message, earliest
// first (a binary heap, container/heap).
type dueQueue []*loadConn

func (q dueQueue) Len() int           { return len(q) }
func (q dueQueue) Less(i, j int) bool { return q[i].next.Before(q[j].next) }
func (q dueQueue) Swap(i, j int)      { q[i], q[j] = q[j], q[i] }
func (q *dueQueue) Push(x any)        { *q = append(*q, x.(*loadConn)) }
func (q *dueQueue) Pop() any {
	old := *q
	c := old[len(old)-1]
	*q = old[:len(old)-1]
	return c
}

// RunLoad runs the load generator. It is itself an epoll client, so that it costs little CPU
// next to the server it measures.
func RunLoad(cfg LoadConfig) (LoadResult, error) {
	res := LoadResult{Conns: cfg.Conns, Size: cfg.Size}
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return res, fmt.Errorf("epoll_create1: %w", err)
	}
	defer unix.Close(epfd)
	conns := make([]*loadConn, 0, cfg.Conns)
	defer func() {
		for _, c := range conns {
			unix.Close(c.fd)
		}
	}()
	sa := lab.SockaddrOf(cfg.Addr)
	family := unix.AF_INET
	if cfg.Addr.Addr().Is6() {
		family = unix.AF_INET6
	}
	for i := range cfg.Conns {
		fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return res, fmt.Errorf("socket (connection %d): %w", i+1, err)
		}
		c := &loadConn{index: i, fd: fd}
		conns = append(conns, c)
		// A blocking connect keeps this simple; on loopback it returns within microseconds.
		if err := connectRetry(fd, sa); err != nil {
			return res, fmt.Errorf("connect %v (connection %d): %w", cfg.Addr, i+1, err)
		}
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
		if err := unix.SetNonblock(fd, true); err != nil {
			return res, err
		}
		ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(i)}
		if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
			return res, fmt.Errorf("epoll_ctl: %w", err)
		}
	}
	if cfg.Idle {
		if cfg.Ready != nil {
			cfg.Ready(len(conns))
		}
		select {
		case <-time.After(cfg.Duration):
		case <-cfg.Stop:
		}
		return res, nil
	}

	var interval time.Duration // paced: from one message's start to the next on a connection
	if cfg.Rate > 0 {
		interval = time.Duration(float64(cfg.Conns) / cfg.Rate * float64(time.Second))
	}
	var due dueQueue // paced connections waiting for their turn
	msg := make([]byte, cfg.Size)
	for i := range msg {
		msg[i] = byte('a' + i%26)
	}
	buf := make([]byte, max(cfg.Size, 64<<10))
	samples := make([]int64, 0, min(maxSamples, 1<<16))
	stride := int64(1)
	start := time.Now()
	deadline := start.Add(cfg.Duration)
	stopping := false
	active := len(conns)

	// send sends what remains of the current message; EAGAIN waits for EPOLLOUT.
	send := func(i int, c *loadConn) {
		for c.sent < len(msg) {
			n, err := unix.SendmsgN(c.fd, msg[c.sent:], nil, nil, unix.MSG_NOSIGNAL)
			if err == unix.EINTR {
				continue
			}
			if err == unix.EAGAIN {
				ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLOUT, Fd: int32(i)}
				_ = unix.EpollCtl(epfd, unix.EPOLL_CTL_MOD, c.fd, &ev)
				return
			}
			if err != nil {
				res.Errors++
				c.finished = true
				active--
				return
			}
			c.sent += n
		}
	}
	now := time.Now()
	for i, c := range conns {
		if cfg.Rate > 0 { // paced: spread the first messages over one interval
			c.next = now.Add(time.Duration(float64(i) / cfg.Rate * float64(time.Second)))
			heap.Push(&due, c)
			continue
		}
		c.started = now
		send(i, c)
	}
	events := make([]unix.EpollEvent, 256)
	var elapsed time.Duration
	var atDeadline int64
	lastYield := start
	for active > 0 {
		timeout := 100 * time.Millisecond // wake now and then to notice the deadline even if nothing happens
		graceOver := stopping
		if stopping {
			timeout = 5 * time.Second // grace for echoes in flight, long enough for a busy machine
		} else if len(due) > 0 {
			now := time.Now()
			for len(due) > 0 && !due[0].next.After(now) {
				c := heap.Pop(&due).(*loadConn)
				c.sent, c.got, c.started = 0, 0, now
				send(c.index, c)
			}
			if len(due) > 0 {
				timeout = min(timeout, due[0].next.Sub(now))
			}
		}
		n, err := epollWaitFor(epfd, events, timeout, interval > 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return res, err
		}
		now := time.Now()
		// The same loop as the server's, so the same reason to yield (server.go, yieldIfDue),
		// and the role takes a second P when pinned for the same reason (roles.go, secondP):
		// without both, the load generator spent its CPU on Go's sysmon and capped the rate
		// that either server saw (docs/06-epoll-server.md, "Results").
		lastYield = yieldIfDue(lastYield, now)
		if !stopping && now.After(deadline) {
			// The rate counts round trips completed by the deadline; messages in flight
			// are still awaited (and checked), but no new ones are sent.
			stopping, elapsed, atDeadline = true, now.Sub(start), res.RoundTrips
			for _, c := range due { // paced connections waiting to send: nothing in flight
				c.finished = true
				active--
			}
			due = nil
		}
		if graceOver && n == 0 {
			break // nothing came back within the grace period: the stragglers are errors
		}
		for _, ev := range events[:n] {
			i := int(ev.Fd)
			c := conns[i]
			if c.finished {
				continue
			}
			if ev.Events&unix.EPOLLOUT != 0 && c.sent < len(msg) {
				ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(i)}
				_ = unix.EpollCtl(epfd, unix.EPOLL_CTL_MOD, c.fd, &ev)
				send(i, c)
			}
			if ev.Events&(unix.EPOLLIN|unix.EPOLLERR|unix.EPOLLHUP) == 0 {
				continue
			}
			r, err := unix.Read(c.fd, buf[:len(msg)-c.got])
			if err == unix.EAGAIN || err == unix.EINTR {
				continue
			}
			if err != nil || r == 0 || !bytes.Equal(buf[:r], msg[c.got:c.got+r]) {
				res.Errors++
				c.finished = true
				active--
				continue
			}
			c.got += r
			if c.got < len(msg) {
				continue
			}
			res.RoundTrips++
			if res.RoundTrips%stride == 0 {
				samples = append(samples, int64(now.Sub(c.started)))
				if len(samples) == maxSamples { // keep every other sample, sample half as often
					for k := range maxSamples / 2 {
						samples[k] = samples[2*k]
					}
					samples = samples[:maxSamples/2]
					stride *= 2
				}
			}
			if stopping {
				c.finished = true
				active--
				continue
			}
			if interval > 0 {
				// Keep to the connection's schedule rather than to its last send, so that
				// the loop's own delays do not add up into a lower rate; a connection more
				// than one interval behind starts afresh instead of sending a burst.
				if c.next = c.next.Add(interval); c.next.Before(now.Add(-interval)) {
					c.next = now
				}
				if c.next.After(now) {
					heap.Push(&due, c) // early: wait for its turn
					continue
				}
			}
			c.sent, c.got, c.started = 0, 0, now
			send(i, c)
		}
	}
	res.Errors += int64(active) // connections still waiting for an echo when time ran out
	if !stopping {              // every connection failed before the deadline
		elapsed, atDeadline = time.Since(start), res.RoundTrips
	}
	res.Seconds = elapsed.Seconds()
	res.PerSecond = float64(atDeadline) / res.Seconds
	if len(samples) > 0 {
		slices.Sort(samples)
		res.P50us = float64(samples[len(samples)/2]) / 1e3
		res.P99us = float64(samples[len(samples)*99/100]) / 1e3
	}
	return res, nil
}

// epollWaitFor is epoll_wait with a timeout in nanoseconds when precise is set: epoll_pwait2
// (Linux 5.11) takes a struct timespec, where epoll_wait counts whole milliseconds, too coarse
// to pace a connection that sends every few hundred microseconds (epoll_wait(2)).
func epollWaitFor(epfd int, events []unix.EpollEvent, timeout time.Duration, precise bool) (int, error) {
	if !precise {
		n, err := unix.EpollWait(epfd, events, int(timeout.Milliseconds()))
		if err != nil && err != unix.EINTR {
			return n, fmt.Errorf("epoll_wait: %w", err)
		}
		return n, err
	}
	ts := unix.NsecToTimespec(int64(max(timeout, 0)))
	n, _, errno := unix.Syscall6(unix.SYS_EPOLL_PWAIT2, uintptr(epfd), uintptr(unsafe.Pointer(unsafe.SliceData(events))),
		uintptr(len(events)), uintptr(unsafe.Pointer(&ts)), 0, 0)
	switch errno {
	case 0:
		return int(n), nil
	case unix.EINTR:
		return 0, errno
	case unix.ENOSYS, unix.EPERM: // EPERM: a seccomp filter that predates the call
		return 0, fmt.Errorf("epoll_pwait2: %w (hint: -rate needs Linux 5.11 or later, and a container that allows the call)", errno)
	}
	return 0, fmt.Errorf("epoll_pwait2: %w", errno)
}

// connectRetry connects, retrying EINTR (a signal may interrupt a blocking connect; the
// connection then completes in the background and a second connect reports EISCONN/EALREADY).
func connectRetry(fd int, sa unix.Sockaddr) error {
	err := unix.Connect(fd, sa)
	for range 100 {
		if err != unix.EINTR && err != unix.EALREADY {
			break
		}
		var pfd = []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		_, _ = unix.Poll(pfd, 1000)
		err = unix.Connect(fd, sa)
	}
	if err == unix.EISCONN {
		return nil
	}
	return err
}
