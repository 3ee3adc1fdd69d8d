//go:build linux

package capture_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"socklab/internal/capture"
	"socklab/internal/labtest"
)

// rawPacket is one packet from a plain packet socket: no filter, no deduplication.
type rawPacket struct {
	ll   *unix.SockaddrLinklayer
	data []byte
	ts   time.Time
}

// openRawLo opens an AF_PACKET socket on lo with no filter at all, independent of the capture
// package: it receives both loopback copies of every packet.
func openRawLo(t *testing.T) int {
	t.Helper()
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	labtest.Own(t, fd)
	require.NoError(t, unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1))
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20)
	ifr, err := unix.NewIfreq("lo")
	require.NoError(t, err)
	require.NoError(t, unix.IoctlIfreq(fd, unix.SIOCGIFINDEX, ifr))
	proto := uint16(unix.ETH_P_ALL)
	require.NoError(t, unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: proto<<8 | proto>>8, Ifindex: int(ifr.Uint32())}))
	return fd
}

// isSegment reports whether an IPv4 packet carries the TCP segment s (ports, seq, ack, flags).
func isSegment(pkt []byte, s capture.Segment) bool {
	if len(pkt) < 20 || pkt[0]>>4 != 4 {
		return false
	}
	tcp := pkt[int(pkt[0]&0x0f)*4:]
	be := binary.BigEndian
	return len(tcp) >= 20 && be.Uint16(tcp[0:]) == s.Src.Port() && be.Uint16(tcp[2:]) == s.Dst.Port() &&
		be.Uint32(tcp[4:]) == s.Seq && be.Uint32(tcp[8:]) == s.Ack && capture.Flags(tcp[13]) == s.Flags
}

// readRawUntil reads packets until the arriving copy of last (the capture's last segment) is
// among them, or the deadline passes.
func readRawUntil(t *testing.T, fd int, last capture.Segment) []rawPacket {
	t.Helper()
	var pkts []rawPacket
	buf := make([]byte, 1<<16)
	oob := make([]byte, unix.CmsgSpace(16))
	deadline := time.Now().Add(wait)
	for time.Now().Before(deadline) {
		n, oobn, _, from, err := unix.Recvmsg(fd, buf, oob, 0)
		if err == unix.EAGAIN || err == unix.EINTR {
			_, _ = unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, 20)
			continue
		}
		require.NoError(t, err)
		p := rawPacket{ll: from.(*unix.SockaddrLinklayer), data: append([]byte(nil), buf[:n]...)}
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		require.NoError(t, err)
		for _, m := range msgs {
			if m.Header.Type == unix.SCM_TIMESTAMPNS {
				p.ts = time.Unix(int64(binary.NativeEndian.Uint64(m.Data[0:8])), int64(binary.NativeEndian.Uint64(m.Data[8:16])))
			}
		}
		pkts = append(pkts, p)
		if p.ll.Pkttype != unix.PACKET_OUTGOING && isSegment(p.data, last) {
			return pkts
		}
	}
	t.Fatalf("the raw socket never received the capture's last segment %v", last)
	return nil
}

// writePcap writes packets as a pcap file with nanosecond timestamps and Linux "cooked"
// link-layer headers (LINKTYPE_LINUX_SLL, 113), which keep each packet's direction.
func writePcap(t *testing.T, path string, pkts []rawPacket) {
	t.Helper()
	var b bytes.Buffer
	le := binary.LittleEndian
	hdr := make([]byte, 24)
	le.PutUint32(hdr[0:], 0xa1b23c4d) // nanosecond pcap
	le.PutUint16(hdr[4:], 2)
	le.PutUint16(hdr[6:], 4)
	le.PutUint32(hdr[16:], 1<<16)
	le.PutUint32(hdr[20:], 113)
	b.Write(hdr)
	for _, p := range pkts {
		sll := make([]byte, 16)
		binary.BigEndian.PutUint16(sll[0:], uint16(p.ll.Pkttype))
		binary.BigEndian.PutUint16(sll[2:], p.ll.Hatype)
		binary.BigEndian.PutUint16(sll[4:], uint16(p.ll.Halen))
		copy(sll[6:14], p.ll.Addr[:])
		binary.NativeEndian.PutUint16(sll[14:], p.ll.Protocol) // already in network byte order
		rec := make([]byte, 16)
		le.PutUint32(rec[0:], uint32(p.ts.Unix()))
		le.PutUint32(rec[4:], uint32(p.ts.Nanosecond()))
		le.PutUint32(rec[8:], uint32(len(sll)+len(p.data)))
		le.PutUint32(rec[12:], uint32(len(sll)+len(p.data)))
		b.Write(rec)
		b.Write(sll)
		b.Write(p.data)
	}
	require.NoError(t, os.WriteFile(path, b.Bytes(), 0o644))
}

