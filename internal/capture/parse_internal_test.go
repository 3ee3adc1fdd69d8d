//go:build linux

package capture

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// ipv4SYN is a SYN from 127.0.0.1:40000 to 127.0.0.1:9000 with MSS and window-scale options and
// 3 bytes of payload, laid out per RFC 791 and RFC 9293.
func ipv4SYN() []byte {
	tcp := []byte{
		0x9c, 0x40, 0x23, 0x28, // ports 40000 → 9000
		0x01, 0x02, 0x03, 0x04, // seq
		0, 0, 0, 0, // ack
		0x70, 0x02, 0xff, 0xd7, // data offset 7 words, SYN, window 65495
		0, 0, 0, 0, // checksum, urgent pointer
		2, 4, 0xff, 0xd7, // MSS 65495
		1, 3, 3, 7, // NOP, window scale 7
		'a', 'b', 'c',
	}
	ip := make([]byte, 20)
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+len(tcp)))
	ip[6] = 0x40 // DF: not a fragment
	ip[9] = protoTCP
	copy(ip[12:], []byte{127, 0, 0, 1})
	copy(ip[16:], []byte{127, 0, 0, 1})
	return append(ip, tcp...)
}

func TestParseIPv4Segment(t *testing.T) {
	t.Parallel()
	seg, ok := parseIP(ipv4SYN())
	require.True(t, ok)
	assert.Equal(t, netip.MustParseAddrPort("127.0.0.1:40000"), seg.Src)
	assert.Equal(t, netip.MustParseAddrPort("127.0.0.1:9000"), seg.Dst)
	assert.Equal(t, uint32(0x01020304), seg.Seq)
	assert.Equal(t, SYN, seg.Flags)
	assert.Equal(t, uint16(65495), seg.Window)
	assert.Equal(t, 3, seg.Len)
	assert.Equal(t, uint16(65495), seg.MSS)
	assert.Equal(t, 7, seg.WScale)
	assert.Equal(t, uint32(4), seg.SeqSpace(), "3 bytes and the SYN")
}

// Truncated, fragmented, non-TCP or malformed packets are refused, never a panic: the capture
// sees whatever crosses lo.
func TestParseRefusesBadPackets(t *testing.T) {
	t.Parallel()
	good := ipv4SYN()
	for n := range 20 + 28 { // every cut before the end of the TCP header and options
		_, ok := parseIP(good[:n])
		assert.False(t, ok, "cut at %d bytes", n)
	}
	_, ok := parseIP(good[:20+28]) // headers only, as the filter's snap length delivers it
	assert.True(t, ok, "payload is not needed: its length comes from the IP header")

	mutate := func(f func(b []byte)) []byte { b := append([]byte(nil), good...); f(b); return b }
	for name, b := range map[string][]byte{
		"UDP":              mutate(func(b []byte) { b[9] = 17 }),
		"fragment":         mutate(func(b []byte) { b[6] = 0x20 }),
		"IHL too small":    mutate(func(b []byte) { b[0] = 0x44 }),
		"data offset 4":    mutate(func(b []byte) { b[20+12] = 0x40 }),
		"offset past end":  mutate(func(b []byte) { b[20+12] = 0xf0 }),
		"IP length short":  mutate(func(b []byte) { binary.BigEndian.PutUint16(b[2:], 30) }),
		"version 5":        mutate(func(b []byte) { b[0] = 0x55 }),
		"bad option width": mutate(func(b []byte) { b[20+21] = 40 }),
	} {
		seg, ok := parseIP(b)
		if name == "bad option width" {
			assert.True(t, ok, name) // the segment is fine; the option is ignored
			assert.Equal(t, -1, seg.WScale, name)
			continue
		}
		assert.False(t, ok, name)
	}
}

func TestFilterProgram(t *testing.T) {
	t.Parallel()
	prog, err := filterProgram([]uint16{80, 80, 443})
	require.NoError(t, err)
	require.NotEmpty(t, prog)
	assert.Equal(t, uint32(snapLen), prog[len(prog)-2].K, "accept keeps the headers only")
	assert.Equal(t, uint32(0), prog[len(prog)-1].K, "drop")
	_, err = filterProgram(make([]uint16, maxPorts+1))
	assert.ErrorContains(t, err, "at most")
}
