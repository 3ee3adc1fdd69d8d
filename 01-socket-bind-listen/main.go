//go:build linux

// Command 01-socket-bind-listen is the first socklab lab: byte order, the life of a TCP
// socket (socket → bind → listen → connect → accept → read/write → close), the listen
// backlog with its two queues, the three-way handshake (三次握手) made visible, and SYN
// floods with SYN cookies. Every step prints the system call as strace would and then the
// kernel's own table of the sockets involved.
//
//	go run ./01-socket-bind-listen                 # every part, in a private namespace
//	go run ./01-socket-bind-listen backlog         # one part
//	go run ./01-socket-bind-listen server -backlog 2 -accept=false   # two-terminal lab
//
// Read along: docs/01-socket-bind-listen.md.
package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"

	"socklab/internal/lab"
	"socklab/internal/sockdiag"
)

// program is the chapter's command line: the demo parts in teaching order, then the roles.
var program = lab.Program{
	Name:    "01-socket-bind-listen",
	Summary: "byte order, lifecycle, backlog queues, handshake",
	Doc:     "docs/01-socket-bind-listen.md",
	Parts: []lab.Part{
		{Name: "byteorder", Title: "A. Byte order", Run: runByteOrder},
		{Name: "lifecycle", Title: "B. The socket lifecycle and its errors", Run: runLifecycle},
		{Name: "backlog", Title: "C. Listen backlog, the accept queue and the SYN queue", Run: runBacklog},
		{Name: "handshake", Title: "D. The three-way handshake", Run: runHandshake},
		{Name: "synflood", Title: "E. SYN flood and SYN cookies", Run: runSynFlood},
	},
	Roles: []lab.Role{
		{Name: "server", Summary: "listen on -addr with -backlog; -accept=false never accepts", Run: runServerRole},
		{Name: "client", Summary: "open -n connections to -addr and show their states", Run: runClientRole},
	},
}

func main() { program.Main() }

var loopback4 = netip.MustParseAddr("127.0.0.1")

// ---------------------------------------------------------------------------------------
// A. Byte order
// ---------------------------------------------------------------------------------------

// The port of the byte-order lesson: 8080 is 0x1F90, whose two bytes swapped read 0x901F =
// 36895.
const lessonPort = 8080

// nativeOrder names the byte order of this machine by looking at how a 16-bit 1 is stored.
func nativeOrder() string {
	one := uint16(1)
	if (*[2]byte)(unsafe.Pointer(&one))[0] == 1 {
		return "little-endian"
	}
	return "big-endian"
}

// htons is C's host-to-network-short: the 16-bit value whose bytes in memory are v in
// big-endian (network) order. On a little-endian machine it swaps the bytes; on a big-endian
// one it does nothing (byteorder(3)).
func htons(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}

// htonl is htons for 32-bit values (IPv4 addresses).
func htonl(v uint32) uint32 {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	return binary.NativeEndian.Uint32(b[:])
}

// sockaddrBytes returns the 16 bytes of a struct sockaddr_in exactly as bind(2) hands them to
// the kernel.
func sockaddrBytes(sa *unix.RawSockaddrInet4) []byte {
	return append([]byte(nil), unsafe.Slice((*byte)(unsafe.Pointer(sa)), unix.SizeofSockaddrInet4)...)
}

// byteOrderFacts is what the first step found.
type byteOrderFacts struct {
	Native        string
	HtonsValue    uint16 // htons(8080) as a number on this machine
	PortBytes     [2]byte
	SockaddrBytes []byte // struct sockaddr_in {AF_INET, htons(8080), 127.0.0.1}
}

