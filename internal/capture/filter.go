//go:build linux

package capture

import (
	"fmt"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// The classic BPF program (Documentation/networking/filter.rst), written with golang.org/x/net/bpf,
// that the kernel runs on every packet before queueing it to the capture socket. For an
// AF_PACKET SOCK_DGRAM socket the packet starts at the network header (offset 0 = IP version),
// so the offsets below are IP and TCP header offsets. It keeps:
//
//   - only packets the interface received (not the PACKET_OUTGOING copy: on loopback every
//     packet is seen twice, once leaving and once arriving),
//   - only unfragmented TCP over IPv4, or TCP directly after the IPv6 header,
//   - if ports are given, only segments whose source or destination port is one of them,
//
// and cuts each kept packet to snapLen bytes: enough for both headers, since lengths are read
// from the IP header, so a bulk transfer costs the capture no copying of payload.

// snapLen covers the largest IPv4 header (60) plus the largest TCP header (60).
const snapLen = 128

// maxPorts keeps every conditional jump of the program within its 8-bit offset.
const maxPorts = 32

// step is one instruction whose jumps name labels; assemble turns them into the skip counts
// classic BPF wants, so the program reads without hand-counted offsets.
type step struct {
	label  string // this instruction's own label, if any
	ins    bpf.Instruction
	jt, jf string // jump targets of a JumpIf (jt alone for a Jump); "" = next instruction
}

func do(ins bpf.Instruction) step { return step{ins: ins} }

func jumpIf(cond bpf.JumpTest, val uint32, jt, jf string) step {
	return step{ins: bpf.JumpIf{Cond: cond, Val: val}, jt: jt, jf: jf}
}

func jump(to string) step { return step{ins: bpf.Jump{}, jt: to} }

func labeled(label string, s step) step { s.label = label; return s }

// filterProgram builds the filter for the given ports (none = every TCP segment).
func filterProgram(ports []uint16) ([]unix.SockFilter, error) {
	if len(ports) > maxPorts {
		return nil, fmt.Errorf("capture: at most %d ports in one filter, got %d", maxPorts, len(ports))
	}
	prog := []step{
		do(bpf.LoadExtension{Num: bpf.ExtType}), // skb->pkt_type
		jumpIf(bpf.JumpEqual, unix.PACKET_OUTGOING, "drop", ""),
		do(bpf.LoadAbsolute{Off: 0, Size: 1}), // version and IHL
		do(bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: 0xf0}),
		jumpIf(bpf.JumpEqual, 0x40, "", "ip6"),
		// IPv4: protocol at byte 9, flags+fragment offset at byte 6.
		do(bpf.LoadAbsolute{Off: 9, Size: 1}),
		jumpIf(bpf.JumpEqual, protoTCP, "", "drop"),
		do(bpf.LoadAbsolute{Off: 6, Size: 2}),
		jumpIf(bpf.JumpBitsSet, 0x3fff, "drop", ""), // MF set or a non-zero offset: a fragment
		do(bpf.LoadMemShift{Off: 0}),                // X = 4*(IHL): where TCP starts
		jump("ports"),
		labeled("ip6", jumpIf(bpf.JumpEqual, 0x60, "", "drop")),
		// IPv6: next header at byte 6, TCP right after the 40-byte header.
		do(bpf.LoadAbsolute{Off: 6, Size: 1}),
		jumpIf(bpf.JumpEqual, protoTCP, "", "drop"),
		do(bpf.LoadConstant{Dst: bpf.RegX, Val: ipv6Hdr}),
	}
	ports = dedupPorts(ports)
	if len(ports) == 0 {
		prog = append(prog, labeled("ports", jump("accept")))
	} else {
		// Source port at TCP offset 0, destination port at 2.
		prog = append(prog, labeled("ports", do(bpf.LoadIndirect{Off: 0, Size: 2})))
		for _, p := range ports {
			prog = append(prog, jumpIf(bpf.JumpEqual, uint32(p), "accept", ""))
		}
		prog = append(prog, do(bpf.LoadIndirect{Off: 2, Size: 2}))
		for _, p := range ports {
			prog = append(prog, jumpIf(bpf.JumpEqual, uint32(p), "accept", ""))
		}
		prog = append(prog, jump("drop"))
	}
	prog = append(prog,
		labeled("accept", do(bpf.RetConstant{Val: snapLen})),
		labeled("drop", do(bpf.RetConstant{Val: 0})))
	return assemble(prog)
}

func dedupPorts(ports []uint16) []uint16 {
	var out []uint16
	seen := map[uint16]bool{}
	for _, p := range ports {
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	return out
}

// assemble resolves labels into skip counts and assembles the program with x/net/bpf into the
// struct sock_filter array that SO_ATTACH_FILTER takes.
func assemble(prog []step) ([]unix.SockFilter, error) {
	at := map[string]int{}
	for i, s := range prog {
		if s.label != "" {
			at[s.label] = i
		}
	}
	skip := func(from int, label string) (uint32, error) {
		if label == "" {
			return 0, nil
		}
		to, ok := at[label]
		if !ok || to <= from {
			return 0, fmt.Errorf("capture: bad BPF jump to %q from %d", label, from)
		}
		return uint32(to - from - 1), nil
	}
	insns := make([]bpf.Instruction, len(prog))
	for i, s := range prog {
		jt, err := skip(i, s.jt)
		if err != nil {
			return nil, err
		}
		jf, err := skip(i, s.jf)
		if err != nil {
			return nil, err
		}
		switch ins := s.ins.(type) {
		case bpf.JumpIf:
			if jt > 255 || jf > 255 {
				return nil, fmt.Errorf("capture: BPF jump from %d too far", i)
			}
			ins.SkipTrue, ins.SkipFalse = uint8(jt), uint8(jf)
			insns[i] = ins
		case bpf.Jump:
			ins.Skip = jt
			insns[i] = ins
		default:
			insns[i] = s.ins
		}
	}
	raw, err := bpf.Assemble(insns)
	if err != nil {
		return nil, fmt.Errorf("capture: %w", err)
	}
	out := make([]unix.SockFilter, len(raw))
	for i, r := range raw {
		out[i] = unix.SockFilter{Code: r.Op, Jt: r.Jt, Jf: r.Jf, K: r.K}
	}
	return out, nil
}
