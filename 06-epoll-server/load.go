//go:build linux

package main

import (
	"bytes"
	"fmt"
	"net/netip"
	"slices"
	"time"

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
	fd       int
	sent     int       // bytes of the current message sent
	got      int       // bytes of its echo received
	started  time.Time // when the message's first byte was sent
	finished bool
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
		c := &loadConn{fd: fd}
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
		c.started = now
		send(i, c)
	}
	events := make([]unix.EpollEvent, 256)
	var elapsed time.Duration
	var atDeadline int64
	lastYield := start
	for active > 0 {
		timeout := 100 // wake now and then to notice the deadline even if nothing happens
		graceOver := stopping
		if stopping {
			timeout = 5000 // grace for echoes in flight, long enough for a busy machine
		}
		n, err := unix.EpollWait(epfd, events, timeout)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return res, fmt.Errorf("epoll_wait: %w", err)
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
