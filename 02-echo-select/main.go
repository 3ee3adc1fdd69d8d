//go:build linux

// Command 02-echo-select is a select(2) echo server and client that survive real clients, and
// what select costs: one thread serves many clients by asking the kernel which sockets are
// ready (I/O multiplexing, I/O 多路复用), with partial writes buffered per client under a bound
// (backpressure, 背压), disconnects and resets handled, the FD_SETSIZE wall refused cleanly,
// and poll(2) as the same loop without the wall.
//
//	go run ./02-echo-select                 # the narrated demo, every part
//	go run ./02-echo-select server          # terminal 1 (-poll, -max-line, -trace)
//	go run ./02-echo-select client          # terminal 2: type lines; Ctrl-D half-closes
//
// See docs/02-echo-select.md.
package main

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"

	"socklab/internal/lab"
	"socklab/internal/sockdiag"
)

var program = lab.Program{
	Name:    "02-echo-select",
	Summary: "a select(2) echo server and client that survive real clients",
	Doc:     "docs/02-echo-select.md",
	Parts: []lab.Part{
		{Name: "loop", Title: "A. One thread, many clients: the select loop, call by call", Run: partLoop},
		{Name: "backpressure", Title: "B. A client that never reads: the bounded buffer", Run: partBackpressure},
		{Name: "fdsetsize", Title: "C. FD_SETSIZE: the 1024 wall, and poll(2) without it", Run: partFDSetSize},
	},
	Roles: []lab.Role{
		{Name: "server", Summary: "the select echo server (-addr, -max-line, -poll, -trace)", Run: runServer},
		{Name: "client", Summary: "send stdin, print the echoes; EOF half-closes (-addr, -trace)", Run: runClientRole},
	},
}

func main() { program.Main() }

// demoAddr is 127.0.0.1:9000 in the demo's private namespace (nobody else is there), and a
// free port on the host's loopback.
func demoAddr(d *lab.Demo) netip.AddrPort {
	port := uint16(9000)
	if !d.Env.Private {
		port = 0
	}
	return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)
}

// ---- Part A ---------------------------------------------------------------------------------

// loopResult is what part A saw in the kernel, for the tests.
type loopResult struct {
	acceptQueueBefore uint32            // listener Recv-Q with three clients not yet accepted
	unacceptedNoFD    int               // server-side ESTABLISHED sockets with no fd, then
	echoes            map[string]string // client → what it read back
	afterFIN          []sockdiag.Socket // server-side sockets after B's FIN was handled
	afterRST          []sockdiag.Socket // ... after C's RST
	leftBRemote       netip.AddrPort    // B's address, gone from the server side
	leftCRemote       netip.AddrPort    // C's address, gone from the server side
	afterStop         sockdiag.Socket   // the server's side of A once the server stopped
	clientAAfterStop  sockdiag.Socket   // A's own side then
}

func partLoop(d *lab.Demo) error {
	_, err := demoLoop(d, false)
	return err
}

