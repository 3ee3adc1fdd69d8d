//go:build linux

package main

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"

	"golang.org/x/sys/unix"

	"socklab/internal/lab"
)

// link is one loopback TCP connection, made with the calls of chapter 01: the sender's end
// (client) and the receiver's end (server, from accept).
type link struct {
	listener, client, server int
}

var loopback = netip.MustParseAddrPort("127.0.0.1:0")

// dialLoopback connects a client to a fresh listener on 127.0.0.1. sndbuf and rcvbuf, when not
// zero, fix SO_SNDBUF on the client and SO_RCVBUF on the listener (which accepted sockets
// inherit), turning off autotuning so that tests know how much can be in flight.
func dialLoopback(sndbuf, rcvbuf int) (*link, error) {
	return dialAt(loopback, sndbuf, rcvbuf, func(listen func() error) error { return listen() })
}

// dialAt is dialLoopback with the listener bound to listenAt, made by a function that
// listenIn runs: directly, or on a thread in another network namespace (a socket belongs to
// the namespace of the thread that creates it; after that, any thread may use it).
func dialAt(listenAt netip.AddrPort, sndbuf, rcvbuf int, listenIn func(func() error) error) (*link, error) {
	l := &link{listener: -1, client: -1, server: -1}
	fail := func(call string, err error) (*link, error) {
		l.close()
		return nil, fmt.Errorf("%s: %w", call, err)
	}
	var sa unix.Sockaddr
	var call string // the listener's call that failed
	err := listenIn(func() (err error) {
		if l.listener, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0); err != nil {
			call = "socket"
			return err
		}
		if rcvbuf > 0 {
			if err = unix.SetsockoptInt(l.listener, unix.SOL_SOCKET, unix.SO_RCVBUF, rcvbuf); err != nil {
				call = "setsockopt(SO_RCVBUF)"
				return err
			}
		}
		if err = unix.Bind(l.listener, lab.SockaddrOf(listenAt)); err != nil {
			call = "bind"
			return err
		}
		if err = unix.Listen(l.listener, 1); err != nil {
			call = "listen"
			return err
		}
		sa, err = unix.Getsockname(l.listener)
		call = "getsockname"
		return err
	})
	if err != nil {
		return fail(call, err)
	}
	if l.client, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0); err != nil {
		return fail("socket", err)
	}
	if sndbuf > 0 {
		if err := unix.SetsockoptInt(l.client, unix.SOL_SOCKET, unix.SO_SNDBUF, sndbuf); err != nil {
			return fail("setsockopt(SO_SNDBUF)", err)
		}
	}
	if err := unix.Connect(l.client, sa); err != nil {
		return fail("connect", err)
	}
	// The handshake completed in the kernel (the connection waits in the accept queue), so
	// this accept4 does not block.
	if l.server, _, err = unix.Accept4(l.listener, unix.SOCK_CLOEXEC); err != nil {
		return fail("accept4", err)
	}
	return l, nil
}

func (l *link) closeClient() {
	if l.client >= 0 {
		unix.Close(l.client)
		l.client = -1
	}
}

func (l *link) close() {
	l.closeClient()
	for _, fd := range []*int{&l.server, &l.listener} {
		if *fd >= 0 {
			unix.Close(*fd)
			*fd = -1
		}
	}
}

// Outcome is one transfer seen from both ends.
type Outcome struct {
	Send    *SendReport
	Recv    *RecvReport
	SendErr error
	RecvErr error
}

// Match reports whether the receiver's SHA-256 equals want and nothing failed.
func (o Outcome) Match(want []byte) bool {
	return o.SendErr == nil && o.RecvErr == nil && o.Recv != nil && bytes.Equal(o.Recv.Sum, want)
}

// transfer sends one file over a fresh loopback connection: the receiver runs concurrently on
// its own thread, the sender closes its end when done so the receiver sees EOF.
func transfer(so SendOptions, ro RecvOptions) (Outcome, error) {
	return transferOver(dialLoopback, 0, 0, so, ro, nil)
}

