//go:build linux

package main

import (
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"socklab/internal/lab"
	"socklab/internal/labtest"
)

func TestMain(m *testing.M) { labtest.Main(m, &program) }

// Every test uses its own group and port, so parallel tests never share a membership (the
// kernel's list is per interface) or a port (delivery is per port).
func testLesson(group string, port uint16) lesson {
	return lesson{Group: netip.MustParseAddr(group), Port: port}
}

var classicBytes = []byte("BROCAST TEST DATA\x00")

// A: two members both receive; a socket that did not join receives too while
// IP_MULTICAST_ALL is 1 (the default) and nothing once it is 0; a member that left keeps
// receiving while another socket keeps the interface in the group (IP_MULTICAST_ALL=1), stops
// once IP_MULTICAST_ALL is 0, and nobody receives after the last member left. The kernel's
// membership count follows every step, and the source is the pinned interface's address.
func TestGroupDeliveryFollowsMembership(t *testing.T) {
	t.Parallel()
	l := testLesson("239.5.0.1", 15001)
	rep, err := stepJoin(lab.Quiet(), l)
	require.NoError(t, err)
	assert.Equal(t, 0, rep.Before, "the group is not joined before the test")
	assert.Equal(t, 2, rep.Joined, "two member sockets")
	require.Len(t, rep.Rounds, 5)
	want := []struct {
		r1, r2, bystander, users int
	}{
		{1, 1, 1, 2}, // both joined; bystander with IP_MULTICAST_ALL=1 receives
		{1, 1, 0, 2}, // bystander IP_MULTICAST_ALL=0
		{1, 1, 0, 1}, // R1 left, IP_MULTICAST_ALL=1: still receives
		{0, 1, 0, 1}, // R1 IP_MULTICAST_ALL=0
		{0, 0, 0, 0}, // both left: lo is no longer a member
	}
	source := netip.AddrPortFrom(loopbackAddr, rep.Sender)
	for i, w := range want {
		r := rep.Rounds[i]
		assert.Equal(t, w.r1, r.Count("R1"), "round %q: R1", r.Title)
		assert.Equal(t, w.r2, r.Count("R2"), "round %q: R2", r.Title)
		assert.Equal(t, w.bystander, r.Count("bystander"), "round %q: bystander", r.Title)
		assert.Equal(t, w.users, r.Users, "round %q: members in /proc/net/igmp", r.Title)
		for name, ds := range r.Got {
			for _, d := range ds {
				assert.Equal(t, classicBytes, d.Payload, "round %q: %s payload", r.Title, name)
				assert.Equal(t, source, d.From, "round %q: %s source", r.Title, name)
			}
		}
	}
}

// B: /proc/net/igmp lists (interface, group) with a count of member sockets: 1, 2, 1 after a
// leave, gone after the last close; 224.0.0.1 is always there. Joining twice is EADDRINUSE,
// joining a unicast address EINVAL.
func TestMembershipListFollowsJoinAndLeave(t *testing.T) {
	t.Parallel()
	rep, err := stepIGMP(lab.Quiet(), testLesson("239.5.0.2", 15002))
	require.NoError(t, err)
	assert.Equal(t, 0, rep.Before)
	assert.Equal(t, 1, rep.OneJoined)
	assert.Equal(t, 2, rep.TwoJoined)
	assert.Equal(t, 1, rep.OneLeft)
	assert.Equal(t, 0, rep.Closed, "close() left the group")
	assert.GreaterOrEqual(t, rep.AllHosts, 1, "224.0.0.1 is joined by the kernel itself")
	assert.ErrorIs(t, rep.JoinTwice, unix.EADDRINUSE)
	assert.ErrorIs(t, rep.JoinUnicast, unix.EINVAL)
}

func TestParseIGMP(t *testing.T) {
	text := "Idx\tDevice    : Count Querier\tGroup    Users Timer\tReporter\n" +
		"1\tlo        :     2      V3\n" +
		"\t\t\t\t640000E0     2 0:00000000\t\t0\n" +
		"\t\t\t\t010000E0     1 0:00000000\t\t0\n" +
		"4\teth0      :     1      V3\n" +
		"\t\t\t\t010000E0     1 0:00000000\t\t0\n"
	list, err := parseIGMP(text)
	require.NoError(t, err)
	assert.Equal(t, []membership{
		{"lo", netip.MustParseAddr("224.0.0.100"), 2},
		{"lo", netip.MustParseAddr("224.0.0.1"), 1},
		{"eth0", netip.MustParseAddr("224.0.0.1"), 1},
	}, list)
	_, err = parseIGMP("header\n\t\t\tZZZ 1\n")
	assert.Error(t, err)
}

// On loopback neither IP_MULTICAST_LOOP=0 nor TTL 0 stops delivery: one copy each time, and
// the TTL the member sees is the one sent.
func TestLoopAndTTLZeroDoNotApplyOnLoopback(t *testing.T) {
	t.Parallel()
	rep, err := stepLoopbackLoop(lab.Quiet(), testLesson("239.5.0.3", 15003))
	require.NoError(t, err)
	require.Equal(t, 1, rep.LoopOff.Count("member"), "loop off: still one copy")
	assert.Equal(t, 1, rep.LoopOff.Got["member"][0].TTL)
	require.Equal(t, 1, rep.TTLZero.Count("member"), "TTL 0: still delivered on lo")
	assert.Equal(t, 0, rep.TTLZero.Got["member"][0].TTL)
}