// demoLoop drives the server one step() at a time from this goroutine, so every select call,
// its fd sets and what was done with the ready fds print in order.
func demoLoop(d *lab.Demo, usePoll bool) (*loopResult, error) {
	res := &loopResult{echoes: map[string]string{}}
	d.Step("The server: socket, SO_REUSEADDR, bind, listen, and a self-pipe")
	s, err := listenServer(d.Narrator, serverConfig{addr: demoAddr(d), trace: true, poll: usePoll})
	if err != nil {
		return nil, err
	}
	defer s.close()
	filter := sockdiag.Filter{Port: s.addr.Port()}
	serverSide := func() []sockdiag.Socket {
		socks, _ := sockdiag.Dump(sockdiag.TCP, sockdiag.Filter{Local: s.addr})
		return socks
	}
	d.Kernel(filter)

	d.Step("Three clients connect; the kernel finishes each handshake before any accept")
	names := []string{"A", "B", "C"}
	clients := map[string]int{}
	addrs := map[string]netip.AddrPort{}
	for _, name := range names {
		fd, local, err := demoDial(d.Narrator, s.addr)
		if err != nil {
			return nil, err
		}
		clients[name], addrs[name] = fd, local
		defer func(name string) { unix.Close(clients[name]) }(name)
	}
	listener := func() (sockdiag.Socket, bool) {
		socks, _ := sockdiag.Dump(sockdiag.TCP, sockdiag.Filter{Local: s.addr, States: []sockdiag.State{sockdiag.Listen}})
		if len(socks) != 1 {
			return sockdiag.Socket{}, false
		}
		return socks[0], true
	}
	if err := waitKernel("three connections in the accept queue", func() bool {
		l, ok := listener()
		return ok && l.RecvQ == 3
	}); err != nil {
		return nil, err
	}
	l, _ := listener()
	res.acceptQueueBefore = l.RecvQ
	for _, so := range serverSide() {
		if so.State == sockdiag.Established && !so.HasFD() {
			res.unacceptedNoFD++
		}
	}
	d.Say("The listener's Recv-Q is its accept queue (全连接队列): %d connections wait for accept.", l.RecvQ)
	d.Kernel(filter)
	d.Say("Each select now reports the listener readable, and each accept takes one:")
	for range names {
		if err := s.step(); err != nil {
			return nil, err
		}
	}
	d.Kernel(sockdiag.Filter{Local: s.addr})

	d.Step("A sends a line: select reports its fd readable; read, then write it back")
	if err := demoSend(d.Narrator, clients["A"], "hello from A\n"); err != nil {
		return nil, err
	}
	if err := waitServerRecvQ(s.addr, addrs["A"]); err != nil {
		return nil, err
	}
	if err := s.step(); err != nil {
		return nil, err
	}
	res.echoes["A"], err = demoRecv(d.Narrator, clients["A"], len("hello from A\n"))
	if err != nil {
		return nil, err
	}

	d.Step("B and C send at once: one select call reports both fds")
	for _, name := range []string{"B", "C"} {
		if err := demoSend(d.Narrator, clients[name], "hi from "+name+"\n"); err != nil {
			return nil, err
		}
	}
	for _, name := range []string{"B", "C"} {
		if err := waitServerRecvQ(s.addr, addrs[name]); err != nil {
			return nil, err
		}
	}
	if err := s.step(); err != nil {
		return nil, err
	}
	for _, name := range []string{"B", "C"} {
		if res.echoes[name], err = demoRecv(d.Narrator, clients[name], len("hi from B\n")); err != nil {
			return nil, err
		}
	}

	d.Step("B closes: read() returns 0, the server closes B's fd and forgets it")
	err = unix.Close(clients["B"])
	d.Sys(0, err, "close(%d)  /* client B */", clients["B"])
	clients["B"] = -1
	if err := waitKernel("the server side of B in CLOSE_WAIT", func() bool {
		s, found, _ := sockdiag.Find(s.addr, addrs["B"])
		return found && s.State == sockdiag.CloseWait
	}); err != nil {
		return nil, err
	}
	if err := s.step(); err != nil {
		return nil, err
	}
	if err := waitKernel("the server side of B gone", func() bool {
		_, found, _ := sockdiag.Find(s.addr, addrs["B"])
		return !found
	}); err != nil {
		return nil, err
	}
	res.afterFIN, res.leftBRemote = serverSide(), addrs["B"]
	d.Say("B's side is in TIME_WAIT (it closed first); the server side of B is gone from the table:")
	d.Kernel(filter)

	d.Step("C resets (SO_LINGER 0): read() fails with ECONNRESET, C is removed")
	err = unix.SetsockoptLinger(clients["C"], unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
	d.Sys(0, err, "setsockopt(%d, SOL_SOCKET, SO_LINGER, {l_onoff=1, l_linger=0}, 8)", clients["C"])
	err = unix.Close(clients["C"])
	d.Sys(0, err, "close(%d)  /* client C: sends RST, no FIN */", clients["C"])
	clients["C"] = -1
	// The RST moves the server's socket to CLOSE and out of the kernel's connection table at
	// once, while the server's fd still refers to it: sock_diag no longer lists it.
	if err := waitKernel("the server side of C reset", func() bool {
		_, found, _ := sockdiag.Find(s.addr, addrs["C"])
		return !found
	}); err != nil {
		return nil, err
	}
	if err := s.step(); err != nil {
		return nil, err
	}
	res.afterRST, res.leftCRemote = serverSide(), addrs["C"]
	d.Say("No TIME_WAIT for C and no row on the server side: a reset ends both sides at once; the server's read() is how the loop learns of it.")
	d.Kernel(filter)

	d.Step("A is still served")
	if err := demoSend(d.Narrator, clients["A"], "still here\n"); err != nil {
		return nil, err
	}
	if err := waitServerRecvQ(s.addr, addrs["A"]); err != nil {
		return nil, err
	}
	if err := s.step(); err != nil {
		return nil, err
	}
	if res.echoes["A2"], err = demoRecv(d.Narrator, clients["A"], len("still here\n")); err != nil {
		return nil, err
	}

	d.Step("Stop, as SIGINT and SIGTERM do: one byte into the self-pipe")
	s.stop()
	if err := s.step(); !errors.Is(err, errStopped) {
		return nil, fmt.Errorf("step after stop: %v, want the server stopped", err)
	}
	k, err := unix.Read(clients["A"], make([]byte, 16))
	d.Sys(k, err, "read(%d, ..., 16)  /* client A: EOF */", clients["A"])
	if err := waitKernel("the server side of A in FIN_WAIT2", func() bool {
		s, found, _ := sockdiag.Find(s.addr, addrs["A"])
		return found && s.State == sockdiag.FinWait2
	}); err != nil {
		return nil, err
	}
	res.afterStop, _, _ = sockdiag.Find(s.addr, addrs["A"])
	res.clientAAfterStop, _, _ = sockdiag.Find(addrs["A"], s.addr)
	d.Say("Every server fd is closed: the listener is gone, A's side got the FIN (CLOSE_WAIT) and the server's side of A, now without an fd, waits in FIN_WAIT2 for A to close.")
	d.Kernel(sockdiag.Filter{Port: s.addr.Port(), States: []sockdiag.State{sockdiag.Listen, sockdiag.FinWait2, sockdiag.CloseWait}})
	return res, nil
}

// ---- Part B ---------------------------------------------------------------------------------

// pressureResult is what part B saw in the kernel.
type pressureResult struct {
	sent, echoed int // bytes the client wrote, and read back at the end
	// At the stall, for the server's socket of the stalled client:
	stallRecvQ uint32 // bytes the kernel holds that the server does not read
	held       int64  // bytes in the server process: (received − Recv-Q) − (acked + Send-Q)
	maxLine    int
}

func partBackpressure(d *lab.Demo) error {
	_, err := demoBackpressure(d, false)
	return err
}

// demoBackpressure runs the server on its own goroutine (quietly) and a client that writes
// without reading until the kernel refuses more, then reads everything back.
func demoBackpressure(d *lab.Demo, usePoll bool) (*pressureResult, error) {
	const maxLine = 4096
	res := &pressureResult{maxLine: maxLine}
	d.Step("A server with a %d-byte buffer per client (-max-line), on its own thread", maxLine)
	s, err := listenServer(d.Narrator, serverConfig{addr: demoAddr(d), maxLine: maxLine, poll: usePoll})
	if err != nil {
		return nil, err
	}
	s.n = lab.Quiet() // from here the server works silently; the kernel tells the story
	done := make(chan error, 1)
	go func() { done <- s.serve() }()
	defer func() { s.stop(); <-done }()

	d.Step("A client that sends and never reads (small buffers: a quicker stall)")
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err := d.Sys(fd, err, "socket(AF_INET, SOCK_STREAM|SOCK_CLOEXEC, 0)"); err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	for _, opt := range []int{unix.SO_RCVBUF, unix.SO_SNDBUF} {
		err = unix.SetsockoptInt(fd, unix.SOL_SOCKET, opt, 16384)
		d.Sys(0, err, "setsockopt(%d, SOL_SOCKET, %s, [16384], 4)", fd, map[int]string{unix.SO_RCVBUF: "SO_RCVBUF", unix.SO_SNDBUF: "SO_SNDBUF"}[opt])
	}
	err = unix.Connect(fd, lab.SockaddrOf(s.addr))
	if err := d.Sys(0, err, "connect(%d, %s)", fd, lab.Sockaddr(lab.SockaddrOf(s.addr))); err != nil {
		return nil, err
	}
	local, _ := unix.Getsockname(fd)
	caddr := lab.AddrPortOf(local)
	unix.SetNonblock(fd, true)
	d.Say("A second client checks, with one echo each time, that the loop keeps turning for others.")
	other, _, err := demoDial(lab.Quiet(), s.addr)
	if err != nil {
		return nil, err
	}
	defer unix.Close(other)
	loopTurned := func() error {
		if _, err := unix.Write(other, []byte("?")); err != nil {
			return err
		}
		_, err := demoRecv(lab.Quiet(), other, 1)
		return err
	}
	chunk := bytes.Repeat([]byte("0123456789abcdef"), 4096) // 64 KiB
	sent, err := fillUntilStalled(fd, chunk, s.addr, caddr, loopTurned)
	if err != nil {
		return nil, err
	}
	res.sent = sent
	d.Say("write(%d, ...) returned EAGAIN for good after %d bytes: every buffer on the way is full.", fd, sent)
	srv, _, _ := sockdiag.Find(s.addr, caddr)
	res.stallRecvQ, res.held = srv.RecvQ, heldByServer(srv)
	d.Kernel(sockdiag.Filter{Ports: []uint16{caddr.Port()}})
	d.Say("The client's row: Send-Q = bytes the server's kernel will not take (zero window: the persist timer probes it), Recv-Q = echoes the client does not read. The server's row: Send-Q = echoes waiting for the client's window, Recv-Q = %d bytes the server no longer reads — its buffer for this client is full, so the fd left the read set.", srv.RecvQ)
	d.Say("What the server process holds, from the kernel's counters of its socket: (bytes_received %d − Recv-Q %d) − (bytes_acked %d + Send-Q %d) = %d bytes ≤ max-line %d.",
		infoOf(srv).Bytes_received, srv.RecvQ, infoOf(srv).Bytes_acked, srv.SendQ, res.held, maxLine)

	d.Step("The client starts reading: everything drains, byte for byte")
	echoed, err := drainEchoes(fd, sent, chunk)
	if err != nil {
		return nil, err
	}
	res.echoed = echoed
	d.Say("read back %d of %d bytes, in order", echoed, sent)
	return res, nil
}

// fillUntilStalled writes chunk (cyclically) on a non-blocking socket until the connection is
// stalled for good: the client's writes fail with EAGAIN, its socket probes a zero window
// (the persist timer, zero-window probes 零窗口探测), the server's socket holds unread bytes, and
// none of that changes while the server's loop turns for another client (loopTurned: one echo
// on a second connection — a select/poll that woke for it would also have reported this socket
// if the server still read it).
func fillUntilStalled(fd int, chunk []byte, server, client netip.AddrPort, loopTurned func() error) (int, error) {
	sent := 0
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		k, err := unix.Write(fd, chunk[sent%len(chunk):])
		if err == nil {
			sent += k
			continue
		}
		if !errors.Is(err, unix.EAGAIN) {
			return sent, err
		}
		before, ok := stallView(server, client)
		if !ok {
			// Not stalled yet: wait until the kernel takes more (or 5 ms, to look again).
			pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
			if _, err := unix.Poll(pfd, 5); err != nil && !errors.Is(err, unix.EINTR) {
				return sent, err
			}
			continue
		}
		if err := loopTurned(); err != nil {
			return sent, err
		}
		if after, ok := stallView(server, client); ok && after == before {
			next := sent % len(chunk) // the stream continues where it stopped
			if _, err := unix.Write(fd, chunk[next:next+1]); errors.Is(err, unix.EAGAIN) {
				return sent, nil
			} else if err == nil {
				sent++
			}
		}
	}
	return sent, errors.New("the connection never stalled within 20 s")
}