// transferWith is transfer with fixed socket buffers (0 = autotuned) and an optional hook
// that runs on the receiving goroutine before it starts reading.
func transferWith(sndbuf, rcvbuf int, so SendOptions, ro RecvOptions, beforeRecv func()) (Outcome, error) {
	return transferOver(dialLoopback, sndbuf, rcvbuf, so, ro, beforeRecv)
}

// dialFunc makes the connection a transfer uses: dialLoopback, or in the benchmarks a veth
// "wire" to another namespace (wire_test.go).
type dialFunc func(sndbuf, rcvbuf int) (*link, error)

// transferOver is transferWith over a connection made by dial.
func transferOver(dial dialFunc, sndbuf, rcvbuf int, so SendOptions, ro RecvOptions, beforeRecv func()) (Outcome, error) {
	l, err := dial(sndbuf, rcvbuf)
	if err != nil {
		return Outcome{}, err
	}
	defer l.close()
	var out Outcome
	done := make(chan struct{})
	go func() {
		defer close(done)
		if beforeRecv != nil {
			beforeRecv()
		}
		out.Recv, out.RecvErr = Receive(l.server, ro)
	}()
	out.Send, out.SendErr = Send(l.client, so)
	l.closeClient() // EOF for the receiver, also when the send failed
	<-done
	return out, nil
}

// sendEveryWay sends the same window once with each method, received with ro.
func sendEveryWay(methods []Method, base SendOptions, ro RecvOptions) ([]Outcome, error) {
	var outs []Outcome
	for _, m := range methods {
		so := base
		so.Method = m
		out, err := transfer(so, ro)
		if err != nil {
			return nil, err
		}
		outs = append(outs, out)
	}
	return outs, nil
}

// makeFile writes size pseudo-random bytes (seeded, so reproducible) to path and returns
// their SHA-256. Writing leaves the pages in the page cache, as the benchmark wants.
func makeFile(path string, size int64, seed uint64) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	rng := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16), 7})
	h := sha256.New()
	buf := make([]byte, 1<<20)
	for left := size; left > 0; {
		chunk := buf[:min(left, int64(len(buf)))]
		_, _ = rng.Read(chunk)
		h.Write(chunk)
		if _, err := f.Write(chunk); err != nil {
			return nil, err
		}
		left -= int64(len(chunk))
	}
	return h.Sum(nil), f.Close()
}

// A sparse file: 4 GiB + 1 MiB + 3 bytes long, with data only in two 1 MiB islands that
// straddle 2 GiB (2^31, where a signed 32-bit offset overflows) and 4 GiB (2^32, where an
// unsigned one does). The rest are holes: they read as zeros and take no disk.
const (
	sparseSize  = 4<<30 + 1<<20 + 3
	sparseIsle1 = 2<<30 - 512<<10
	sparseIsle2 = 4<<30 - 512<<10
	isleLen     = 1 << 20
)

// sparseWindows are the byte ranges the bigfile part and its test send: odd offsets and odd
// lengths that begin in a hole, cross a boundary inside the data, and end in a hole.
var sparseWindows = [][2]int64{
	{2<<30 - 700_001, 1<<20 + 400_003},
	{4<<30 - 600_007, 1<<20 + 200_001},
}

// makeSparseFile creates the sparse file with ftruncate(2) and two pwrite64(2) islands.
func makeSparseFile(path string) error {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CREAT|unix.O_TRUNC|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.Ftruncate(fd, sparseSize); err != nil {
		return fmt.Errorf("ftruncate: %w", err)
	}
	rng := rand.NewChaCha8([32]byte{42})
	isle := make([]byte, isleLen)
	for _, at := range []int64{sparseIsle1, sparseIsle2} {
		_, _ = rng.Read(isle)
		if _, err := unix.Pwrite(fd, isle, at); err != nil {
			return fmt.Errorf("pwrite64 at %d: %w", at, err)
		}
	}
	return nil
}

