//go:build linux

package capture

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Note is an observation of one end's kernel state (or anything short) made by the caller, for
// example sockdiag's state right after a system call returned (see KernelStates). A diagram
// writes it beside the last arrow recorded at or before Time, on the side it belongs to, and
// only where it changed: a note repeating the previous text of its side is left out, so a caller
// can simply record both states after every step.
type Note struct {
	Time time.Time
	Side Side
	// Text is at most NoteWidth characters (every TCP state name fits); longer text is cut.
	Text string
}

// Diagram geometry: every line is at most DiagramWidth characters, so the diagram fits an
// 80-column terminal even indented by four spaces like the narration (lab.Width is 78).
const (
	DiagramWidth = 74
	// NoteWidth is the width of the state column on each side ("ESTABLISHED").
	NoteWidth = 11
	timeWidth = 8
	// arrowWidth is what is left between the two lifelines.
	arrowWidth = DiagramWidth - timeWidth - 1 - NoteWidth - 1 - 2 - 1 - NoteWidth
)

// row is one line of the diagram body: an optional arrow and optional notes on either side, or
// a label too long for its arrow, written across the lifelines.
type row struct {
	time        string
	left, right string
	arrow       string // the full arrowWidth characters between the lifelines, or "" for none
	label       string // a whole line of label instead of lifelines
}

// ASCII draws the conversation as a sequence diagram: time in milliseconds since the first
// segment, the client's lifeline on the left and the server's on the right, one arrow per
// segment labelled with its flags and relative seq/ack (and len when there is payload), and
// the notes beside the arrows. Every line is at most DiagramWidth (74) characters:
//
//	   ms  client 127.0.0.1:41734                      server 127.0.0.1:34209
//	0.000              |-- SYN seq=0 ------------------------->|
//	0.015              |<-------------------- SYN,ACK seq=0 ack=1 --|
func (c *Conversation) ASCII(notes ...Note) string {
	var b strings.Builder
	left := "client " + c.Client.String()
	right := "server " + c.Server.String()
	lead := strings.Repeat(" ", timeWidth-2) + "ms  "
	if len(lead)+len(left)+2+len(right) <= DiagramWidth {
		b.WriteString(lead + left + strings.Repeat(" ", DiagramWidth-len(lead)-len(left)-len(right)) + right + "\n")
	} else { // long IPv6 addresses: one line each
		b.WriteString(lead + left + "\n")
		b.WriteString(strings.Repeat(" ", DiagramWidth-len(right)) + right + "\n")
	}
	for _, r := range c.rows(notes) {
		b.WriteString(r.render() + "\n")
	}
	return b.String()
}

func (r row) render() string {
	if r.label != "" {
		return strings.Repeat(" ", timeWidth+1) + r.label
	}
	arrow := r.arrow
	if arrow == "" {
		arrow = strings.Repeat(" ", arrowWidth)
	}
	line := fmt.Sprintf("%*s %-*s |%s| %s", timeWidth, r.time, NoteWidth, r.left, arrow, r.right)
	return strings.TrimRight(line, " ")
}

// rows lays out arrows and notes. A label too long for the arrow goes on a line of its own
// just above a bare arrow.
func (c *Conversation) rows(notes []Note) []row {
	var rows []row
	var t0 time.Time
	if len(c.Segments) > 0 {
		t0 = c.Segments[0].Time
	}
	// Notes before the first segment come first, on lines without arrows.
	attached := make([][]Note, len(c.Segments))
	var before []Note
	for _, n := range changes(notes) {
		i := -1
		for j, s := range c.Segments {
			if !s.Time.After(n.Time) {
				i = j
			}
		}
		if i < 0 {
			before = append(before, n)
		} else {
			attached[i] = append(attached[i], n)
		}
	}
	rows = appendNotes(rows, row{}, before)
	for i, s := range c.Segments {
		label := s.Label()
		r := row{time: formatMillis(s.Time.Sub(t0))}
		if len(label)+6 > arrowWidth {
			for _, l := range wrapLabel(label, DiagramWidth-timeWidth-1) {
				rows = append(rows, row{label: l})
			}
			label = ""
		}
		r.arrow = drawArrow(label, s.From == Client)
		rows = appendNotes(rows, r, attached[i])
	}
	return rows
}