// stallState is what the kernel shows of a stalled connection.
type stallState struct {
	serverRecvQ, clientSendQ uint32
	serverReceived           uint64
}

// stallView reads the kernel's view of both ends; ok is true when it looks stalled: the client
// probes a zero window with bytes queued, and the server's socket has unread bytes.
func stallView(server, client netip.AddrPort) (stallState, bool) {
	srv, found, _ := sockdiag.Find(server, client)
	cli, foundC, _ := sockdiag.Find(client, server)
	if !found || !foundC || srv.Info == nil {
		return stallState{}, false
	}
	ok := cli.Timer == sockdiag.TimerProbe && cli.SendQ > 0 && srv.RecvQ > 0
	return stallState{serverRecvQ: srv.RecvQ, clientSendQ: cli.SendQ, serverReceived: srv.Info.Bytes_received}, ok
}

// drainEchoes reads until want bytes came back, checking they equal what was sent.
func drainEchoes(fd, want int, chunk []byte) (int, error) {
	buf := make([]byte, 64*1024)
	got := 0
	var fds [1]unix.PollFd
	for got < want {
		fds[0] = unix.PollFd{Fd: int32(fd), Events: unix.POLLIN}
		if n, err := unix.Poll(fds[:], 5000); err != nil && !errors.Is(err, unix.EINTR) {
			return got, err
		} else if n == 0 {
			return got, fmt.Errorf("no echo for 5 s after %d of %d bytes", got, want)
		}
		k, err := unix.Read(fd, buf)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return got, err
		}
		if k == 0 {
			return got, fmt.Errorf("EOF after %d of %d bytes", got, want)
		}
		for i := range k {
			if buf[i] != chunk[(got+i)%len(chunk)] {
				return got, fmt.Errorf("byte %d differs", got+i)
			}
		}
		got += k
	}
	return got, nil
}