// The sender refuses to send when IP_MULTICAST_IF cannot be set: with an address no local
// interface has, setsockopt fails with EADDRNOTAVAIL and no socket is returned.
func TestSenderRefusesWhenInterfaceCannotBePinned(t *testing.T) {
	t.Parallel()
	fd, err := openSender(lab.Quiet(), senderOptions{Iface: netip.MustParseAddr("192.0.2.99"), TTL: 1, Loop: true})
	assert.Equal(t, -1, fd)
	assert.ErrorIs(t, err, ErrNotPinned)
	assert.ErrorIs(t, err, unix.EADDRNOTAVAIL)
}

// Broadcast on loopback: EACCES without SO_BROADCAST; with it, sockets bound to 0.0.0.0 and to
// 127.255.255.255 receive, the one bound to 127.0.0.1 does not.
func TestBroadcastNeedsSOBroadcastAndReachesWildcardBinds(t *testing.T) {
	t.Parallel()
	rep, err := stepBroadcastLoopback(lab.Quiet(), 15004)
	require.NoError(t, err)
	assert.ErrorIs(t, rep.WithoutOption, unix.EACCES)
	assert.Equal(t, 1, rep.Got.Count("0.0.0.0"))
	assert.Equal(t, 1, rep.Got.Count("127.255.255.255"))
	assert.Equal(t, 0, rep.Got.Count("127.0.0.1"))
	for _, d := range rep.Got.Got["0.0.0.0"] {
		assert.Equal(t, netip.AddrPortFrom(loopbackAddr, rep.Sender), d.From)
		assert.Equal(t, classicBytes, d.Payload)
	}
}

// twoHostsFor makes host B and the veth pair for a test, or skips without a namespace.
func twoHostsFor(t *testing.T) *twoHosts {
	t.Helper()
	labtest.NeedPrivate(t)
	h, err := newTwoHosts(lab.Quiet())
	require.NoError(t, err)
	t.Cleanup(h.Close)
	return h
}

// C: between two hosts, TTL 1 reaches both members; TTL 0 only the sending host's; loop off
// only the other host's; and TTL 0 crosses the link (arriving with TTL 0) when the sending
// host has no member of the group on that interface.
func TestTTLAndLoopBetweenTwoHosts(t *testing.T) {
	t.Parallel()
	h := twoHostsFor(t)
	rep, err := stepTTLAndLoop(lab.Quiet(), h, testLesson("239.5.0.4", 15005))
	require.NoError(t, err)
	require.Len(t, rep.Rounds, 4)
	want := []struct{ a, b, ttl int }{
		{1, 1, 1}, // TTL 1
		{1, 0, 0}, // TTL 0: host A only
		{0, 1, 1}, // loop off: host B only
		{0, 1, 0}, // TTL 0, no member on A: crosses the link
	}
	for i, w := range want {
		r := rep.Rounds[i]
		assert.Equal(t, w.a, r.Count("A"), "round %q: host A", r.Title)
		assert.Equal(t, w.b, r.Count("B"), "round %q: host B", r.Title)
		for name, ds := range r.Got {
			for _, d := range ds {
				assert.Equal(t, w.ttl, d.TTL, "round %q: %s TTL", r.Title, name)
				assert.Equal(t, h.A(), d.From.Addr(), "round %q: %s source", r.Title, name)
				assert.Equal(t, classicBytes, d.Payload)
			}
		}
	}
	assert.Equal(t, 1, rep.Rounds[0].Users, "one member on A's veth during TTL 1")
	assert.Equal(t, 0, rep.Rounds[3].Users, "no member on A's veth in the last round")
}

// IP_MULTICAST_LOOP on a receiving socket changes nothing: the sender's option decides.
func TestReceiverLoopOptionChangesNothing(t *testing.T) {
	t.Parallel()
	h := twoHostsFor(t)
	rep, err := stepReceiverLoop(lab.Quiet(), h, testLesson("239.5.0.5", 15006))
	require.NoError(t, err)
	assert.Equal(t, 1, rep.Got.Count("A"))
}

// A subnet broadcast reaches sockets bound to 0.0.0.0 on both hosts (the sender's own despite
// IP_MULTICAST_LOOP=0) and the one bound to the broadcast address, not one bound to B's
// unicast address.
func TestSubnetBroadcastReachesBothHosts(t *testing.T) {
	t.Parallel()
	h := twoHostsFor(t)
	rep, err := stepBroadcastVeth(lab.Quiet(), h, 15007)
	require.NoError(t, err)
	assert.Equal(t, 1, rep.Got.Count("A 0.0.0.0"))
	assert.Equal(t, 1, rep.Got.Count("B 0.0.0.0"))
	assert.Equal(t, 0, rep.Got.Count("B 192.0.2.2"))
	assert.Equal(t, 1, rep.Got.Count("B 192.0.2.255"))
	for name, ds := range rep.Got.Got {
		for _, d := range ds {
			assert.Equal(t, netip.AddrPortFrom(h.A(), rep.Sender), d.From, name)
		}
	}
}

