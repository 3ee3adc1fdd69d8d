//go:build linux

package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"socklab/internal/lab"
)

// The roles run in the caller's own network namespace, so two terminals can talk and
// `cat /proc/net/igmp` (or `ip maddr`) in a third shows the membership. They behave like the
// course's C pair in testdata/ (same defaults, same payload bytes, same "recv:" lines).

// commonFlags are the flags both roles share.
type commonFlags struct {
	group, iface *string
	port         *int
}

func addCommonFlags(fs *flag.FlagSet) commonFlags {
	return commonFlags{
		group: fs.String("group", defaultGroup, "multicast group (224.0.0.0/4)"),
		port:  fs.Int("port", defaultPort, "UDP port (1-65535)"),
		iface: fs.String("iface", "lo", "interface, by name (lo) or IPv4 address (127.0.0.1)"),
	}
}

// resolved is the validated command line: the group, the port and the interface address.
type resolved struct {
	Group     netip.Addr
	Port      uint16
	IfaceName string
	IfaceAddr netip.Addr
}

func (c commonFlags) resolve() (resolved, error) {
	g, err := parseGroup(*c.group)
	if err != nil {
		return resolved{}, err
	}
	if *c.port < 1 || *c.port > 65535 {
		return resolved{}, lab.Usagef("-port %d: out of range (want 1-65535, e.g. %d)", *c.port, defaultPort)
	}
	name, addr, err := resolveIface(*c.iface)
	if err != nil {
		return resolved{}, err
	}
	return resolved{Group: g, Port: uint16(*c.port), IfaceName: name, IfaceAddr: addr}, nil
}

// parseGroup accepts only IPv4 multicast addresses, 224.0.0.0/4 (RFC 5771): anything else
// given to IP_ADD_MEMBERSHIP fails with EINVAL, and as a destination it would be unicast.
func parseGroup(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if ap, perr := netip.ParseAddrPort(s); err != nil && perr == nil {
		return netip.Addr{}, lab.Usagef("-group %q: give the group alone and its port with -port (-group %s -port %d)",
			s, ap.Addr(), ap.Port())
	}
	if err != nil || !a.Is4() {
		return netip.Addr{}, lab.Usagef("-group %q: not an IPv4 address (want 224.0.0.0/4, e.g. %s)", s, defaultGroup)
	}
	if !a.IsMulticast() {
		return netip.Addr{}, lab.Usagef("-group %s: not a multicast address (want 224.0.0.0/4, e.g. %s)", s, defaultGroup)
	}
	return a, nil
}

// resolveIface turns "lo" or "127.0.0.1" into the interface's name and IPv4 address, from the
// interfaces of the caller's namespace. IP_ADD_MEMBERSHIP and IP_MULTICAST_IF take the
// address (struct ip_mreq, struct in_addr), as the classic C code passes it.
func resolveIface(s string) (string, netip.Addr, error) {
	ifaces, err := net.Interfaces()
	if err != nil {
		return "", netip.Addr{}, fmt.Errorf("list interfaces: %w", err)
	}
	hint := "(try lo or 127.0.0.1; `ip -4 addr` lists the interfaces)"
	if want, err := netip.ParseAddr(s); err == nil {
		if !want.Is4() {
			return "", netip.Addr{}, lab.Usagef("-iface %s: not an IPv4 address %s", s, hint)
		}
		for _, ifc := range ifaces {
			for _, a := range ipv4Addrs(ifc) {
				if a == want {
					return ifc.Name, a, nil
				}
			}
		}
		return "", netip.Addr{}, lab.Usagef("-iface %s: no local interface has this address %s", s, hint)
	}
	for _, ifc := range ifaces {
		if ifc.Name != s {
			continue
		}
		addrs := ipv4Addrs(ifc)
		if len(addrs) == 0 {
			return "", netip.Addr{}, lab.Usagef("-iface %s: the interface has no IPv4 address %s", s, hint)
		}
		return ifc.Name, addrs[0], nil
	}
	return "", netip.Addr{}, lab.Usagef("-iface %q: no such interface %s", s, hint)
}

func ipv4Addrs(ifc net.Interface) []netip.Addr {
	addrs, err := ifc.Addrs()
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Is4() {
			out = append(out, p.Addr())
		}
	}
	return out
}

// recvLine is what both receivers (this one and the C one) print per datagram.
func recvLine(d datagram) string {
	return fmt.Sprintf("recv: %s from %s", d.Text(), d.From)
}