// heldByServer is how many bytes the server process holds for this connection, computed only
// from the kernel's counters of the server's socket: what the application read minus what it
// wrote.
func heldByServer(s sockdiag.Socket) int64 {
	i := infoOf(s)
	read := int64(i.Bytes_received) - int64(s.RecvQ)
	written := int64(i.Bytes_acked) + int64(s.SendQ)
	return read - written
}

func infoOf(s sockdiag.Socket) *unix.TCPInfo {
	if s.Info == nil {
		return &unix.TCPInfo{}
	}
	return s.Info
}

// ---- Part C ---------------------------------------------------------------------------------

// fdSetSizeResult is what part C saw.
type fdSetSizeResult struct {
	selectEcho   string // what the client at fd 1023 got back
	refusedRead  int    // the refused client's read(): 0 = the server closed it
	refusedState sockdiag.State
	pollEcho     string // what the client at fd 1024 got back from the poll loop
}

func partFDSetSize(d *lab.Demo) error {
	_, err := demoFDSetSize(d)
	return err
}

// demoFDSetSize fills this process's descriptors up to 1023, so the select loop's next clients
// get fd 1023 (served) and fd 1024 (refused); then the poll loop serves fd 1024.
func demoFDSetSize(d *lab.Demo) (*fdSetSizeResult, error) {
	res := &fdSetSizeResult{}
	d.Say("An fd_set is a bitmap of FD_SETSIZE = %d bits (%d bytes): select can watch fds 0–1023 only.", unix.FD_SETSIZE, len(unix.FdSet{}.Bits)*8)
	// The clients' sockets are made first, so that the fillers push the *server's* next
	// accepted fds to 1023 and 1024 (this demo is one process; so are its fds).
	var fds [3]int
	for i := range fds {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err := d.Sys(fd, err, "socket(AF_INET, SOCK_STREAM|SOCK_CLOEXEC, 0)  /* client %d */", i+1); err != nil {
			return nil, err
		}
		fds[i] = fd
		defer unix.Close(fd)
	}

	d.Step("A select server whose descriptors 0–1022 are all taken")
	s, err := listenServer(d.Narrator, serverConfig{addr: demoAddr(d), trace: true, fillFDsTo: 1023})
	if err != nil {
		return nil, err
	}
	defer s.close()
	d.Step("Client 1 gets fd 1023 on the server: the last one select can watch")
	if res.selectEcho, err = connectAndEcho(d, s, fds[0], "fits\n"); err != nil {
		return nil, err
	}
	d.Step("Client 2 gets fd 1024: the server refuses it and says why")
	err = unix.Connect(fds[1], lab.SockaddrOf(s.addr))
	if err := d.Sys(0, err, "connect(%d, %s)", fds[1], lab.Sockaddr(lab.SockaddrOf(s.addr))); err != nil {
		return nil, err
	}
	if err := s.step(); err != nil { // select: listener readable → accept4 = 1024 → close
		return nil, err
	}
	k, err := unix.Read(fds[1], make([]byte, 16))
	d.Sys(k, err, "read(%d, ..., 16)  /* client 2: EOF, the server closed it */", fds[1])
	res.refusedRead = k
	local, _ := unix.Getsockname(fds[1])
	st, _, _ := sockdiag.Find(lab.AddrPortOf(local), s.addr)
	res.refusedState = st.State
	c1, _ := unix.Getsockname(fds[0])
	c1addr, c2addr := lab.AddrPortOf(c1), lab.AddrPortOf(local)
	// The server's FIN is acknowledged with a delayed ACK; wait for it so the table is settled.
	if err := waitKernel("the refused connection's server side in FIN_WAIT2", func() bool {
		st, found, _ := sockdiag.Find(s.addr, c2addr)
		return found && st.State == sockdiag.FinWait2
	}); err != nil {
		return nil, err
	}
	d.Say("Client 1 is ESTABLISHED on fd 1023; client 2 got a FIN at once (CLOSE_WAIT on its side):")
	d.Kernel(sockdiag.Filter{Ports: []uint16{c1addr.Port(), c2addr.Port()}})
	s.close()

	d.Step("The same with poll(2): no FD_SETSIZE, so fd 1024 is served")
	p, err := listenServer(d.Narrator, serverConfig{addr: demoAddr(d), trace: true, poll: true, fillFDsTo: 1024})
	if err != nil {
		return nil, err
	}
	defer p.close()
	if res.pollEcho, err = connectAndEcho(d, p, fds[2], "past 1024\n"); err != nil {
		return nil, err
	}
	return res, nil
}