func showByteOrder(n *lab.Narrator) byteOrderFacts {
	n.Step("Which byte order does this machine use?")
	f := byteOrderFacts{Native: nativeOrder(), HtonsValue: htons(lessonPort)}
	n.Say("The 16-bit number 1 is stored with its low byte first here: this machine is %s. "+
		"Network byte order (大端序, big-endian) puts the high byte first, so every port and "+
		"address in a sockaddr must be converted: htons() for ports, htonl() for IPv4 addresses.", f.Native)
	n.Result("htons(%d) = 0x%04x   htonl(0x7f000001) = 0x%08x", lessonPort, f.HtonsValue, htonl(0x7f000001))

	n.Step("The bytes of a sockaddr_in as the kernel receives them")
	sa := unix.RawSockaddrInet4{Family: unix.AF_INET, Port: htons(lessonPort), Addr: [4]byte{127, 0, 0, 1}}
	f.SockaddrBytes = sockaddrBytes(&sa)
	f.PortBytes = [2]byte{f.SockaddrBytes[2], f.SockaddrBytes[3]}
	n.Say("struct sockaddr_in {sin_family=AF_INET, sin_port=htons(%d), sin_addr=127.0.0.1}:", lessonPort)
	n.Result("% x", f.SockaddrBytes)
	n.Say("sin_family (2 bytes, host order) | sin_port 0x%02x 0x%02x (8080 = 0x1f90, high byte "+
		"first) | sin_addr 7f 00 00 01 | 8 bytes of padding.", f.PortBytes[0], f.PortBytes[1])
	return f
}

// unconvertedBind is what the kernel reported after binding a port without htons.
type unconvertedBind struct {
	Wanted     uint16 // the port the programmer meant
	Bound      uint16 // the port getsockname reports
	KernelPort uint16 // the port of the LISTEN socket in the kernel's table
	Err        error
}

// bindUnconvertedPort makes the classic mistake for real: it fills sin_port with the port as
// a plain number, not htons(port), binds and listens, and asks the kernel where the socket
// really is. Go's unix.Bind converts for us, so the raw bind(2) system call is made by hand.
func bindUnconvertedPort(n *lab.Narrator, port uint16) (unconvertedBind, error) {
	res := unconvertedBind{Wanted: port}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err := n.Sys(fd, err, "socket(AF_INET, SOCK_STREAM, 0)"); err != nil {
		return res, err
	}
	defer unix.Close(fd)

	sa := unix.RawSockaddrInet4{Family: unix.AF_INET, Port: port /* BUG: should be htons(port) */, Addr: [4]byte{127, 0, 0, 1}}
	_, _, errno := unix.Syscall(unix.SYS_BIND, uintptr(fd), uintptr(unsafe.Pointer(&sa)), unix.SizeofSockaddrInet4)
	if errno != 0 {
		res.Err = errno
	}
	n.Sys(0, res.Err, "bind(%d, {sin_port=%d /* not htons! */, sin_addr=127.0.0.1}, 16)", fd, port)
	if res.Err != nil {
		n.Say("The swapped port %d is taken here, so the bug cannot be shown on this machine now.", htons(port))
		return res, nil
	}
	err = unix.Listen(fd, 1)
	if err := n.Sys(0, err, "listen(%d, 1)", fd); err != nil {
		return res, err
	}
	got, err := unix.Getsockname(fd)
	if err := n.Sys(0, err, "getsockname(%d)", fd); err != nil {
		return res, err
	}
	n.Result("%s", lab.Sockaddr(got))
	res.Bound = lab.AddrPortOf(got).Port()
	socks, err := sockdiag.Dump(sockdiag.TCP, sockdiag.Filter{Ports: []uint16{port, res.Bound}, States: []sockdiag.State{sockdiag.Listen}})
	if err != nil {
		return res, err
	}
	for _, s := range socks {
		if s.Local.Addr() == loopback4 && s.Local.Port() == res.Bound {
			res.KernelPort = s.Local.Port()
		}
	}
	n.Kernel(sockdiag.Filter{Ports: []uint16{port, res.Bound}, States: []sockdiag.State{sockdiag.Listen}})
	n.Say("The kernel read the two bytes 0x%02x 0x%02x as a big-endian number: the server "+
		"listens on %d, and clients of port %d get ECONNREFUSED.", byte(port), byte(port>>8), res.Bound, port)
	return res, nil
}

// procNetTCPAddress finds the listener on port in /proc/thread-self/net/tcp (the namespace of
// this thread; /proc/self/net would be the main thread's) and returns its local_address
// column, e.g. "0100007F:1F90".
func procNetTCPAddress(port uint16) (string, error) {
	b, err := os.ReadFile("/proc/thread-self/net/tcp")
	if err != nil {
		return "", err
	}
	suffix := fmt.Sprintf(":%04X", port)
	for _, line := range strings.Split(string(b), "\n")[1:] {
		fields := strings.Fields(line)
		// Columns: sl local_address rem_address st ...; st 0A is LISTEN.
		if len(fields) > 3 && strings.HasSuffix(fields[1], suffix) && fields[3] == "0A" {
			return fields[1], nil
		}
	}
	return "", fmt.Errorf("no listener on port %d in /proc/net/tcp", port)
}

