//go:build linux

package capture

import (
	"net/netip"
	"time"

	"socklab/internal/sockdiag"
)

// KernelStates asks the kernel for the TCP state of both ends of the connection between client
// and server (sock_diag, matched on the full 4-tuple, as ss does) and returns them as notes
// stamped now, ready for ASCII and Mermaid. An end the kernel no longer lists has no TCP control
// block left and is written "CLOSED". Call it after each step of a lesson; the diagram shows
// only the changes.
func KernelStates(client, server netip.AddrPort) ([]Note, error) {
	var notes []Note
	for _, end := range []struct {
		side          Side
		local, remote netip.AddrPort
	}{{Client, client, server}, {Server, server, client}} {
		s, found, err := sockdiag.Find(end.local, end.remote)
		if err != nil {
			return nil, err
		}
		text := "CLOSED"
		if found {
			text = s.State.String()
		}
		notes = append(notes, Note{Time: time.Now(), Side: end.side, Text: text})
	}
	return notes, nil
}
