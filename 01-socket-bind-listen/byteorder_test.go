//go:build linux

package main

import (
	"encoding/binary"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"socklab/internal/labtest"
)

// htons(8080) puts 0x1f then 0x90 into sin_port, whatever this machine's own order.
func TestHtonsPutsHighByteFirst(t *testing.T) {
	t.Parallel()
	f := showByteOrder(narrator(t))
	assert.Equal(t, [2]byte{0x1f, 0x90}, f.PortBytes)
	assert.Equal(t, []byte{2, 0, 0x1f, 0x90, 127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0}[2:], f.SockaddrBytes[2:],
		"port and address in network order, then zero padding")
	assert.EqualValues(t, unix.AF_INET, binary.NativeEndian.Uint16(f.SockaddrBytes[:2]), "sin_family is in host order")
	if f.Native == "little-endian" {
		assert.EqualValues(t, 0x901f, f.HtonsValue, "on a little-endian machine htons swaps")
	}
}

// The kernel agrees: a sockaddr built with htons binds the intended port.
func TestConvertedPortBindsIntendedPort(t *testing.T) {
	t.Parallel()
	fd := labtest.Socket(t, loopbackAny, unix.SOCK_STREAM)
	sa := unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: [4]byte{127, 0, 0, 1}}
	require.NoError(t, unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}))
	port := labtest.LocalAddr(t, fd).Port()
	labtest.CloseNow(t, fd)
	fd = labtest.Socket(t, loopbackAny, unix.SOCK_STREAM)
	sa.Port = htons(port)
	_, _, errno := unix.Syscall(unix.SYS_BIND, uintptr(fd), uintptr(ptr(&sa)), unix.SizeofSockaddrInet4)
	require.Zero(t, errno)
	assert.Equal(t, port, labtest.LocalAddr(t, fd).Port())
}

// The classic bug: sin_port = 8080 without htons binds port 36895 on a little-endian
// machine, as getsockname and the kernel's table both say.
func TestUnconvertedPortBindsSwappedPort(t *testing.T) {
	t.Parallel()
	if nativeOrder() != "little-endian" {
		t.Skip("on a big-endian machine htons changes nothing, so the bug is invisible")
	}
	port := uint16(lessonPort)
	if !labtest.Env.Private {
		// On the host 36895 may be taken: pick a free port q and bind the number whose
		// swapped bytes are q.
		fd := labtest.Socket(t, loopbackAny, unix.SOCK_STREAM)
		require.NoError(t, unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}))
		port = htons(labtest.LocalAddr(t, fd).Port())
		labtest.CloseNow(t, fd)
	}
	var res unconvertedBind
	require.NoError(t, inHost(t, func() (err error) { res, err = bindUnconvertedPort(narrator(t), port); return err }))
	require.NoError(t, res.Err)
	if port == lessonPort {
		assert.EqualValues(t, 36895, res.Bound)
	}
	assert.Equal(t, htons(port), res.Bound, "getsockname: the bytes were read big-endian")
	assert.Equal(t, res.Bound, res.KernelPort, "the kernel's LISTEN socket is on the swapped port")
	assert.NotEqual(t, port, res.Bound)
}

// /proc/net/tcp prints the address's bytes as one native-order 32-bit number: 127.0.0.1 is
// 0100007F on a little-endian machine, while the port is printed as a number.
func TestProcNetTCPPrintsLoopbackAs0100007F(t *testing.T) {
	t.Parallel()
	field, err := showProcNetTCP(narrator(t))
	require.NoError(t, err)
	want := "7F000001"
	if nativeOrder() == "little-endian" {
		want = "0100007F"
	}
	require.Len(t, field, 13)
	assert.Equal(t, want, field[:8])
	var port uint16
	_, err = fmt.Sscanf(field[9:], "%04X", &port)
	require.NoError(t, err)
	assert.NotZero(t, port)
}
