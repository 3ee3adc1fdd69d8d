//go:build linux

package main

import (
	"fmt"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"

	"socklab/internal/lab"
)

// lesson names the group and port a step uses: the course's defaults in the demo, distinct
// ones per test, so that parallel tests never share a membership or a port.
type lesson struct {
	Group netip.Addr
	Port  uint16
}

// classic is the course's group and port, used by the demo.
var classic = lesson{Group: netip.MustParseAddr(defaultGroup), Port: defaultPort}

// To is the destination of the lesson's datagrams.
func (l lesson) To() netip.AddrPort { return netip.AddrPortFrom(l.Group, l.Port) }

// socketSet is a few named sockets whose deliveries a step compares.
type socketSet struct {
	names []string
	fds   map[string]int
}

func newSocketSet() *socketSet { return &socketSet{fds: map[string]int{}} }

func (s *socketSet) add(name string, fd int) {
	s.names = append(s.names, name)
	s.fds[name] = fd
}

// closeAll closes every socket of the set, quietly (the lesson's closes are narrated where
// they matter).
func (s *socketSet) closeAll() {
	for _, name := range s.names {
		unix.Close(s.fds[name])
	}
}

// round is what each socket of a set received after one send, and what the kernel's
// membership list said at the time.
type round struct {
	Title string
	Got   map[string][]datagram
	Users int // members of the lesson's group on the sender's interface (/proc/net/igmp)
}

// Count is how many datagrams the named socket received.
func (r round) Count(name string) int { return len(r.Got[name]) }

// sendAndCollect sends one datagram from sender and gathers what every socket of the set
// received, then prints a one-line summary.
func sendAndCollect(n *lab.Narrator, title string, sender int, payload []byte, to netip.AddrPort, set *socketSet) (round, error) {
	if err := sendDatagram(n, sender, payload, to); err != nil {
		return round{Title: title, Got: map[string][]datagram{}}, err
	}
	return gather(n, title, set)
}

// gather reads what every socket of the set received after a send, and prints a one-line
// summary.
func gather(n *lab.Narrator, title string, set *socketSet) (round, error) {
	r := round{Title: title, Got: map[string][]datagram{}}
	var fds []int
	for _, name := range set.names {
		fds = append(fds, set.fds[name])
	}
	byFD, err := collect(n, fds, quietLimit)
	if err != nil {
		return r, err
	}
	summary := ""
	for _, name := range set.names {
		r.Got[name] = byFD[set.fds[name]]
		summary += fmt.Sprintf("  %s: %d", name, len(r.Got[name]))
	}
	n.Say("received —%s (none within %v counts as none)", summary, quietLimit)
	return r, nil
}

// loopbackSender opens the chapter's standard sender: pinned to loopback, TTL 1, loop on.
func loopbackSender(n *lab.Narrator) (int, error) {
	return openSender(n, senderOptions{Iface: loopbackAddr, TTL: 1, Loop: true})
}

// localPort is the port getsockname reports: after the first sendto, the ephemeral port the
// kernel bound the sender to.
func localPort(fd int) uint16 {
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return 0
	}
	return lab.AddrPortOf(sa).Port()
}

// ---------------------------------------------------------------------------------------------
// A. Joining a group.

// joinReport is what part A observed.
type joinReport struct {
	Before int     // members of the group on lo before anyone joined
	Joined int     // ... after the two receivers joined
	Sender uint16  // the sender's ephemeral port, from getsockname
	Rounds []round // one per send, in order
}