// tcpdumpLine matches `tcpdump -nn -S -e` output for a TCP segment over Linux cooked capture:
// "12:00:00.000000000 In ethertype IPv4 (0x0800), length 84: 127.0.0.1.41734 > 127.0.0.1.9000:
// Flags [S.], seq 1:6, ack 2, win 512, options [...], length 5".
var tcpdumpLine = regexp.MustCompile(`^\S+\s+(In|Out|\S+) .*?: (\S+)\.(\d+) > (\S+)\.(\d+): Flags \[([^\]]*)\]` +
	`(?:, seq (\d+)(?::\d+)?)?(?:, ack (\d+))?, win (\d+)(?:, options \[[^\]]*\])?, length (\d+)`)

// tcpdumpSegment is what one tcpdump line says, in our terms.
type tcpdumpSegment struct {
	dir      string
	src, dst string
	flags    capture.Flags
	seq, ack string // "" when tcpdump does not print it
	win, len int
}

func parseTcpdumpFlags(s string) capture.Flags {
	var f capture.Flags
	for _, c := range s {
		f |= map[rune]capture.Flags{'S': capture.SYN, 'F': capture.FIN, 'R': capture.RST, 'P': capture.PSH,
			'U': capture.URG, '.': capture.ACK, 'E': capture.ECE, 'W': capture.CWR}[c]
	}
	return f
}

// runTcpdump decodes the pcap with tcpdump. tcpdump, started as uid 0, insists on switching to
// its own user with initgroups(3), which a user namespace with setgroups denied (the only kind an
// unprivileged user can create) refuses; so it runs in a nested user namespace as uid 1000
// (mapped to our uid 0), where it keeps its own identity. Reading a file needs no privilege.
func runTcpdump(t *testing.T, path, file, filter string) string {
	t.Helper()
	cmd := exec.Command(path, "-nn", "-S", "-e", "-r", file, filter)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  syscall.CLONE_NEWUSER,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 1000, HostID: 0, Size: 1}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 1000, HostID: 0, Size: 1}},
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Skipf("cannot start tcpdump in a nested user namespace: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		require.NoError(t, err, "tcpdump: %s", stderr.String())
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("tcpdump did not finish reading %s", file)
	}
	return stdout.String()
}

// An independent witness: a second, unfiltered packet socket records the same connection, and
// tcpdump decodes those raw packets. tcpdump sees every segment twice (Out and In: the reason the
// capture deduplicates), and its In list equals the capture's segments one for one — direction,
// flags, absolute seq and ack, raw window and length, in the same order.
func TestCaptureMatchesTcpdump(t *testing.T) {
	t.Parallel()
	tcpdump, err := exec.LookPath("tcpdump")
	if err != nil {
		t.Skip("tcpdump is not installed (apt-get install tcpdump): cross-check skipped")
	}
	lfd, laddr, c := listen(t, labtest.Loopback4)
	raw := openRawLo(t)
	k := dial(t, lfd, laddr)
	exchange(t, k)
	_, err = unix.Write(k.s.fd, []byte("hi there"))
	require.NoError(t, err)
	buf := make([]byte, 64)
	_, err = unix.Read(k.c.fd, buf)
	require.NoError(t, err)
	conv := closeBoth(t, c, k)
	pkts := readRawUntil(t, raw, conv.Segments[len(conv.Segments)-1])

	file := filepath.Join(t.TempDir(), "lo.pcap")
	writePcap(t, file, pkts)
	out := runTcpdump(t, tcpdump, file, fmt.Sprintf("tcp and host %s and port %d and port %d",
		k.laddr.Addr(), k.laddr.Port(), k.caddr.Port()))

	var in, outgoing []tcpdumpSegment
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		m := tcpdumpLine.FindStringSubmatch(line)
		require.NotNil(t, m, "unparsed tcpdump line %q", line)
		win, _ := strconv.Atoi(m[9])
		n, _ := strconv.Atoi(m[10])
		s := tcpdumpSegment{dir: m[1], src: m[2] + ":" + m[3], dst: m[4] + ":" + m[5],
			flags: parseTcpdumpFlags(m[6]), seq: m[7], ack: m[8], win: win, len: n}
		if s.dir == "Out" {
			outgoing = append(outgoing, s)
		} else {
			require.Equal(t, "In", s.dir, line)
			in = append(in, s)
		}
	}
	assert.Len(t, outgoing, len(conv.Segments), "tcpdump: each segment once leaving lo")
	require.Len(t, in, len(conv.Segments), "tcpdump: each segment once arriving; capture:%s\ntcpdump:\n%s", dump(conv), out)
	for i, s := range conv.Segments {
		d := in[i]
		assert.Equal(t, s.Src.String(), d.src, "segment %d source", i)
		assert.Equal(t, s.Dst.String(), d.dst, "segment %d destination", i)
		assert.Equal(t, s.Flags, d.flags, "segment %d flags", i)
		if d.seq != "" {
			assert.Equal(t, strconv.FormatUint(uint64(s.Seq), 10), d.seq, "segment %d seq", i)
		}
		if d.ack != "" {
			assert.Equal(t, strconv.FormatUint(uint64(s.Ack), 10), d.ack, "segment %d ack", i)
		}
		assert.Equal(t, int(s.Window), d.win, "segment %d raw window", i)
		assert.Equal(t, s.Len, d.len, "segment %d length", i)
	}
}
