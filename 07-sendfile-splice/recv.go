//go:build linux

package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// Receive methods.
const (
	RecvRead   = "read"   // read(2) into a buffer, hash it (and write it to -out)
	RecvSplice = "splice" // splice(2) socket → pipe → -out file or /dev/null, never in user memory
)

// RecvOptions says how to receive.
type RecvOptions struct {
	Method string // RecvRead or RecvSplice
	Buf    int    // read buffer size
	Pipe   int    // splice pipe size (F_SETPIPE_SZ); 0 keeps the default
	Out    string // file to write the body to; "" = nowhere (read) or /dev/null (splice)
	CPU    int    // pin the receiving thread; -1 leaves it free
	NoHash bool   // read: skip SHA-256 (benchmarks measure the copy alone)
}

// RecvReport is what one receive saw.
type RecvReport struct {
	Want    int64  // body length the header announced
	Got     int64  // body bytes received
	Sum     []byte // SHA-256 of the body; nil when spliced to /dev/null (never seen)
	Elapsed time.Duration
	CPU     CPU
	Pinned  bool
	Calls   *callLog
	IO      KernelIO
	IOOK    bool
}

// errShort is a transfer that ended before the announced length.
var errShort = errors.New("short transfer")

type receiver struct {
	o    RecvOptions
	sock int
	out  int // -1: nowhere
	log  *callLog
	h    hash.Hash
	got  int64
}

// Receive reads one transfer from the connected socket sock: the header, then the body, then
// EOF.
func Receive(sock int, o RecvOptions) (*RecvReport, error) {
	if o.Method != RecvRead && o.Method != RecvSplice {
		return nil, fmt.Errorf("unknown receive method %q (want read or splice)", o.Method)
	}
	rc := &receiver{o: o, sock: sock, out: -1, log: newCallLog()}
	outPath := o.Out
	if outPath == "" && o.Method == RecvSplice {
		outPath = os.DevNull // splice needs somewhere to put the pages
	}
	if outPath != "" {
		fd, err := unix.Open(outPath, unix.O_WRONLY|unix.O_CREAT|unix.O_TRUNC|unix.O_CLOEXEC, 0o644)
		if err != nil {
			if errors.Is(err, unix.EACCES) {
				return nil, fmt.Errorf("open %s: permission denied (hint: choose an -out you can write)", outPath)
			}
			return nil, fmt.Errorf("open %s: %w", outPath, err)
		}
		defer unix.Close(fd)
		rc.out = fd
	}
	r := &RecvReport{Want: -1, Calls: rc.log}
	var err error
	onOwnThread(o.CPU, func(pinned bool) {
		meter := openIOMeter()
		cpu0, t0 := threadCPU(), time.Now()
		err = rc.run(r)
		r.Elapsed = time.Since(t0)
		cpu1 := threadCPU()
		r.IO, r.IOOK = meter.stop()
		r.CPU = CPU{User: cpu1.User - cpu0.User, Sys: cpu1.Sys - cpu0.Sys}
		r.Pinned = pinned
	})
	r.Got = rc.got
	switch {
	case rc.h != nil:
		r.Sum = rc.h.Sum(nil)
	case o.Method == RecvSplice && o.Out != "" && outPath != os.DevNull:
		// The bytes went from the socket to the file without passing through us: read the file
		// back (after the measurement) to prove what arrived.
		sum, herr := hashFile(o.Out, 0, -1)
		if herr == nil {
			r.Sum = sum
		} else if err == nil {
			err = herr
		}
	}
	return r, err
}

func (rc *receiver) run(r *RecvReport) error {
	header := make([]byte, headerLen)
	for have := 0; have < headerLen; {
		n, err := unix.Read(rc.sock, header[have:])
		rc.log.add("read", n, err, "read(%d, buf, %d)", rc.sock, headerLen-have)
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return fmt.Errorf("read header: %w", err)
		case n == 0:
			return fmt.Errorf("%w: the connection closed after %d of %d header bytes", errShort, have, headerLen)
		}
		have += n
	}
	if !bytes.Equal(header[:8], headerMagic) {
		return fmt.Errorf("the peer is not a 07-sendfile-splice sender (header %s)", quoteBytes(header))
	}
	r.Want = int64(binary.BigEndian.Uint64(header[8:]))
	var err error
	if rc.o.Method == RecvRead {
		err = rc.readBody(r.Want)
	} else {
		err = rc.spliceBody(r.Want)
	}
	if err != nil {
		return err
	}
	// The sender closes after the body: one more read must see EOF, not extra bytes.
	var extra [1]byte
	for {
		n, err := unix.Read(rc.sock, extra[:])
		rc.log.add("read", n, err, "read(%d, buf, 1)", rc.sock)
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return fmt.Errorf("read after the body: %w", err)
		case n > 0:
			return fmt.Errorf("the sender sent more than the %d bytes it announced", r.Want)
		}
		return nil
	}
}

