//go:build linux

package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
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
// so the cost grows with K although only one socket is ever ready (the O(n) lesson). The
// epoll rows run chapter 06's server (inline, level-triggered), the O(ready) answer: the
// kernel keeps the interest list and returns only the ready fd. Each server runs in a child
// process so that its fd table holds only its own sockets (1000 idle clients then fit under
// FD_SETSIZE), and server-µs/op is the child's CPU time (utime+stime from /proc/PID/stat) per
// round trip, split into user (building and scanning the sets) and system (the kernel polling
// every fd) time.
func BenchmarkRoundTripWithIdleClients(b *testing.B) {
	epoll, epollErr := buildEpollServer(b)
	for _, loop := range []string{"select", "poll", "epoll"} {
		for _, idle := range []int{0, 100, 1000} {
			b.Run(fmt.Sprintf("%s/idle=%d", loop, idle), func(b *testing.B) {
				var p *serverProc
				switch loop {
				case "select":
					p = serverProcess(b)
				case "poll":
					p = serverProcess(b, "-poll")
				case "epoll":
					// Chapter 06's server, inline and level-triggered: the same one-thread echo
					// loop, waiting with epoll_wait, which returns only the ready fds.
					if epollErr != nil {
						b.Skipf("no epoll row: %v", epollErr)
					}
					p = startServerCommand(b, exec.Command(epoll, "server", "-addr", "127.0.0.1:0"))
				}
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

// buildEpollServer builds chapter 06's program into a temporary directory removed when b
// ends, and returns its path, or "" and the reason when the go command cannot build it.
func buildEpollServer(b *testing.B) (string, error) {
	dir := b.TempDir()
	path := filepath.Join(dir, "06-epoll-server")
	build := exec.Command("go", "build", "-o", path, "./06-epoll-server")
	build.Dir = ".." // the module root
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./06-epoll-server: %v: %s", err, out)
	}
	return path, nil
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