// stepJoin: two receivers join the group on loopback and a bystander binds the same port
// without joining; one sender sends a datagram after each change: the bystander turns
// IP_MULTICAST_ALL off, R1 leaves, R1 turns IP_MULTICAST_ALL off, R2 leaves.
func stepJoin(n *lab.Narrator, l lesson) (joinReport, error) {
	var rep joinReport
	// Sockets of an earlier run on this group are released once no forked child holds them.
	rep.Before = waitUsers("lo", l.Group, 0, 2*time.Second)
	n.Step("R1 and R2 join %s on lo; a bystander binds port %d, no join", l.Group, l.Port)
	set := newSocketSet()
	defer set.closeAll()
	for _, name := range []string{"R1", "R2"} {
		fd, err := openReceiver(n, receiverOptions{Port: l.Port, Group: l.Group, Iface: loopbackAddr})
		if err != nil {
			return rep, err
		}
		set.add(name, fd)
	}
	fd, err := openReceiver(n, receiverOptions{Port: l.Port})
	if err != nil {
		return rep, err
	}
	set.add("bystander", fd)
	rep.Joined = usersOf(showIGMP(n, "the kernel's membership list"), "lo", l.Group)
	n.Say("lo is now a member of %s on behalf of %d sockets. A group address is a "+
		"destination only: the receivers bound 0.0.0.0:%d and asked the kernel to accept the "+
		"group on one interface.", l.Group, rep.Joined, l.Port)

	n.Step("a sender pins loopback and sends one datagram to %s", l.To())
	sender, err := loopbackSender(n)
	if err != nil {
		return rep, err
	}
	defer unix.Close(sender)
	payload := nulTerminated(defaultMessage)
	send := func(title string) error {
		r, err := sendAndCollect(n, title, sender, payload, l.To(), set)
		r.Users = usersNow("lo", l.Group)
		rep.Rounds = append(rep.Rounds, r)
		return err
	}
	if err := send("both joined"); err != nil {
		return rep, err
	}
	rep.Sender = localPort(sender)
	n.Say("Both members got the datagram, from 127.0.0.1:%d — the address of the interface "+
		"IP_MULTICAST_IF pinned, and the port the kernel bound the sender to at its first "+
		"sendto (getsockname says %d). The bystander got it too: IP_MULTICAST_ALL is 1 by "+
		"default (ip(7)), so a socket bound to the port receives every group this host has "+
		"joined on any socket's behalf.", rep.Sender, rep.Sender)

	n.Step("the bystander turns IP_MULTICAST_ALL off")
	if err := setInt(n, set.fds["bystander"], unix.IPPROTO_IP, unix.IP_MULTICAST_ALL, 0, "IPPROTO_IP", "IP_MULTICAST_ALL"); err != nil {
		return rep, err
	}
	if err := send("bystander IP_MULTICAST_ALL=0"); err != nil {
		return rep, err
	}
	n.Say("Now only the sockets that joined receive: the bystander gets nothing.")

	n.Step("R1 leaves the group with IP_DROP_MEMBERSHIP")
	if err := leaveGroup(n, set.fds["R1"], l.Group, loopbackAddr); err != nil {
		return rep, err
	}
	if err := send("R1 left"); err != nil {
		return rep, err
	}
	n.Say("R1 still receives! R2 keeps lo in the group, and R1, bound to the port with " +
		"IP_MULTICAST_ALL still 1, is treated like the bystander was.")

	n.Step("R1 turns IP_MULTICAST_ALL off as well")
	if err := setInt(n, set.fds["R1"], unix.IPPROTO_IP, unix.IP_MULTICAST_ALL, 0, "IPPROTO_IP", "IP_MULTICAST_ALL"); err != nil {
		return rep, err
	}
	if err := send("R1 left, IP_MULTICAST_ALL=0"); err != nil {
		return rep, err
	}
	n.Say("Now R1 has stopped receiving; R2 alone gets the group.")

	n.Step("R2 leaves: lo leaves the group")
	if err := leaveGroup(n, set.fds["R2"], l.Group, loopbackAddr); err != nil {
		return rep, err
	}
	showIGMP(n, "the kernel's membership list")
	if err := send("both left"); err != nil {
		return rep, err
	}
	n.Say("With no member left the interface drops the group's datagrams before any socket " +
		"lookup: nobody receives, whatever IP_MULTICAST_ALL says.")
	return rep, nil
}

// waitUsers polls the membership list until group on iface has want members or timeout
// passes, and returns the last count seen.
func waitUsers(iface string, group netip.Addr, want int, timeout time.Duration) int {
	var got int
	lab.Poll(timeout, func() bool { got = usersNow(iface, group); return got == want })
	return got
}