// connectAndEcho connects fd, lets the server accept it, sends msg and reads the echo.
func connectAndEcho(d *lab.Demo, s *server, fd int, msg string) (string, error) {
	err := unix.Connect(fd, lab.SockaddrOf(s.addr))
	if err := d.Sys(0, err, "connect(%d, %s)", fd, lab.Sockaddr(lab.SockaddrOf(s.addr))); err != nil {
		return "", err
	}
	if err := s.step(); err != nil { // accept
		return "", err
	}
	if err := demoSend(d.Narrator, fd, msg); err != nil {
		return "", err
	}
	if err := s.step(); err != nil { // read + echo
		return "", err
	}
	return demoRecv(d.Narrator, fd, len(msg))
}

// ---- small client-side helpers of the demo -------------------------------------------------

// demoDial is socket + connect for one demo client, narrated.
func demoDial(n *lab.Narrator, addr netip.AddrPort) (int, netip.AddrPort, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err := n.Sys(fd, err, "socket(AF_INET, SOCK_STREAM|SOCK_CLOEXEC, 0)"); err != nil {
		return -1, netip.AddrPort{}, err
	}
	sa := lab.SockaddrOf(addr)
	err = unix.Connect(fd, sa)
	if err := n.Sys(0, err, "connect(%d, %s)", fd, lab.Sockaddr(sa)); err != nil {
		unix.Close(fd)
		return -1, netip.AddrPort{}, err
	}
	local, err := unix.Getsockname(fd)
	if err != nil {
		unix.Close(fd)
		return -1, netip.AddrPort{}, err
	}
	return fd, lab.AddrPortOf(local), nil
}