func showProcNetTCP(n *lab.Narrator) (string, error) {
	n.Step("Why /proc/net/tcp prints 127.0.0.1 as 0100007F")
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err := n.Sys(fd, err, "socket(AF_INET, SOCK_STREAM, 0)"); err != nil {
		return "", err
	}
	defer unix.Close(fd)
	sa := &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}
	if err := n.Sys(0, unix.Bind(fd, sa), "bind(%d, %s)", fd, lab.Sockaddr(sa)); err != nil {
		return "", err
	}
	if err := n.Sys(0, unix.Listen(fd, 1), "listen(%d, 1)", fd); err != nil {
		return "", err
	}
	got, err := unix.Getsockname(fd)
	if err != nil {
		return "", err
	}
	port := lab.AddrPortOf(got).Port()
	field, err := procNetTCPAddress(port)
	if err != nil {
		return "", err
	}
	n.Result("local_address of 127.0.0.1:%d in /proc/net/tcp: %s", port, field)
	n.Say("The kernel prints the 4 address bytes 7f 00 00 01 (network order) as one 32-bit "+
		"number in %s order with %%08X, which gives %s; the port, by contrast, is converted "+
		"to a number first (%d = 0x%04X). Read the address backwards byte by byte.",
		nativeOrder(), field[:8], port, port)
	return field, nil
}

func runByteOrder(d *lab.Demo) error {
	showByteOrder(d.Narrator)
	d.Step("The classic bug: bind with sin_port = 8080 instead of htons(8080)")
	if _, err := bindUnconvertedPort(d.Narrator, lessonPort); err != nil {
		return err
	}
	_, err := showProcNetTCP(d.Narrator)
	return err
}

// ---------------------------------------------------------------------------------------
// B. Lifecycle
// ---------------------------------------------------------------------------------------

// lifecycleStates are the states the kernel reported after each call of one connection's
// life, plus what the calls returned.
type lifecycleStates struct {
	Listener, Client                         netip.AddrPort
	AfterSocket, AfterBind, AfterListen      sockdiag.State
	ClientAfterConnect, ServerBeforeAccept   sockdiag.State
	ServerChildHadFD                         bool   // an fd referred to the child before accept
	AcceptQueueBeforeAccept                  uint32 // listener Recv-Q
	ListenFD, AcceptedFD                     int
	AcceptedPeer                             netip.AddrPort
	ListenerAfterAccept, ServerAfterAccept   sockdiag.State
	Received                                 string
	ReadAtEOF                                int // what read() returned after the peer closed
	ServerAfterPeerClose, ClientAfterClosing sockdiag.State
}

// familyName is AF_INET or AF_INET6 for narration.
func familyName(a netip.Addr) (int, string) {
	if a.Is4() {
		return unix.AF_INET, "AF_INET"
	}
	return unix.AF_INET6, "AF_INET6"
}

// findState is the kernel's state of one connection end, or 0 when the kernel has none.
func findState(local, remote netip.AddrPort) (sockdiag.Socket, sockdiag.State, error) {
	s, found, err := sockdiag.Find(local, remote)
	if err != nil || !found {
		return s, 0, err
	}
	return s, s.State, nil
}

var anyRemote4 = netip.AddrPortFrom(netip.IPv4Unspecified(), 0)
var anyRemote6 = netip.AddrPortFrom(netip.IPv6Unspecified(), 0)

// listenerRow is the kernel's row for the listener on laddr.
func listenerRow(laddr netip.AddrPort) (sockdiag.Socket, bool, error) {
	remote := anyRemote4
	if laddr.Addr().Is6() && !laddr.Addr().Is4In6() {
		remote = anyRemote6
	}
	return sockdiag.Find(laddr, remote)
}

