//go:build linux

package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"socklab/internal/labtest"
)

// BenchmarkRoundTripWithIdleClients measures one active client's round trip (64 bytes out, 64
// back) while K idle clients stay connected, for the select loop and the poll loop: every
// turn of either loop hands the kernel all K+1 sockets and scans them all again afterwards,
// so the cost grows with K although only one socket is ever ready (the O(n) lesson; epoll, in
// chapter 06, is the O(ready) answer). The server runs in a child process so that its fd table
// holds only its own sockets (1000 idle clients then fit under FD_SETSIZE), and server-µs/op
// is the child's CPU time (utime+stime from /proc/PID/stat) per round trip, split into user
// (building and scanning the sets) and system (the kernel polling every fd) time.
func BenchmarkRoundTripWithIdleClients(b *testing.B) {
	for _, loop := range loops {
		for _, idle := range []int{0, 100, 1000} {
			b.Run(fmt.Sprintf("%s/idle=%d", loop.name, idle), func(b *testing.B) {
				args := []string{}
				if loop.poll {
					args = append(args, "-poll")
				}
				p := serverProcess(b, args...)
				for range idle {
					fd, _ := labtest.Dial(b, p.addr)
					// One echo proves the server accepted it: it is in every later wait.
					require.Equal(b, "i", string(roundTrip(b, fd, []byte("i"))))
				}
				active, _ := labtest.Dial(b, p.addr)
				msg := make([]byte, 64)
				buf := make([]byte, 64)
				userBefore, sysBefore := processCPU(b, p.cmd.Process.Pid)
				ops := 0
				for b.Loop() {
					if _, err := unix.Write(active, msg); err != nil {
						b.Fatal(err)
					}
					for got := 0; got < len(buf); {
						k, err := unix.Read(active, buf[got:])
						if err != nil || k == 0 {
							b.Fatalf("read: %d, %v", k, err)
						}
						got += k
					}
					ops++
				}
				b.StopTimer()
				user, sys := processCPU(b, p.cmd.Process.Pid)
				user, sys = user-userBefore, sys-sysBefore
				b.ReportMetric((user+sys)/float64(ops)*1e6, "server-µs/op")
				b.ReportMetric(user/float64(ops)*1e6, "server-user-µs/op")
				b.ReportMetric(sys/float64(ops)*1e6, "server-sys-µs/op")
				require.NoError(b, p.exit(unix.SIGTERM))
			})
		}
	}
}

// processCPU is a process's user and system CPU time in seconds, from /proc/PID/stat (fields
// 14 and 15, in clock ticks of 1/100 s on Linux).
func processCPU(b *testing.B, pid int) (user, sys float64) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	require.NoError(b, err)
	s := string(raw)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:]) // after "pid (comm) "
	utime, err1 := strconv.ParseFloat(fields[11], 64)
	stime, err2 := strconv.ParseFloat(fields[12], 64)
	require.NoError(b, err1)
	require.NoError(b, err2)
	return utime / 100, stime / 100
}