func demoSend(n *lab.Narrator, fd int, msg string) error {
	k, err := unix.Write(fd, []byte(msg))
	return n.Sys(k, err, "write(%d, %q, %d)  /* client */", fd, msg, len(msg))
}

// demoRecv reads exactly want bytes (blocking, bounded by a 5 s poll).
func demoRecv(n *lab.Narrator, fd, want int) (string, error) {
	var got []byte
	buf := make([]byte, want)
	for len(got) < want {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		if k, err := unix.Poll(fds, 5000); err != nil && !errors.Is(err, unix.EINTR) {
			return string(got), err
		} else if k == 0 {
			return string(got), fmt.Errorf("fd %d: no echo within 5 s", fd)
		}
		k, err := unix.Read(fd, buf[:want-len(got)])
		n.Sys(k, err, "read(%d, %s, %d)  /* client */", fd, quote(buf, k), want-len(got))
		if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
			continue
		}
		if err != nil {
			return string(got), err
		}
		if k == 0 {
			return string(got), fmt.Errorf("fd %d: EOF before the echo", fd)
		}
		got = append(got, buf[:k]...)
	}
	return string(got), nil
}

// waitServerRecvQ waits until the server's socket of this client holds unread bytes, so the
// next select finds it readable (the demo's order of events stays the same on every run).
func waitServerRecvQ(server, client netip.AddrPort) error {
	return waitKernel(fmt.Sprintf("bytes queued on %v → %v", server, client), func() bool {
		s, found, _ := sockdiag.Find(server, client)
		return found && s.RecvQ > 0
	})
}

// waitKernel polls the kernel until cond holds, for at most 3 s.
func waitKernel(what string, cond func() bool) error {
	if !lab.Poll(3*time.Second, cond) {
		return fmt.Errorf("timed out waiting for %s", what)
	}
	return nil
}