// waitMembers waits until the kernel lists want members of group on lo.
func waitMembers(t *testing.T, group netip.Addr, want int) {
	t.Helper()
	labtest.WaitFor(t, 5*time.Second, "members of "+group.String()+" on lo", func() (bool, string) {
		got := usersNow("lo", group)
		return got == want, "members: " + itoa(got)
	})
}

func itoa(i int) string { return lab.Ret(i, nil) }

// E: IPv6 multicast on the veth pair: B joins ff12::8888 by interface index and receives the
// datagram A sends with IPV6_MULTICAST_IF set to its veth's index; the source is A's
// link-local address, chosen by the kernel; /proc/net/igmp6 lists the membership.
func TestIPv6MulticastOnVeth(t *testing.T) {
	t.Parallel()
	h := twoHostsFor(t)
	rep, err := stepIPv6(lab.Quiet(), h, 15008)
	require.NoError(t, err)
	assert.Equal(t, 1, rep.Users)
	require.Equal(t, 1, rep.Got.Count("B"))
	assert.Equal(t, classicBytes, rep.Got.Got["B"][0].Payload)
	assert.True(t, rep.LinkA.IsLinkLocalUnicast())
	assert.Equal(t, rep.LinkA, rep.Sender.Addr().WithZone(""), "source: A's link-local address")
}

// F: the x/net/ipv4 way (ipv4.PacketConn: JoinGroup and SetMulticastInterface, both by
// index) joins and sends like the classic one, and its setters reach the kernel (TTL 1, loop
// off, no interface address stored), but the source address differs: pinned by address the
// datagram carries that address; pinned by index the kernel picks the interface's primary
// address, unless the socket is bound.
func TestPinByIndexLetsKernelChooseSource(t *testing.T) {
	t.Parallel()
	h := twoHostsFor(t)
	rep, err := stepXNet(lab.Quiet(), h, testLesson("239.5.0.6", 15009))
	require.NoError(t, err)
	assert.Equal(t, 1, rep.Users, "JoinGroup (MCAST_JOIN_GROUP) is a membership like any other")
	assert.Equal(t, 1, rep.TTL, "getsockopt IP_MULTICAST_TTL after SetMulticastTTL(1)")
	assert.Equal(t, 0, rep.Loop, "getsockopt IP_MULTICAST_LOOP after SetMulticastLoopback(false)")
	assert.Equal(t, netip.IPv4Unspecified(), rep.IfaceAddr, "by index: no address stored")
	require.True(t, rep.DeliveredBoth, "B received all three datagrams")
	assert.Equal(t, rep.Secondary, rep.ByAddress.Addr(), "pinned by address: that address")
	assert.Equal(t, rep.Primary, rep.ByIndex.Addr(), "pinned by index: the primary address")
	assert.Equal(t, rep.Secondary, rep.BoundByIndex.Addr(), "bound: the bound address")
}

// On a link the kernel reports the interface's membership, not each socket's: host B sees one
// IGMP "join" record for the group when the first socket on A joins, none for the second join
// or the first leave, and one "leave" record when the last socket leaves.
func TestIGMPReportsFirstJoinAndLastLeaveOnly(t *testing.T) {
	t.Parallel()
	h := twoHostsFor(t)
	l := testLesson("239.5.0.7", 15010)
	rep, err := stepIGMPOnTheWire(lab.Quiet(), h, l)
	require.NoError(t, err)
	require.Equal(t, []string{"join 1", "join 2", "leave 1", "leave 2"}, rep.Actions)
	assert.Equal(t, []igmpRecord{{"join", l.Group}}, rep.Seen[0], "first join")
	assert.Empty(t, rep.Seen[1], "second join")
	assert.Empty(t, rep.Seen[2], "first leave")
	assert.Equal(t, []igmpRecord{{"leave", l.Group}}, rep.Seen[3], "last leave")
}

func TestParseIGMPv3Report(t *testing.T) {
	ip := []byte{0x46, 0, 0, 40, 0, 0, 0, 0, 1, ipProtoIGMP, 0, 0, 192, 0, 2, 1, 224, 0, 0, 22, 0x94, 4, 0, 0}
	igmp := []byte{igmpV3Report, 0, 0, 0, 0, 0, 0, 2,
		igmpChangeToExclude, 0, 0, 0, 224, 0, 0, 100,
		igmpChangeToInclude, 0, 0, 1, 239, 1, 1, 1, 10, 0, 0, 1}
	got := parseIGMPPacket(append(ip, igmp...))
	assert.Equal(t, []igmpRecord{
		{"join", netip.MustParseAddr("224.0.0.100")},
		{"record type 3", netip.MustParseAddr("239.1.1.1")},
	}, got)
	assert.Nil(t, parseIGMPPacket([]byte{0x45, 0, 0, 20, 0, 0, 0, 0, 1, 17}))
}