// TruncResult is what happened when the file was cut short in the middle of a send.
type TruncResult struct {
	Send          *SendReport
	SendErr       error
	Got           int64 // body bytes the receiver got before EOF
	Want          int64 // what the header announced
	NewSize       int64
	PrefixMatches bool // the bytes that arrived are exactly the file's original first bytes
}

// Sizes for the truncation scenario: the receiver reads truncPause bytes, the file is then
// cut from truncSize to truncTo. With 64 KiB socket buffers at most a few hundred KiB beyond
// truncPause can have left the file, so the cut always lands ahead of the sender.
const (
	truncSize  = 16 << 20
	truncPause = 1 << 20
	truncTo    = 4 << 20
)

// truncateDuringSend sends a 16 MiB file with method m while the receiver (this function)
// stops reading after 1 MiB, truncates the file to 4 MiB with truncate(2), then reads to EOF.
func truncateDuringSend(dir string, m Method) (TruncResult, error) {
	path := fmt.Sprintf("%s/truncate-%s.bin", dir, m)
	if _, err := makeFile(path, truncSize, 3); err != nil {
		return TruncResult{}, err
	}
	original, err := os.ReadFile(path)
	if err != nil {
		return TruncResult{}, err
	}
	l, err := dialLoopback(64<<10, 64<<10)
	if err != nil {
		return TruncResult{}, err
	}
	defer l.close()
	res := TruncResult{NewSize: truncTo}
	done := make(chan struct{})
	go func() {
		defer close(done)
		res.Send, res.SendErr = Send(l.client, SendOptions{Method: m, Path: path, Length: -1, Buf: 64 << 10, CPU: -1})
		l.closeClient()
	}()
	// The receiver's side, by hand: header, 1 MiB, cut the file, the rest until EOF.
	received, rerr := readUntil(l.server, headerLen+truncPause)
	if rerr == nil && len(received) == headerLen+truncPause {
		rerr = unix.Truncate(path, truncTo)
		if rerr == nil {
			var rest []byte
			rest, rerr = readUntil(l.server, 1<<62)
			received = append(received, rest...)
		}
	}
	<-done
	if rerr != nil {
		return res, rerr
	}
	if len(received) < headerLen {
		return res, errors.New("no header arrived")
	}
	res.Want = int64(len(original))
	body := received[headerLen:]
	res.Got = int64(len(body))
	res.PrefixMatches = bytes.Equal(body, original[:min(len(body), len(original))])
	return res, nil
}

// readUntil reads from fd until n bytes or EOF.
func readUntil(fd int, n int64) ([]byte, error) {
	var out []byte
	buf := make([]byte, 64<<10)
	for int64(len(out)) < n {
		k, err := unix.Read(fd, buf[:min(int64(len(buf)), n-int64(len(out)))])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return out, err
		}
		if k == 0 {
			break
		}
		out = append(out, buf[:k]...)
	}
	return out, nil
}

// peerClosesEarly sends an 8 MiB file with method m to a receiver that reads the header and
// 64 KiB, then close(2)s with data still unread — which makes its kernel answer with RST.
// It returns the sender's report and error.
func peerClosesEarly(dir string, m Method) (*SendReport, error, error) {
	path := fmt.Sprintf("%s/peerclose-%s.bin", dir, m)
	if _, err := makeFile(path, 8<<20, 5); err != nil {
		return nil, nil, err
	}
	l, err := dialLoopback(0, 0)
	if err != nil {
		return nil, nil, err
	}
	defer l.close()
	var rep *SendReport
	var sendErr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		rep, sendErr = Send(l.client, SendOptions{Method: m, Path: path, Length: -1, Buf: 64 << 10, CPU: -1})
	}()
	_, rerr := readUntil(l.server, headerLen+64<<10)
	unix.Close(l.server)
	l.server = -1
	<-done
	return rep, sendErr, rerr
}
