//go:build linux

package main

import (
	"fmt"
	"net/netip"
	"strings"

	"golang.org/x/sys/unix"

	"socklab/internal/lab"
	"socklab/internal/sockdiag"
)

// B. The matrix: SO_REUSEADDR on the old listener × on the new listener × who closed first.

// cell is one experiment of the matrix.
type cell struct {
	OldReuse    bool // the listener that ran before (and whose child closed) set SO_REUSEADDR
	NewReuse    bool // the restarted listener sets SO_REUSEADDR
	ServerFirst bool // the server closed the connection first (else the client did)
}

// Name is the cell's subtest name, e.g. "old=reuse/new=plain/server-closes-first".
func (c cell) Name() string {
	word := func(b bool) string {
		if b {
			return "reuse"
		}
		return "plain"
	}
	who := "client-closes-first"
	if c.ServerFirst {
		who = "server-closes-first"
	}
	return "old=" + word(c.OldReuse) + "/new=" + word(c.NewReuse) + "/" + who
}

// allCells lists the eight cells in table order.
func allCells() []cell {
	var cells []cell
	for _, serverFirst := range []bool{true, false} {
		for _, old := range []bool{false, true} {
			for _, new := range []bool{false, true} {
				cells = append(cells, cell{OldReuse: old, NewReuse: new, ServerFirst: serverFirst})
			}
		}
	}
	return cells
}

// cellResult is what the kernel reported in one cell.
type cellResult struct {
	cell
	Server   netip.AddrPort  // the address both listeners asked for
	TimeWait sockdiag.Socket // the TIME_WAIT the close left (on the first closer's side)
	Restart  listenAttempt   // the new listener on the old port (already closed again)
	// StillListed says the TIME_WAIT was still in the kernel's table right after the restart.
	StillListed bool
}

// runCell runs one cell for real: old listener, one connection, the close in the given order,
// the old listener closed, then a new listener on the same address.
func runCell(n *lab.Narrator, c cell) (cellResult, error) {
	res := cellResult{cell: c}
	old := openListener(n, loopback0, c.OldReuse, false)
	if !old.OK() {
		return res, fmt.Errorf("%s: %w", old.Call, old.Err)
	}
	res.Server = old.Addr
	conn, err := connectAndAccept(n, old.FD, old.Addr)
	if err != nil {
		unix.Close(old.FD)
		return res, err
	}
	res.TimeWait, err = closeBoth(n, conn, c.ServerFirst)
	if err != nil {
		unix.Close(old.FD)
		return res, err
	}
	closeFD(n, old.FD)
	res.Restart = openListener(n, old.Addr, c.NewReuse, false)
	_, res.StillListed, err = findState(res.TimeWait, sockdiag.TimeWait)
	if res.Restart.OK() {
		closeFD(n, res.Restart.FD)
	}
	return res, err
}

// findState reports whether the socket with s's 4-tuple is listed in state want.
func findState(s sockdiag.Socket, want sockdiag.State) (sockdiag.Socket, bool, error) {
	got, found, err := sockdiag.Find(s.Local, s.Remote)
	return got, found && got.State == want, err
}

func partMatrix(d *lab.Demo) error {
	d.Step("eight restarts, each run for real on a fresh port")
	d.Say("Each row: a listener (with or without SO_REUSEADDR) accepts one connection; " +
		"one side closes first, the other follows; the listener closes (the server exits); " +
		"a new listener binds the same address. -v prints every system call.")
	quiet := lab.Quiet()
	if d.Verbose() {
		quiet = d.Narrator
	}
	var results []cellResult
	for _, c := range allCells() {
		r, err := runCell(quiet, c)
		if err != nil {
			return fmt.Errorf("cell %s: %w", c.Name(), err)
		}
		results = append(results, r)
	}
	var b strings.Builder
	writeMatrix(&b, results)
	d.Block("\n" + b.String()) // a blank line, then the table
	d.Say("The restart fails only where a TIME_WAIT sits on the server's own port and not " +
		"both listeners set SO_REUSEADDR: the TIME_WAIT remembers the option of the socket it " +
		"came from. Where it succeeds, the TIME_WAIT is still listed: SO_REUSEADDR lets bind() " +
		"share the port with it, it does not remove it.")
	return nil
}

// writeMatrix prints the matrix as a plain table of what the kernel answered.
func writeMatrix(b *strings.Builder, results []cellResult) {
	onOff := func(v bool) string {
		if v {
			return "on"
		}
		return "off"
	}
	fmt.Fprintf(b, "%-13s %-7s %-7s %-17s %-18s %s\n",
		"closed first", "old RA", "new RA", "TIME_WAIT on", "restart", "TW after")
	for _, r := range results {
		who, side := "client", fmt.Sprintf("client :%d", r.TimeWait.Local.Port())
		if r.ServerFirst {
			who, side = "server", fmt.Sprintf("server :%d", r.TimeWait.Local.Port())
		}
		after := "gone"
		if r.StillListed {
			after = "listed"
		}
		fmt.Fprintf(b, "%-13s %-7s %-7s %-17s %-18s %s\n",
			who, onOff(r.OldReuse), onOff(r.NewReuse), side, r.Restart.Result(), after)
	}
	fmt.Fprintln(b, "(RA = SO_REUSEADDR; restart = the new listener's bind/listen)")
}