// lifecycle walks one TCP connection through its whole life on addr (port 0: any), printing
// each call and the kernel's view, and returns the states the kernel reported.
func lifecycle(n *lab.Narrator, addr netip.AddrPort) (lifecycleStates, error) {
	var st lifecycleStates
	family, fam := familyName(addr.Addr())

	n.Step("socket(): a new socket, not yet anywhere (state CLOSE)")
	lfd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err := n.Sys(lfd, err, "socket(%s, SOCK_STREAM, 0)", fam); err != nil {
		return st, err
	}
	defer unix.Close(lfd)
	st.ListenFD = lfd
	if st.AfterSocket, err = sockdiag.StateOf(lfd); err != nil {
		return st, err
	}
	n.Result("TCP_INFO state: %v (unbound: not yet in any sock_diag table)", st.AfterSocket)

	n.Step("bind(): give it an address (port 0 lets the kernel pick one)")
	sa := lab.SockaddrOf(addr)
	if err := n.Sys(0, unix.Bind(lfd, sa), "bind(%d, %s)", lfd, lab.Sockaddr(sa)); err != nil {
		return st, err
	}
	got, err := unix.Getsockname(lfd)
	if err := n.Sys(0, err, "getsockname(%d)", lfd); err != nil {
		return st, err
	}
	st.Listener = lab.AddrPortOf(got)
	n.Result("%s", lab.Sockaddr(got))
	if st.AfterBind, err = sockdiag.StateOf(lfd); err != nil {
		return st, err
	}
	n.Result("TCP_INFO state: %v (bound, but still not accepting anything)", st.AfterBind)

	n.Step("listen(): now the kernel answers SYNs for this port (state LISTEN)")
	if err := n.Sys(0, unix.Listen(lfd, 4), "listen(%d, 4)", lfd); err != nil {
		return st, err
	}
	row, _, err := listenerRow(st.Listener)
	if err != nil {
		return st, err
	}
	st.AfterListen = row.State
	n.Kernel(sockdiag.Filter{Port: st.Listener.Port()})

	n.Step("connect(): the client's kernel does the three-way handshake")
	cfd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err := n.Sys(cfd, err, "socket(%s, SOCK_STREAM, 0)", fam); err != nil {
		return st, err
	}
	// cfd is closed in the last step; closing it twice could close another socket that has
	// been given the same number in the meantime.
	defer func() {
		if cfd >= 0 {
			unix.Close(cfd)
		}
	}()
	if err := n.Sys(0, unix.Connect(cfd, got), "connect(%d, %s)", cfd, lab.Sockaddr(got)); err != nil {
		return st, err
	}
	cname, err := unix.Getsockname(cfd)
	if err != nil {
		return st, err
	}
	st.Client = lab.AddrPortOf(cname)
	n.Result("client is %v", st.Client)
	var child sockdiag.Socket
	_, st.ClientAfterConnect, err = findState(st.Client, st.Listener)
	if err != nil {
		return st, err
	}
	// The server's half is created by the kernel when the final ACK arrives; it may take a
	// moment to be listed.
	lab.Poll(shortWait, func() bool {
		child, st.ServerBeforeAccept, err = findState(st.Listener, st.Client)
		return st.ServerBeforeAccept == sockdiag.Established
	})
	st.ServerChildHadFD = child.HasFD()
	row, _, _ = listenerRow(st.Listener)
	st.AcceptQueueBeforeAccept = row.RecvQ
	n.Kernel(sockdiag.Filter{Port: st.Listener.Port()})
	n.Say("connect() returned with both ends ESTABLISHED, before the server called accept(): " +
		"the server's socket waits in the accept queue (the listener's Recv-Q) and no fd refers to it yet.")

	n.Step("accept(): take the connection out of the accept queue as a NEW fd")
	afd, peer, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC)
	if err := n.Sys(afd, err, "accept(%d, ...)", lfd); err != nil {
		return st, err
	}
	defer unix.Close(afd)
	st.AcceptedFD, st.AcceptedPeer = afd, lab.AddrPortOf(peer)
	n.Result("peer %s", lab.Sockaddr(peer))
	row, _, _ = listenerRow(st.Listener)
	st.ListenerAfterAccept = row.State
	if st.ServerAfterAccept, err = sockdiag.StateOf(afd); err != nil {
		return st, err
	}
	n.Kernel(sockdiag.Filter{Port: st.Listener.Port()})
	n.Say("fd %d is the listener, still LISTEN and ready for more clients; fd %d is this one "+
		"connection. Two fds, two kernel sockets.", lfd, afd)

	n.Step("write() on one end, read() on the other")
	msg := []byte("hello")
	wn, err := unix.Write(cfd, msg)
	if err := n.Sys(wn, err, "write(%d, %q, %d)", cfd, msg, len(msg)); err != nil {
		return st, err
	}
	buf := make([]byte, 64)
	rn, err := unix.Read(afd, buf)
	if err := n.Sys(rn, err, "read(%d, buf, %d)", afd, len(buf)); err != nil {
		return st, err
	}
	st.Received = string(buf[:max(rn, 0)])
	n.Result("%q", st.Received)

	n.Step("close() the client: the server's read() returns 0, end of file")
	err = unix.Close(cfd)
	if err := n.Sys(0, err, "close(%d)", cfd); err != nil {
		return st, err
	}
	cfd = -1
	st.ReadAtEOF, err = unix.Read(afd, buf)
	if err := n.Sys(st.ReadAtEOF, err, "read(%d, buf, %d)", afd, len(buf)); err != nil {
		return st, err
	}
	st.ServerAfterPeerClose, err = sockdiag.StateOf(afd)
	if err != nil {
		return st, err
	}
	_, st.ClientAfterClosing, _ = findState(st.Client, st.Listener)
	n.Kernel(sockdiag.Filter{Port: st.Listener.Port()})
	n.Say("read() = 0 is how a peer's close (its FIN) looks to a program. The server sits in " +
		"CLOSE_WAIT until it closes too; chapter 03 follows the four-way close.")
	return st, nil
}

