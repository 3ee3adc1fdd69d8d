//go:build linux

package main

import (
	"testing"

	"golang.org/x/sys/unix"

	"socklab/internal/lab"
	"socklab/internal/labtest"
)

// BenchmarkHandshakeConnectAccept measures one loopback connection's setup as a program
// sees it: socket + connect (the whole three-way handshake happens inside connect) +
// accept, then an abortive close (SO_LINGER 0, so no TIME_WAIT piles up across iterations).
func BenchmarkHandshakeConnectAccept(b *testing.B) {
	lfd, laddr := labtest.Listen(b, loopbackAny, 128)
	sa := lab.SockaddrOf(laddr)
	linger := &unix.Linger{Onoff: 1, Linger: 0}
	for b.Loop() {
		cfd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			b.Fatal(err)
		}
		if err := unix.Connect(cfd, sa); err != nil {
			b.Fatal(err)
		}
		afd, _, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC)
		if err != nil {
			b.Fatal(err)
		}
		_ = unix.SetsockoptLinger(cfd, unix.SOL_SOCKET, unix.SO_LINGER, linger)
		unix.Close(cfd)
		unix.Close(afd)
	}
}

// BenchmarkSockDiagListenerRow measures one question to the kernel's socket table, the
// price of every "kernel (sock_diag)" table and every wait in this chapter.
func BenchmarkSockDiagListenerRow(b *testing.B) {
	_, laddr := labtest.Listen(b, loopbackAny, 4)
	for b.Loop() {
		if _, found, err := listenerRow(laddr); err != nil || !found {
			b.Fatal("listener not found", err)
		}
	}
}