// usersNow is the number of members of group on iface in the calling thread's namespace.
func usersNow(iface string, group netip.Addr) int {
	list, err := readIGMP()
	if err != nil {
		return -1
	}
	return usersOf(list, iface, group)
}

func partJoin(d *lab.Demo) error {
	_, err := stepJoin(d.Narrator, classic)
	return err
}

// ---------------------------------------------------------------------------------------------
// B. The membership list.

// igmpReport is the group's member count on lo at each point of part B, and the errors the
// kernel gave to two wrong joins.
type igmpReport struct {
	Before, OneJoined, TwoJoined, OneLeft, Closed int
	AllHosts                                      int   // members of 224.0.0.1 on lo (the kernel's own)
	JoinTwice                                     error // IP_ADD_MEMBERSHIP of a group already joined
	JoinUnicast                                   error // IP_ADD_MEMBERSHIP of a non-multicast address
}

// stepIGMP follows the kernel's membership list through join, second join, leave and close.
func stepIGMP(n *lab.Narrator, l lesson) (igmpReport, error) {
	var rep igmpReport
	n.Step("the membership list before anyone joins %s", l.Group)
	rep.Before = waitUsers("lo", l.Group, 0, 2*time.Second) // see stepJoin
	list := showIGMP(n, "the kernel's membership list")
	rep.AllHosts = usersOf(list, "lo", netip.MustParseAddr("224.0.0.1"))
	n.Say("Every multicast-capable interface is always a member of 224.0.0.1 (all hosts); the "+
		"kernel joins it itself. %s is not listed.", l.Group)

	n.Step("one socket joins, then a second")
	a, err := openReceiver(n, receiverOptions{Port: l.Port, Group: l.Group, Iface: loopbackAddr})
	if err != nil {
		return rep, err
	}
	aOpen := true
	defer func() {
		if aOpen {
			unix.Close(a)
		}
	}()
	rep.OneJoined = usersOf(showIGMP(n, "after one join"), "lo", l.Group)
	b, err := openReceiver(n, receiverOptions{Port: l.Port, Group: l.Group, Iface: loopbackAddr})
	if err != nil {
		return rep, err
	}
	bOpen := true
	defer func() {
		if bOpen {
			unix.Close(b)
		}
	}()
	rep.TwoJoined = usersOf(showIGMP(n, "after two joins"), "lo", l.Group)
	n.Say("One line per (interface, group), with a count of member sockets: on a real link " +
		"the kernel reports the membership with IGMP (组管理协议) once, when the first socket " +
		"joins, however many sockets join after it.")

	n.Step("two mistakes: joining the same group twice, joining a unicast address")
	rep.JoinTwice = joinGroup(n, a, l.Group, loopbackAddr)
	rep.JoinUnicast = joinGroup(n, a, netip.MustParseAddr("127.0.0.1"), loopbackAddr)
	n.Say("A socket can hold each (group, interface) once; and only 224.0.0.0/4 can be joined.")

	n.Step("the first socket leaves, the second just closes")
	if err := leaveGroup(n, a, l.Group, loopbackAddr); err != nil {
		return rep, err
	}
	rep.OneLeft = usersOf(showIGMP(n, "after IP_DROP_MEMBERSHIP"), "lo", l.Group)
	closeFD(n, b)
	bOpen = false
	// The socket is released when its last reference goes; a child process being forked
	// elsewhere in this program may hold one for a moment, so wait (at most 2 s) for it.
	rep.Closed = waitUsers("lo", l.Group, 0, 2*time.Second)
	showIGMP(n, "after close")
	n.Say("close() drops a socket's memberships too (the kernel's ip_mc_drop_socket): a "+
		"receiver that crashes does not leave its group joined. %s is gone from lo.", l.Group)
	closeFD(n, a)
	aOpen = false
	return rep, nil
}

func partIGMP(d *lab.Demo) error {
	if _, err := stepIGMP(d.Narrator, classic); err != nil {
		return err
	}
	if !d.NeedPrivate("IGMP reports on a veth pair") {
		return nil
	}
	h, err := newTwoHosts(d.Narrator)
	if err != nil {
		return err
	}
	defer h.Close()
	_, err = stepIGMPOnTheWire(d.Narrator, h, classic)
	return err
}