// readBody: read(2) copies each byte from the socket buffer into ours; we hash it and, with
// -out, write(2) it again.
func (rc *receiver) readBody(want int64) error {
	if !rc.o.NoHash {
		rc.h = sha256.New()
	}
	buf := make([]byte, max(rc.o.Buf, 1))
	for rc.got < want {
		n, err := unix.Read(rc.sock, buf[:min(int64(len(buf)), want-rc.got)])
		rc.log.add("read", n, err, "read(%d, buf, %d)", rc.sock, min(int64(len(buf)), want-rc.got))
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return fmt.Errorf("read after %d of %d bytes: %w", rc.got, want, err)
		case n == 0:
			return fmt.Errorf("%w: received %d of %d announced bytes (the sender stopped early)", errShort, rc.got, want)
		}
		if rc.h != nil {
			rc.h.Write(buf[:n])
		}
		rc.got += int64(n)
		for p := buf[:n]; len(p) > 0 && rc.out >= 0; {
			m, err := unix.Write(rc.out, p)
			rc.log.add("write", m, err, "write(%d, buf, %d)", rc.out, len(p))
			if err != nil && err != unix.EINTR {
				return fmt.Errorf("write %s: %w", rc.o.Out, err)
			}
			p = p[max(m, 0):]
		}
	}
	return nil
}

// spliceBody: socket → pipe → file (or /dev/null); the bytes never enter our memory.
func (rc *receiver) spliceBody(want int64) error {
	var p [2]int
	err := unix.Pipe2(p[:], unix.O_CLOEXEC)
	rc.log.add("pipe2", 0, err, "pipe2([%d, %d], O_CLOEXEC)", p[0], p[1])
	if err != nil {
		return err
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	if rc.o.Pipe > 0 {
		got, err := unix.FcntlInt(uintptr(p[1]), unix.F_SETPIPE_SZ, rc.o.Pipe)
		rc.log.add("fcntl", got, err, "fcntl(%d, F_SETPIPE_SZ, %d)", p[1], rc.o.Pipe)
		if err != nil {
			return fmt.Errorf("fcntl(F_SETPIPE_SZ, %d): %w", rc.o.Pipe, err)
		}
	}
	pipeSize, err := unix.FcntlInt(uintptr(p[1]), unix.F_GETPIPE_SZ, 0)
	if err != nil {
		return err
	}
	for rc.got < want {
		count := int(min(want-rc.got, int64(pipeSize)))
		n, err := unix.Splice(rc.sock, nil, p[1], nil, count, unix.SPLICE_F_MOVE)
		rc.log.add("splice", int(n), err, "splice(%d, NULL, %d, NULL, %d, SPLICE_F_MOVE)", rc.sock, p[1], count)
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return fmt.Errorf("splice after %d of %d bytes: %w", rc.got, want, err)
		case n == 0:
			return fmt.Errorf("%w: received %d of %d announced bytes (the sender stopped early)", errShort, rc.got, want)
		}
		rc.got += n
		for left := n; left > 0; {
			m, err := unix.Splice(p[0], nil, rc.out, nil, int(left), unix.SPLICE_F_MOVE)
			rc.log.add("splice", int(m), err, "splice(%d, NULL, %d, NULL, %d, SPLICE_F_MOVE)", p[0], rc.out, left)
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				return fmt.Errorf("splice to %s: %w", rc.o.Out, err)
			}
			left -= m
		}
	}
	return nil
}

// hashFile is the SHA-256 of length bytes of path from offset (-1: to the end), read with
// ordinary reads: the test's and the demo's reference, never part of a measurement.
func hashFile(path string, offset, length int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var r io.Reader = io.NewSectionReader(f, offset, 1<<62)
	if length >= 0 {
		r = io.NewSectionReader(f, offset, length)
	}
	h := sha256.New()
	if _, err := io.Copy(h, r); err != nil {
		return nil, err
	}
	return h.Sum(nil), nil
}
