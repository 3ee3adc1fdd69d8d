//go:build linux

package main

import (
	"fmt"
	"net/netip"
	"time"

	"socklab/internal/lab"
	"socklab/internal/sockdiag"
)

// awaitTimeout bounds every wait for a state change. On loopback the changes take
// microseconds; the bound only matters on a badly overloaded machine or when the lesson is
// wrong, and then the part fails naming what the kernel showed instead.
const awaitTimeout = 5 * time.Second

// End is one end of a connection as the kernel reports it through sock_diag. Found is false
// when the kernel has no socket at all for that 4-tuple (it is gone).
type End struct {
	sockdiag.Socket
	Found bool
}

// String is the socket on one line, or "gone".
func (e End) String() string {
	if !e.Found {
		return "gone"
	}
	return e.Socket.String()
}

// Ends is the kernel's view of both ends of one connection at one moment.
type Ends struct{ Client, Server End }

// look asks the kernel for the socket with exactly this local and remote endpoint.
func look(local, remote netip.AddrPort) (End, error) {
	s, found, err := sockdiag.Find(local, remote)
	return End{Socket: s, Found: found}, err
}

// ends asks the kernel for both ends of c.
func (c *conn) ends() (Ends, error) {
	client, err := look(c.clientAddr, c.serverAddr)
	if err != nil {
		return Ends{}, err
	}
	server, err := look(c.serverAddr, c.clientAddr)
	return Ends{Client: client, Server: server}, err
}

// Gone is the "state" awaitEnds takes for an end the kernel no longer has at all.
const Gone sockdiag.State = 0

// awaitEnds polls the kernel until the client end is in state client and the server end in
// state server (Gone = no socket), or awaitTimeout passes; it returns what the kernel last
// showed, and an error naming the difference if the wait timed out. It polls sock_diag rather
// than sleeping: the kernel decides when the lesson moves on.
func (c *conn) awaitEnds(client, server sockdiag.State) (Ends, error) {
	return c.awaitEndsWhere(client, server, nil, "")
}

// awaitEndsWhere is awaitEnds with one more condition, also (described by what), that the
// ends must meet; nil means none.
func (c *conn) awaitEndsWhere(client, server sockdiag.State, also func(Ends) bool, what string) (Ends, error) {
	want := fmt.Sprintf("client %v, server %v", name(client), name(server))
	if also != nil {
		want += ", " + what
	}
	return awaitFunc(func() (Ends, bool, error) {
		e, err := c.ends()
		return e, err == nil && is(e.Client, client) && is(e.Server, server) && (also == nil || also(e)), err
	}, want)
}

// awaitFunc polls cond (lab.Poll: a short back-off), at most awaitTimeout.
func awaitFunc(cond func() (Ends, bool, error), want string) (Ends, error) {
	var e Ends
	var err error
	if lab.Poll(awaitTimeout, func() bool {
		var ok bool
		e, ok, err = cond()
		return ok
	}) {
		return e, nil
	}
	if err != nil {
		return e, fmt.Errorf("waiting for %s: %w", want, err)
	}
	return e, fmt.Errorf("after %v the kernel shows client %v, server %v; the lesson expects %s",
		awaitTimeout, e.Client, e.Server, want)
}

func is(e End, want sockdiag.State) bool {
	if want == Gone {
		return !e.Found
	}
	return e.Found && e.State == want
}

func name(s sockdiag.State) string {
	if s == Gone {
		return "gone"
	}
	return s.String()
}