// connectRefused connects to a port that is bound but not listening: the kernel answers the
// SYN with RST and connect() fails with ECONNREFUSED. Binding the port first makes sure that
// nothing else listens there, on any machine.
func connectRefused(n *lab.Narrator) (error, error) {
	n.Step("ECONNREFUSED: connect() to a port where nobody listens")
	holder, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err := n.Sys(holder, err, "socket(AF_INET, SOCK_STREAM, 0)"); err != nil {
		return nil, err
	}
	defer unix.Close(holder)
	sa := &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}
	if err := n.Sys(0, unix.Bind(holder, sa), "bind(%d, %s)", holder, lab.Sockaddr(sa)); err != nil {
		return nil, err
	}
	bound, err := unix.Getsockname(holder)
	if err != nil {
		return nil, err
	}
	n.Result("%s (bound, never listen()ed)", lab.Sockaddr(bound))
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err := n.Sys(fd, err, "socket(AF_INET, SOCK_STREAM, 0)"); err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	connErr := unix.Connect(fd, bound)
	n.Sys(0, connErr, "connect(%d, %s)", fd, lab.Sockaddr(bound))
	n.Say("The SYN found no listening socket, so the kernel answered with RST: refused at once, no waiting.")
	return connErr, nil
}

// bindInUse binds a second socket to the address of a listener.
func bindInUse(n *lab.Narrator) (error, error) {
	n.Step("EADDRINUSE: bind() to a port another socket holds")
	lfd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err := n.Sys(lfd, err, "socket(AF_INET, SOCK_STREAM, 0)"); err != nil {
		return nil, err
	}
	defer unix.Close(lfd)
	sa := &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}
	if err := n.Sys(0, unix.Bind(lfd, sa), "bind(%d, %s)", lfd, lab.Sockaddr(sa)); err != nil {
		return nil, err
	}
	if err := n.Sys(0, unix.Listen(lfd, 1), "listen(%d, 1)", lfd); err != nil {
		return nil, err
	}
	bound, err := unix.Getsockname(lfd)
	if err != nil {
		return nil, err
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err := n.Sys(fd, err, "socket(AF_INET, SOCK_STREAM, 0)"); err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	bindErr := unix.Bind(fd, bound)
	n.Sys(0, bindErr, "bind(%d, %s)", fd, lab.Sockaddr(bound))
	n.Say("One port, one listener (unless both set SO_REUSEPORT; chapter 04).")
	return bindErr, nil
}

// capNetBindService is CAP_NET_BIND_SERVICE (capabilities(7)): it allows binding ports below
// net.ipv4.ip_unprivileged_port_start.
const capNetBindService = 10

// threadCaps reads the calling thread's capability sets (capget(2), version 3: two 32-bit
// words per set).
func threadCaps() (unix.CapUserHeader, [2]unix.CapUserData, error) {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	err := unix.Capget(&hdr, &data[0])
	return hdr, data, err
}

