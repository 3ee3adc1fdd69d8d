//go:build linux

package main

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"

	"socklab/internal/lab"
)

// membership is one line of the kernel's multicast membership list: an interface has joined a
// group on behalf of Users sockets (or of the kernel itself, for 224.0.0.1).
type membership struct {
	Iface string
	Group netip.Addr
	Users int
}

// igmpPath is the membership list of the calling thread's network namespace. /proc/net is
// /proc/self/net, the *main thread's* namespace; a netlab host runs on another thread, so the
// chapter always reads through thread-self (proc(5)).
const igmpPath = "/proc/thread-self/net/igmp"

// readIGMP returns the kernel's IPv4 membership list (net/ipv4/igmp.c, igmp_mc_seq_show) for
// the calling thread's namespace.
func readIGMP() ([]membership, error) {
	runtime.LockOSThread() // open and read on one thread, so "thread-self" is one namespace
	defer runtime.UnlockOSThread()
	b, err := os.ReadFile(igmpPath)
	if err != nil {
		return nil, err
	}
	return parseIGMP(string(b))
}

// parseIGMP reads the format
//
//	Idx	Device    : Count Querier	Group    Users Timer	Reporter
//	1	lo        :     1      V3
//					010000E0     1 0:00000000		0
//
// where a device line is followed by one indented line per group. The group is printed with
// %08X from the network-order 32-bit value as the CPU holds it, so its bytes are in native
// (little-endian on x86) order: 010000E0 is 224.0.0.1.
func parseIGMP(text string) ([]membership, error) {
	var out []membership
	iface := ""
	sc := bufio.NewScanner(strings.NewReader(text))
	for line := 0; sc.Scan(); line++ {
		raw := sc.Text()
		f := strings.Fields(raw)
		if line == 0 || len(f) == 0 {
			continue // header
		}
		if !strings.HasPrefix(raw, "\t") { // a device line: "1 lo : 1 V3"
			if len(f) < 2 {
				return nil, fmt.Errorf("igmp: bad device line %q", raw)
			}
			iface = f[1]
			continue
		}
		if len(f) < 2 || iface == "" {
			return nil, fmt.Errorf("igmp: bad group line %q", raw)
		}
		v, err := strconv.ParseUint(f[0], 16, 32)
		if err != nil {
			return nil, fmt.Errorf("igmp: bad group %q: %v", f[0], err)
		}
		var a [4]byte
		binary.NativeEndian.PutUint32(a[:], uint32(v))
		users, err := strconv.Atoi(f[1])
		if err != nil {
			return nil, fmt.Errorf("igmp: bad users %q: %v", f[1], err)
		}
		out = append(out, membership{Iface: iface, Group: netip.AddrFrom4(a), Users: users})
	}
	return out, sc.Err()
}

// usersOf is how many sockets the kernel counts as members of group on iface (0 = the
// interface has not joined).
func usersOf(list []membership, iface string, group netip.Addr) int {
	for _, m := range list {
		if m.Iface == iface && m.Group == group {
			return m.Users
		}
	}
	return 0
}

// showIGMP prints the membership list of the calling thread's namespace as the kernel has it,
// one line per interface: group (number of member sockets).
func showIGMP(n *lab.Narrator, title string) []membership {
	list, err := readIGMP()
	if err != nil {
		n.Say("%s: cannot read %s: %v", title, igmpPath, err)
		return nil
	}
	n.Say("%s (%s):", title, igmpPath)
	var ifaces []string
	groups := map[string][]string{}
	for _, m := range list {
		if _, seen := groups[m.Iface]; !seen {
			ifaces = append(ifaces, m.Iface)
		}
		groups[m.Iface] = append(groups[m.Iface], fmt.Sprintf("%s (users %d)", m.Group, m.Users))
	}
	for _, iface := range ifaces {
		n.Result("%s: %s", iface, strings.Join(groups[iface], ", "))
	}
	return list
}
