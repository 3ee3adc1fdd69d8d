//go:build linux

package main

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"socklab/internal/labtest"
	"socklab/internal/netlab"
)

// A wire is the benchmarks' attempt to measure the sender as a real network would see it.
//
// Over loopback, transmitting a segment runs the *receive* half of TCP too: loopback_xmit
// hands the packet to netif_rx, and the NET_RX softirq that follows runs on the transmitting
// CPU, in the sender's context, so the sender's CPU time includes the receiver's protocol work
// (docs/07-sendfile-splice.md, "The numbers"). On a real network that work runs on the other
// machine, and on this machine a NIC's interrupt (RSS) decides where the ACKs are processed.
//
// Receive Packet Steering (RPS, Documentation/networking/scaling.rst) does in software what
// RSS does in hardware: netif_rx enqueues the packet on the backlog of a CPU taken from the
// receive queue's rps_cpus mask and raises NET_RX there with an IPI. Writing
// /sys/class/net/lo/queues/rx-0/rps_cpus is refused in a user namespace (store_rps_map checks
// capable(CAP_NET_ADMIN), i.e. in the initial user namespace: EPERM even for a root-mapped
// user), but net.core.rps_default_mask is a per-namespace sysctl that the kernel applies to
// the receive queues of every device registered in that namespace afterwards. loopback exists
// before the sysctl can be set, a veth pair does not. So a wire is:
//
//   - a netlab.Host (a second namespace: the receiving "machine") joined to the lab
//     namespace by a veth pair (veth_xmit also ends in netif_rx), with
//   - the lab end created while the lab's rps_default_mask is the sender's CPU: the ACKs
//     the sender gets are processed on the sender's CPU, as on a sending machine, and
//   - the host end created while the host's rps_default_mask is the receiver's CPU: the data
//     segments are processed there, as on the receiving machine.
//
// TestWireSteersReceiveToReceiverCPU proves the steering with the kernel's own counters. What
// it costs: RPS wakes the target CPU with an inter-processor interrupt (IPI) for nearly every
// packet (about 12,000–15,000 per GiB here), and in a virtual machine sending and taking an
// IPI traps to the hypervisor, so on this VM the steered sender spends more CPU per GiB than
// the unsteered one (BenchmarkTargetRatios/veth-rps against /veth).
type wire struct {
	host *netlab.Host
	link netlab.Link
}

var wireSeq atomic.Int32

// newWire builds a wire whose two ends steer receive processing to sendCPU (the lab end, for
// ACKs) and recvCPU (the host end, for data). With steer false the masks stay empty: the same
// veth pair without RPS, where (as on loopback) the CPU that transmits a packet also runs its
// receive processing — the control that separates what the veth changes from what RPS
// changes. It fails outside a private namespace or where ip(8) is missing; the lab's
// rps_default_mask is restored before it returns.
func newWire(sendCPU, recvCPU int, steer bool) (*wire, error) {
	if !netlab.Current().Private {
		return nil, netlab.ErrNotPrivate
	}
	if sendCPU < 0 || recvCPU < 0 || sendCPU >= 64 || recvCPU >= 64 {
		return nil, fmt.Errorf("a wire needs two CPUs to steer to, got %d and %d", sendCPU, recvCPU)
	}
	sendMask, recvMask := cpuMask(sendCPU), cpuMask(recvCPU)
	if !steer {
		sendMask, recvMask = "0", "0"
	}
	h, err := netlab.NewHost("receiver")
	if err != nil {
		return nil, err
	}
	w := &wire{host: h}
	fail := func(err error) (*wire, error) {
		w.close()
		return nil, err
	}
	if err := h.Do(func() error { return netlab.SetSysctl("net.core.rps_default_mask", recvMask) }); err != nil {
		return fail(err)
	}
	restore, err := netlab.SetSysctls("net.core.rps_default_mask", sendMask)
	if err != nil {
		return fail(err)
	}
	// A /30 of TEST-NET-1 per wire, so wires of concurrent tests never share a subnet.
	n := int(wireSeq.Add(1)-1) % 64
	local := netip.PrefixFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(4*n + 1)}), 30)
	peer := netip.PrefixFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(4*n + 2)}), 30)
	w.link, err = h.Connect(local, peer)
	restore() // the veth's queues took the mask when they were registered
	if err != nil {
		return fail(err)
	}
	return w, nil
}

// cpuMask is the hex CPU bitmap sysfs and sysctl use: CPU 1 → "2".
func cpuMask(cpu int) string { return strconv.FormatUint(1<<cpu, 16) }

func (w *wire) close() { w.host.Close() }

// dial is dialLoopback across the wire: the listener (and so the accepted socket) belongs to
// the host's namespace, the client to the lab's. sndbuf and rcvbuf as in dialLoopback.
func (w *wire) dial(sndbuf, rcvbuf int) (*link, error) {
	return dialAt(netip.AddrPortFrom(w.link.PeerAddr.Addr(), 0), sndbuf, rcvbuf, w.host.Do)
}

// softnetCounts reads, per CPU, how many packets the CPU's NET_RX processed from its backlog
// and how many times another CPU woke it with an RPS IPI (columns 1 and 10 of
// /proc/net/softnet_stat, written by softnet_seq_show in net/core/net-procfs.c; the 13th
// column is the CPU). These counters are the whole machine's, not the namespace's.
func softnetCounts() (processed, receivedRPS map[int]uint64, err error) {
	b, err := os.ReadFile("/proc/net/softnet_stat")
	if err != nil {
		return nil, nil, err
	}
	processed, receivedRPS = map[int]uint64{}, map[int]uint64{}
	for i, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Fields(line)
		if len(f) < 10 {
			return nil, nil, errors.New("/proc/net/softnet_stat: fewer than 10 columns")
		}
		cpu := i
		if len(f) >= 13 {
			c, err := strconv.ParseUint(f[12], 16, 32)
			if err != nil {
				return nil, nil, fmt.Errorf("/proc/net/softnet_stat: %w", err)
			}
			cpu = int(c)
		}
		p, err1 := strconv.ParseUint(f[0], 16, 64)
		r, err2 := strconv.ParseUint(f[9], 16, 64)
		if err := errors.Join(err1, err2); err != nil {
			return nil, nil, fmt.Errorf("/proc/net/softnet_stat: %w", err)
		}
		processed[cpu], receivedRPS[cpu] = p, r
	}
	return processed, receivedRPS, nil
}