// runRecv is the receiver role: join, print -count datagrams, leave with IP_DROP_MEMBERSHIP
// (also on SIGINT or SIGTERM), close.
func runRecv(args []string, stdout, stderr io.Writer) error {
	fs := lab.NewFlagSet("recv", stderr)
	common := addCommonFlags(fs)
	count := fs.Int("count", 5, "leave the group after this many datagrams (0 = until Ctrl-C)")
	if err := lab.ParseFlags(fs, args); err != nil {
		return err
	}
	cfg, err := common.resolve()
	if err != nil {
		return err
	}
	if *count < 0 {
		return lab.Usagef("-count %d: must be 0 or more", *count)
	}
	n := lab.NewNarrator(stdout, false)

	// Signals are turned into a readable pipe, so one poll(2) waits for a datagram or Ctrl-C.
	sigR, sigW, err := os.Pipe()
	if err != nil {
		return err
	}
	defer sigR.Close()
	defer sigW.Close()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-sigs:
			sigW.Write([]byte{1})
		case <-done:
		}
	}()

	fd, err := openReceiver(n, receiverOptions{Port: cfg.Port, Group: cfg.Group, Iface: cfg.IfaceAddr})
	if err != nil {
		return err
	}
	defer closeFD(n, fd)
	fmt.Fprintf(stdout, "joined %s on %s (%s), port %d; waiting for %s\n", cfg.Group, cfg.IfaceName,
		cfg.IfaceAddr, cfg.Port, plural(*count, "datagram"))

	buf := make([]byte, 65536)
	for got := 0; *count == 0 || got < *count; {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}, {Fd: int32(sigR.Fd()), Events: unix.POLLIN}}
		if _, err := unix.Poll(fds, -1); err == unix.EINTR {
			continue
		} else if err != nil {
			return fmt.Errorf("poll: %w", err)
		}
		if fds[1].Revents != 0 {
			fmt.Fprintln(stdout, "interrupted: leaving the group")
			break
		}
		size, from, err := unix.Recvfrom(fd, buf, unix.MSG_DONTWAIT)
		if err == unix.EAGAIN || err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("recvfrom: %w", err)
		}
		fmt.Fprintln(stdout, recvLine(datagram{Payload: buf[:size], From: lab.AddrPortOf(from)}))
		got++
	}
	return leaveGroup(n, fd, cfg.Group, cfg.IfaceAddr)
}

// runSend is the sender role: pin the interface (or refuse), set TTL and loop, send.
func runSend(args []string, stdout, stderr io.Writer) error {
	fs := lab.NewFlagSet("send", stderr)
	common := addCommonFlags(fs)
	msg := fs.String("msg", defaultMessage, "payload; sent as a C string with its terminating NUL")
	interval := fs.Duration("interval", 5*time.Second, "pause between datagrams")
	count := fs.Int("count", 10, "datagrams to send")
	ttl := fs.Int("ttl", 1, "IP_MULTICAST_TTL: 0 = this host, 1 = this link")
	loop := fs.Bool("loop", true, "IP_MULTICAST_LOOP: members on this host get a copy (-loop=false: none)")
	if err := lab.ParseFlags(fs, args); err != nil {
		return err
	}
	cfg, err := common.resolve()
	if err != nil {
		return err
	}
	switch {
	case *ttl < 0 || *ttl > 255:
		return lab.Usagef("-ttl %d: out of range (want 0-255; 1 keeps datagrams on the link)", *ttl)
	case *count < 1:
		return lab.Usagef("-count %d: must be 1 or more", *count)
	case *interval < 0:
		return lab.Usagef("-interval %v: must not be negative", *interval)
	}
	n := lab.NewNarrator(stdout, false)
	fd, err := openSender(n, senderOptions{Iface: cfg.IfaceAddr, TTL: *ttl, Loop: *loop})
	if err != nil {
		return err
	}
	defer closeFD(n, fd)
	to := netip.AddrPortFrom(cfg.Group, cfg.Port)
	payload := nulTerminated(*msg)
	for i := 0; i < *count; i++ {
		if i > 0 {
			time.Sleep(*interval) // the sender's pace, as in the C sender's sleep(); not synchronisation
		}
		if err := sendDatagram(n, fd, payload, to); err != nil {
			return err
		}
	}
	return nil
}

func plural(k int, word string) string {
	switch k {
	case 0:
		return word + "s until Ctrl-C"
	case 1:
		return "1 " + word
	}
	return fmt.Sprintf("%d %ss", k, word)
}
