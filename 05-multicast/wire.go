//go:build linux

package main

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"

	"socklab/internal/lab"
)

// IGMP on the wire: what the kernel tells the link when sockets join and leave.

// igmpRecord is one group record of an IGMP membership report, as a router would read it.
type igmpRecord struct {
	Kind  string // "join" (IGMPv3 CHANGE_TO_EXCLUDE, or a v1/v2 report) or "leave"
	Group netip.Addr
}

// IGMPv3 group record types (RFC 3376 §4.2.12) and message types (§4, RFC 2236).
const (
	igmpV1Report          = 0x12
	igmpV2Report          = 0x16
	igmpV2Leave           = 0x17
	igmpV3Report          = 0x22
	igmpChangeToInclude   = 3 // "I want no source": leave
	igmpChangeToExclude   = 4 // "I exclude no source": join, any source
	igmpModeIsExclude     = 2
	ipProtoIGMP           = 2
	sizeofIGMPv3RecordHdr = 8
)

// htons is the network-order form of a 16-bit protocol number, as AF_PACKET wants it.
func htons(v uint16) uint16 { return v<<8 | v>>8 }

// openCapture opens an AF_PACKET SOCK_DGRAM socket for IPv4 on one interface of the calling
// thread's namespace (packet(7)): it sees each IP packet the interface receives, headers
// included. It needs CAP_NET_RAW, which the lab has inside its own user namespace.
func openCapture(n *lab.Narrator, ifc *net.Interface) (int, error) {
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_IP)))
	if n.Sys(fd, err, "socket(AF_PACKET, SOCK_DGRAM, htons(ETH_P_IP))") != nil {
		return -1, fmt.Errorf("socket(AF_PACKET): %w", err)
	}
	sll := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_IP), Ifindex: ifc.Index}
	err = unix.Bind(fd, sll)
	if n.Sys(0, err, "bind(%d, {AF_PACKET, ETH_P_IP, if %d=%s})", fd, ifc.Index, ifc.Name) != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("bind(AF_PACKET): %w", err)
	}
	return fd, nil
}

// readIGMPRecords reads what the capture socket receives until it has been silent for quiet
// (at most 64 packets) and returns the IGMP group records of incoming packets.
func readIGMPRecords(fd int, quiet time.Duration) ([]igmpRecord, error) {
	var out []igmpRecord
	buf := make([]byte, 2048)
	for i := 0; i < 64; i++ {
		ready, err := waitReadable(fd, quiet)
		if err != nil || !ready {
			return out, err
		}
		size, from, err := unix.Recvfrom(fd, buf, unix.MSG_DONTWAIT)
		if err != nil {
			return out, fmt.Errorf("recvfrom(AF_PACKET): %w", err)
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
			continue // the capturing host's own reports
		}
		out = append(out, parseIGMPPacket(buf[:size])...)
	}
	return out, nil
}

// parseIGMPPacket extracts the group records of an IPv4 packet carrying IGMP (protocol 2), or
// nothing for any other packet.
func parseIGMPPacket(p []byte) []igmpRecord {
	if len(p) < 20 || p[0]>>4 != 4 || p[9] != ipProtoIGMP {
		return nil
	}
	ihl := int(p[0]&0x0f) * 4
	if len(p) < ihl+8 {
		return nil
	}
	m := p[ihl:]
	group := func(b []byte) netip.Addr { return netip.AddrFrom4([4]byte(b[:4])) }
	switch m[0] {
	case igmpV1Report, igmpV2Report:
		return []igmpRecord{{Kind: "join", Group: group(m[4:])}}
	case igmpV2Leave:
		return []igmpRecord{{Kind: "leave", Group: group(m[4:])}}
	case igmpV3Report:
	default:
		return nil
	}
	var out []igmpRecord
	count := int(binary.BigEndian.Uint16(m[6:]))
	r := m[8:]
	for i := 0; i < count && len(r) >= sizeofIGMPv3RecordHdr; i++ {
		rtype, aux, nsrc := r[0], int(r[1]), int(binary.BigEndian.Uint16(r[2:]))
		kind := fmt.Sprintf("record type %d", rtype)
		switch {
		case rtype == igmpChangeToExclude && nsrc == 0, rtype == igmpModeIsExclude && nsrc == 0:
			kind = "join"
		case rtype == igmpChangeToInclude && nsrc == 0:
			kind = "leave"
		}
		out = append(out, igmpRecord{Kind: kind, Group: group(r[4:])})
		next := sizeofIGMPv3RecordHdr + 4*nsrc + 4*aux
		if next > len(r) {
			break
		}
		r = r[next:]
	}
	return out
}

// wireReport lists, per action on host A, the IGMP records about the group host B saw.
type wireReport struct {
	Actions []string
	Seen    [][]igmpRecord
}

// stepIGMPOnTheWire: host B captures what arrives on its veth while two sockets on host A
// join the group on A's veth and then leave, one after the other.
func stepIGMPOnTheWire(n *lab.Narrator, h *twoHosts, l lesson) (wireReport, error) {
	var rep wireReport
	n.Step("host B captures IGMP while two sockets on host A join %s and leave", l.Group)
	var capture int
	err := h.onB(func() error {
		ifc, err := net.InterfaceByName(h.Link.PeerIf)
		if err != nil {
			return err
		}
		capture, err = openCapture(n, ifc)
		return err
	})
	if err != nil {
		return rep, err
	}
	defer unix.Close(capture)
	if _, err := readIGMPRecords(capture, quietLimit); err != nil { // whatever the link setup sent
		return rep, err
	}
	var fds [2]int
	open := [2]bool{}
	defer func() {
		for i, fd := range fds {
			if open[i] {
				unix.Close(fd)
			}
		}
	}()
	observe := func(action string) error {
		recs, err := readIGMPRecords(capture, quietLimit)
		if err != nil {
			return err
		}
		var mine []igmpRecord
		desc := "nothing"
		for _, r := range recs {
			if r.Group == l.Group {
				mine = append(mine, r)
			}
		}
		if len(mine) > 0 {
			desc = ""
			for i, r := range mine {
				if i > 0 {
					desc += ", "
				}
				desc += fmt.Sprintf("IGMP report: %s %s", r.Kind, r.Group)
			}
		}
		rep.Actions = append(rep.Actions, action)
		rep.Seen = append(rep.Seen, mine)
		n.Say("%s → host B saw %s", action, desc)
		return nil
	}
	for i := range fds {
		fd, err := openReceiver(n, receiverOptions{Port: l.Port, Group: l.Group, Iface: h.A()})
		if err != nil {
			return rep, err
		}
		fds[i], open[i] = fd, true
		if err := observe(fmt.Sprintf("join %d", i+1)); err != nil {
			return rep, err
		}
	}
	for i := range fds {
		if err := leaveGroup(n, fds[i], l.Group, h.A()); err != nil {
			return rep, err
		}
		if err := observe(fmt.Sprintf("leave %d", i+1)); err != nil {
			return rep, err
		}
	}
	n.Say("The link hears about the interface, not about sockets: one IGMPv3 report when the " +
		"first socket joins (\"change to exclude {}\": any source welcome) and one when the last " +
		"leaves (\"change to include {}\"). The joins and leaves in between only change the users " +
		"count in /proc/net/igmp. Reports like these are what a multicast router listens to. " +
		"(The lab sets IGMP's robustness variable, net.ipv4.igmp_qrv, to 1 instead of the " +
		"default 2, so each change is reported once, not repeated.)")
	return rep, nil
}