// Across a wire the kernel steers the data segments' receive processing to the receiver's CPU:
// during a 32 MiB sendfile from a sender pinned to CPU 0, /proc/net/softnet_stat shows CPU 1
// woken by RPS IPIs (received_rps grows) — and, as a control, the same transfer over a wire
// built without a steering mask wakes CPU 1 that way far less (the counters are machine-wide,
// so the control is what ties the growth to this transfer). The bytes arrive intact both times.
func TestWireSteersReceiveToReceiverCPU(t *testing.T) {
	t.Parallel()
	labtest.NeedPrivate(t)
	if runtime.NumCPU() < 2 {
		t.Skip("steering needs two CPUs")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("a veth wire needs ip(8) from iproute2")
	}
	path := filepath.Join(t.TempDir(), "wire.bin")
	want, err := makeFile(path, 32<<20, 13)
	require.NoError(t, err)
	// ipisOnCPU1 sends the file over a new wire and returns how many RPS IPIs CPU 1 received.
	ipisOnCPU1 := func(steer bool) uint64 {
		w, err := newWire(0, 1, steer)
		require.NoError(t, err)
		defer w.close()
		_, before, err := softnetCounts()
		require.NoError(t, err)
		out, err := transferOver(w.dial, 0, 0,
			SendOptions{Method: Sendfile, Path: path, Length: -1, CPU: 0},
			RecvOptions{Method: RecvRead, Buf: 64 << 10, CPU: 1}, nil)
		require.NoError(t, err)
		require.NoError(t, errors.Join(out.SendErr, out.RecvErr))
		require.Equal(t, want, out.Recv.Sum)
		if !out.Send.Pinned {
			t.Skip("could not pin the sender to CPU 0 (cpuset?)")
		}
		_, after, err := softnetCounts()
		require.NoError(t, err)
		return after[1] - before[1]
	}
	control := ipisOnCPU1(false)
	steered := ipisOnCPU1(true)
	t.Logf("RPS IPIs received by CPU 1: %d steered, %d without a mask", steered, control)
	// 32 MiB is about 500 segments of up to 64 KiB; an IPI is sent when CPU 1's backlog was
	// empty, so a few dozen is a conservative floor (460-520 were seen).
	assert.GreaterOrEqual(t, steered, uint64(32), "RPS IPIs received by CPU 1 during the steered transfer")
	assert.Less(t, control*2, steered, "without a mask CPU 1 gets far fewer RPS IPIs")
}

// softirqSeconds is the time CPU cpu has spent in softirq since boot, from the cpuN line of
// /proc/stat (proc(5): the 7th value, in USER_HZ = 1/100 s). The kernel charges it by
// sampling at each tick whatever the CPU was doing — in any task's context, or idle — so over
// a transfer it is a whole-CPU, 10 ms-grained estimate, not one thread's exact cost.
func softirqSeconds(cpu int) (float64, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	name := "cpu" + strconv.Itoa(cpu)
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 7 && f[0] == name {
			v, err := strconv.ParseUint(f[7], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("/proc/stat %s: %w", name, err)
			}
			return float64(v) / 100, nil
		}
	}
	return 0, fmt.Errorf("/proc/stat: no %s line", name)
}

// hrtimerSoftirqs is how many HRTIMER softirqs cpu has run since boot (/proc/softirqs): the
// high-resolution timers TCP arms when it paces its own segments (BBR without the fq qdisc).
func hrtimerSoftirqs(cpu int) (uint64, error) {
	b, err := os.ReadFile("/proc/softirqs")
	if err != nil {
		return 0, err
	}
	lines := strings.Split(string(b), "\n")
	// The header names the columns (CPU0 CPU1 ...); a CPU that is offline has none.
	column := slices.Index(strings.Fields(lines[0]), "CPU"+strconv.Itoa(cpu))
	for _, line := range lines[1:] {
		f := strings.Fields(line)
		if column >= 0 && len(f) > column+1 && f[0] == "HRTIMER:" {
			return strconv.ParseUint(f[column+1], 10, 64)
		}
	}
	return 0, fmt.Errorf("/proc/softirqs: no HRTIMER count for CPU %d", cpu)
}

// cpuCounters is what the kernel says two CPUs did during a transfer: softirq time and
// HRTIMER softirqs on the sender's CPU, and RPS IPIs received by the receiver's.
type cpuCounters struct {
	sendSoftirq  float64 // seconds
	sendHrtimers uint64
	recvIPIs     uint64
	ok           bool
}

func readCPUCounters(sendCPU, recvCPU int) cpuCounters {
	if sendCPU < 0 || recvCPU < 0 {
		return cpuCounters{}
	}
	sq, err1 := softirqSeconds(sendCPU)
	_, rps, err2 := softnetCounts()
	hr, err3 := hrtimerSoftirqs(sendCPU)
	return cpuCounters{sendSoftirq: sq, sendHrtimers: hr, recvIPIs: rps[recvCPU], ok: err1 == nil && err2 == nil && err3 == nil}
}
