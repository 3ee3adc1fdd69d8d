//go:build linux

package sockdiag

import (
	"fmt"
	"io"
	"net/netip"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// StateName is the state as a table shows it: the kernel's TCP name, or UNCONN for an
// unconnected UDP socket (the kernel keeps those in CLOSE, and ss prints UNCONN).
func (s Socket) StateName() string {
	if s.Protocol == unix.IPPROTO_UDP && s.State == Close {
		return "UNCONN"
	}
	return s.State.String()
}

// TimerString describes the pending timer like ss -o, e.g. "timewait 59.8s", or "" when none.
func (s Socket) TimerString() string {
	if s.Timer == TimerNone {
		return ""
	}
	// Tenths of a second matter for retransmission timers (200 ms and up);
	// beyond ten seconds (TIME_WAIT's 60 s, keepalive's 7200 s) whole
	// seconds are what ss shows and keep the row within 80 columns.
	format := "%s %.1fs"
	if s.Expires >= 10*time.Second {
		format = "%s %.0fs"
	}
	str := fmt.Sprintf(format, s.Timer, s.Expires.Seconds())
	if s.Retransmits > 0 {
		str += fmt.Sprintf(" retrans %d", s.Retransmits)
	}
	return str
}

// String renders one socket on one line, e.g.
// "TIME_WAIT 0 0 127.0.0.1:9000 127.0.0.1:40000 timewait 60s no-fd".
func (s Socket) String() string {
	parts := []string{s.StateName(), fmt.Sprint(s.RecvQ), fmt.Sprint(s.SendQ),
		formatEndpoint(s.Local), formatEndpoint(s.Remote)}
	if t := s.TimerString(); t != "" {
		parts = append(parts, t)
	}
	if !s.HasFD() {
		parts = append(parts, "no-fd")
	}
	return strings.Join(parts, " ")
}

func formatEndpoint(ap netip.AddrPort) string {
	addr := ap.Addr()
	if addr.IsUnspecified() && ap.Port() == 0 {
		if addr.Is4() {
			return "0.0.0.0:*"
		}
		return "[::]:*"
	}
	return ap.String()
}

// SortForDisplay orders sockets so that a table reads naturally: by local port, then remote
// port, listeners first.
func SortForDisplay(socks []Socket) {
	sort.SliceStable(socks, func(i, j int) bool {
		a, b := socks[i], socks[j]
		if (a.State == Listen) != (b.State == Listen) {
			return a.State == Listen
		}
		if a.Local.Port() != b.Local.Port() {
			return a.Local.Port() < b.Local.Port()
		}
		return a.Remote.Port() < b.Remote.Port()
	})
}

// TableWidth is the terminal width WriteTable keeps to.
const TableWidth = 80

// WriteTable prints sockets in the spirit of `ss -tan -o -e`: state, Recv-Q, Send-Q, local and
// peer endpoints, the timer, and "no fd" where no descriptor holds the socket. Columns are
// as wide as their content. prefix starts every line (e.g. indentation). A row that would pass
// TableWidth columns (a retransmitting request socket, IPv4-mapped IPv6 addresses) puts its
// timer and fd note on the next line, under the Local column, instead of running off the edge.
func WriteTable(w io.Writer, prefix string, socks []Socket) {
	if len(socks) == 0 {
		fmt.Fprintf(w, "%s(no matching sockets in the kernel table)\n", prefix)
		return
	}
	rows := [][]string{{"State", "Recv-Q", "Send-Q", "Local", "Peer", "Timer/fd"}}
	for _, s := range socks {
		extra := s.TimerString()
		if !s.HasFD() {
			extra = strings.TrimSpace(extra + " no fd")
		}
		rows = append(rows, []string{s.StateName(), fmt.Sprint(s.RecvQ), fmt.Sprint(s.SendQ),
			formatEndpoint(s.Local), formatEndpoint(s.Remote), extra})
	}
	widths := make([]int, len(rows[0]))
	for _, r := range rows {
		for i, c := range r {
			widths[i] = max(widths[i], len(c))
		}
	}
	for _, r := range rows {
		var b strings.Builder
		b.WriteString(prefix)
		localAt := 0
		for i, c := range r[:5] {
			if i == 3 {
				localAt = b.Len()
			}
			if i == 1 || i == 2 { // queues right-aligned like ss
				fmt.Fprintf(&b, "%*s ", widths[i], c)
			} else {
				fmt.Fprintf(&b, "%-*s ", widths[i], c)
			}
		}
		line, extra := b.String(), r[5]
		if extra != "" && len(line)+len(extra) > TableWidth {
			fmt.Fprintln(w, strings.TrimRight(line, " "))
			line = prefix + strings.Repeat(" ", localAt-len(prefix))
		}
		fmt.Fprintln(w, strings.TrimRight(line+extra, " "))
	}
}