// appendNotes puts the first note of each side on r and the rest on extra lines below it.
func appendNotes(rows []row, r row, notes []Note) []row {
	var left, right []string
	for _, n := range notes {
		text := n.Text
		if len(text) > NoteWidth {
			text = text[:NoteWidth]
		}
		if n.Side == Client {
			left = append(left, text)
		} else {
			right = append(right, text)
		}
	}
	if r.arrow == "" && len(left) == 0 && len(right) == 0 {
		return rows
	}
	for first := true; first || len(left) > 0 || len(right) > 0; first = false {
		if !first {
			r = row{}
		}
		if len(left) > 0 {
			r.left, left = left[0], left[1:]
		}
		if len(right) > 0 {
			r.right, right = right[0], right[1:]
		}
		rows = append(rows, r)
	}
	return rows
}

// drawArrow is "-- LABEL ------>" left to right, or "<------ LABEL --" right to left.
func drawArrow(label string, toRight bool) string {
	if label != "" {
		label = " " + label + " "
	}
	fill := strings.Repeat("-", arrowWidth-len(label)-3)
	if toRight {
		return "--" + label + fill + ">"
	}
	return "<" + fill + label + "--"
}

// wrapLabel centres a label in width characters, breaking it at spaces if it is longer.
func wrapLabel(label string, width int) []string {
	var lines []string
	for len(label) > width {
		cut := strings.LastIndex(label[:width+1], " ")
		if cut <= 0 {
			cut = width
		}
		lines = append(lines, label[:cut])
		label = strings.TrimLeft(label[cut:], " ")
	}
	lines = append(lines, label)
	for i, l := range lines {
		lines[i] = strings.Repeat(" ", (width-len(l))/2) + l
	}
	return lines
}

// formatMillis fits a duration into timeWidth characters as milliseconds.
func formatMillis(d time.Duration) string {
	ms := float64(d) / float64(time.Millisecond)
	if ms < 10000 {
		return fmt.Sprintf("%.3f", ms)
	}
	return fmt.Sprintf("%.0f", ms)
}

// Mermaid renders the same diagram as a Mermaid sequenceDiagram for the docs: one message per
// segment (label and time since the first segment) and a note beside the arrow for each Note.
func (c *Conversation) Mermaid(notes ...Note) string {
	var b strings.Builder
	b.WriteString("sequenceDiagram\n")
	fmt.Fprintf(&b, "    participant C as client %s\n", mermaidText(c.Client.String()))
	fmt.Fprintf(&b, "    participant S as server %s\n", mermaidText(c.Server.String()))
	note := func(n Note) {
		where := "left of C"
		if n.Side == Server {
			where = "right of S"
		}
		fmt.Fprintf(&b, "    Note %s: %s\n", where, mermaidText(n.Text))
	}
	var t0 time.Time
	if len(c.Segments) > 0 {
		t0 = c.Segments[0].Time
	}
	next := 0 // next note to place, in time order
	sorted := changes(notes)
	for _, s := range c.Segments {
		for next < len(sorted) && sorted[next].Time.Before(s.Time) {
			note(sorted[next])
			next++
		}
		from, to := "C", "S"
		if s.From == Server {
			from, to = "S", "C"
		}
		fmt.Fprintf(&b, "    %s->>%s: %s (%s ms)\n", from, to, mermaidText(s.Label()), formatMillis(s.Time.Sub(t0)))
	}
	for ; next < len(sorted); next++ {
		note(sorted[next])
	}
	return b.String()
}

// changes returns the notes in time order (the caller's order for equal times), without those
// that repeat the previous text of the same side.
func changes(notes []Note) []Note {
	sorted := append([]Note(nil), notes...)
	slices.SortStableFunc(sorted, func(a, b Note) int { return a.Time.Compare(b.Time) })
	var out []Note
	last := map[Side]string{}
	for _, n := range sorted {
		if prev, ok := last[n.Side]; ok && prev == n.Text {
			continue
		}
		last[n.Side] = n.Text
		out = append(out, n)
	}
	return out
}

// mermaidText removes what Mermaid would parse: ";" ends a statement, "#" starts an entity
// code, and a newline would end the message.
func mermaidText(s string) string {
	return strings.NewReplacer(";", ",", "#", "", "\n", " ").Replace(s)
}