// lowPortFacts is what binding a port below 1024 did, with and without the capability.
type lowPortFacts struct {
	UnprivilegedPortStart string
	HadCapability         bool
	WithCapability        error // bind as this process is
	WithoutCapability     error // bind after dropping CAP_NET_BIND_SERVICE from this thread
	DroppedCapability     bool
}

// bindLowPort binds 127.0.0.1:1023 as the process is, then — if it holds
// CAP_NET_BIND_SERVICE, as root does, and as we do inside our own user namespace — again with
// that capability removed from this thread's effective set, which is how an ordinary user
// meets EACCES. Capabilities are per thread, so the thread stays locked while they differ.
func bindLowPort(n *lab.Narrator) (lowPortFacts, error) {
	n.Step("EACCES: bind() to a port below 1024 without privilege")
	var f lowPortFacts
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_unprivileged_port_start")
	if err != nil {
		return f, err
	}
	f.UnprivilegedPortStart = strings.TrimSpace(string(b))
	runtime.LockOSThread()
	_, caps, err := threadCaps()
	if err != nil {
		runtime.UnlockOSThread()
		return f, fmt.Errorf("capget: %w", err)
	}
	f.HadCapability = caps[0].Effective&(1<<capNetBindService) != 0
	n.Say("net.ipv4.ip_unprivileged_port_start = %s: binding a lower port needs "+
		"CAP_NET_BIND_SERVICE. This thread has it: %v.", f.UnprivilegedPortStart, f.HadCapability)

	try := func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err := n.Sys(fd, err, "socket(AF_INET, SOCK_STREAM, 0)"); err != nil {
			return err
		}
		defer unix.Close(fd)
		sa := &unix.SockaddrInet4{Port: 1023, Addr: [4]byte{127, 0, 0, 1}}
		err = unix.Bind(fd, sa)
		n.Sys(0, err, "bind(%d, %s)", fd, lab.Sockaddr(sa))
		return err
	}
	f.WithCapability = try()
	if !f.HadCapability || f.WithCapability != nil {
		runtime.UnlockOSThread()
		if f.HadCapability {
			// capabilities(7): a capability counts for a network namespace only when held
			// in the user namespace that owns it.
			n.Say("The capability belongs to a user namespace that does not own this network " +
				"namespace, so it does not count here (user_namespaces(7)).")
		}
		n.Say("Without the capability the kernel refuses: EACCES (Permission denied).")
		return f, nil
	}
	n.Say("It succeeded because we hold the capability (root, or root of our own user " +
		"namespace). Drop it from this thread, as an ordinary user would lack it:")
	hdr, dropped, _ := threadCaps()
	dropped[0].Effective &^= 1 << capNetBindService
	if err := unix.Capset(&hdr, &dropped[0]); err != nil {
		runtime.UnlockOSThread()
		return f, fmt.Errorf("capset: %w", err)
	}
	n.Sys(0, nil, "capset(effective -= CAP_NET_BIND_SERVICE)")
	f.DroppedCapability = true
	f.WithoutCapability = try()
	hdr, caps2, _ := threadCaps()
	caps2[0].Effective |= 1 << capNetBindService
	if err := unix.Capset(&hdr, &caps2[0]); err != nil {
		// This thread stays locked: the runtime ends it with its goroutine instead of
		// reusing a thread with different capabilities.
		return f, fmt.Errorf("capset (restore): %w", err)
	}
	runtime.UnlockOSThread()
	n.Say("Without the capability the kernel refuses: EACCES. This is why servers start as " +
		"root (or get CAP_NET_BIND_SERVICE) to bind port 80, or use a port of 1024 and up.")
	return f, nil
}

func runLifecycle(d *lab.Demo) error {
	if _, err := lifecycle(d.Narrator, netip.AddrPortFrom(loopback4, 0)); err != nil {
		return err
	}
	if _, err := connectRefused(d.Narrator); err != nil {
		return err
	}
	if _, err := bindInUse(d.Narrator); err != nil {
		return err
	}
	if _, err := bindLowPort(d.Narrator); err != nil {
		return err
	}
	d.Step("A full accept queue: connect() blocks in SYN_SENT")
	d.Say("When a listener's accept queue is full, its kernel drops new SYNs without a word: " +
		"the client is neither accepted nor refused, it waits in SYN_SENT and retransmits. " +
		"Part C (backlog) shows it.")

	d.Part("B'. The same over IPv6, dual-stack and IPV6_V6ONLY")
	if _, err := lifecycle(d.Narrator, netip.AddrPortFrom(netip.IPv6Loopback(), 0)); err != nil {
		return err
	}
	if !d.NeedPrivate("dual-stack listener on [::]") {
		return nil
	}
	if _, err := dualStack(d.Narrator, false); err != nil {
		return err
	}
	_, err := dualStack(d.Narrator, true)
	return err
}

// dualStackFacts is what an IPv4 client met at an IPv6 listener on [::].
type dualStackFacts struct {
	Listener     netip.AddrPort
	ConnectErr   error
	AcceptedPeer netip.AddrPort // as accept() returned it
	KernelRemote netip.AddrPort // the server socket's remote address in the kernel table
	KernelFamily int
}

// dualStack listens on [::] with IPV6_V6ONLY set to v6only and connects an IPv4 client to
// 127.0.0.1 on the same port. It binds the wildcard address, so the demo runs it only in its
// private namespace.
func dualStack(n *lab.Narrator, v6only bool) (dualStackFacts, error) {
	var f dualStackFacts
	flag := 0
	if v6only {
		flag = 1
		n.Step("IPV6_V6ONLY=1: the IPv6 listener refuses IPv4 clients")
	} else {
		n.Step("Dual stack: an IPv6 listener on [::] accepts an IPv4 client")
	}
	lfd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err := n.Sys(lfd, err, "socket(AF_INET6, SOCK_STREAM, 0)"); err != nil {
		return f, err
	}
	defer unix.Close(lfd)
	err = unix.SetsockoptInt(lfd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, flag)
	if err := n.Sys(0, err, "setsockopt(%d, IPPROTO_IPV6, IPV6_V6ONLY, %d)", lfd, flag); err != nil {
		return f, err
	}
	sa := &unix.SockaddrInet6{}
	if err := n.Sys(0, unix.Bind(lfd, sa), "bind(%d, %s)", lfd, lab.Sockaddr(sa)); err != nil {
		return f, err
	}
	if err := n.Sys(0, unix.Listen(lfd, 4), "listen(%d, 4)", lfd); err != nil {
		return f, err
	}
	got, err := unix.Getsockname(lfd)
	if err != nil {
		return f, err
	}
	f.Listener = lab.AddrPortOf(got)
	cfd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err := n.Sys(cfd, err, "socket(AF_INET, SOCK_STREAM, 0)"); err != nil {
		return f, err
	}
	defer unix.Close(cfd)
	to := &unix.SockaddrInet4{Port: int(f.Listener.Port()), Addr: [4]byte{127, 0, 0, 1}}
	f.ConnectErr = unix.Connect(cfd, to)
	n.Sys(0, f.ConnectErr, "connect(%d, %s)", cfd, lab.Sockaddr(to))
	if f.ConnectErr != nil {
		n.Say("With IPV6_V6ONLY the socket is IPv6-only: no IPv4 socket holds port %d, so the "+
			"IPv4 SYN is answered with RST. (An AF_INET listener could now bind the same port.)", f.Listener.Port())
		return f, nil
	}
	afd, peer, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC)
	if err := n.Sys(afd, err, "accept(%d, ...)", lfd); err != nil {
		return f, err
	}
	defer unix.Close(afd)
	f.AcceptedPeer = lab.AddrPortOf(peer)
	n.Result("peer %s", lab.Sockaddr(peer))
	socks, err := sockdiag.Dump(sockdiag.TCP, sockdiag.Filter{Port: f.Listener.Port(), States: []sockdiag.State{sockdiag.Established}})
	if err != nil {
		return f, err
	}
	for _, s := range socks {
		if s.Local.Port() == f.Listener.Port() {
			f.KernelRemote, f.KernelFamily = s.Remote, s.Family
		}
	}
	n.Kernel(sockdiag.Filter{Port: f.Listener.Port()})
	n.Say("The IPv4 client appears to the IPv6 server as the IPv4-mapped address %v "+
		"(::ffff:0:0/96, RFC 4291): one socket serves both protocols.", f.AcceptedPeer.Addr())
	return f, nil
}

// errnoOf extracts the errno from err, or 0.
func errnoOf(err error) unix.Errno {
	var e unix.Errno
	if errors.As(err, &e) {
		return e
	}
	return 0
}
