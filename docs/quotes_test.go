//go:build linux

package docs_test

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"socklab/internal/lab"
)

// Quoted output. The pages under docs/ quote the programs' output in fenced code blocks; those
// quotes must come from docs/transcripts, which TestTranscriptsMatchPrograms keeps equal to what
// the programs print. TestQuotedOutputComesFromTranscripts closes the chain: a quote that no
// longer matches its transcript (after the same normalisation) fails, so the docs cannot show
// output the programs stopped printing.
//
// Which code blocks are quotes of output. Only fenced blocks count (the pages use no indented
// code blocks, and the test refuses an indented one that looks like output). A fenced block
// whose info string is empty or "text" quotes program output when
//
//  1. at least one of its lines has a shape the narrator (internal/lab) prints:
//     - a step header: "[3] The classic bug ..." (lab.Narrator.Step);
//     - a part header: "== A. Byte order ====" (lab.Narrator.Part);
//     - a system call with its result, strace-style: "  bind(6, {...}) = 0", also with the
//       result on a line of its own ("      = -1 EINPROGRESS ...") (lab.Narrator.Sys);
//     - a result: "    -> client is 127.0.0.1:37596" (lab.Narrator.Result);
//     - the kernel's table: "    kernel (sock_diag):" or a row "  | LISTEN ..."
//       (Narrator.Kernel), or any line that starts with a TCP state as sock_diag or ss spell
//       it (ss output looks like output, and must be declared, see below);
//  2. or all its lines are indented: under a step the narrator indents every line by two or
//     four spaces (narration, its own small tables), while a page's commands, diagrams and
//     charts start at the margin.
//
// Blocks tagged sh, go, c, mermaid or anything else are code, never output; untagged blocks
// that meet neither condition (a drawing of the calls, a benchmark chart) are not checked, and
// are listed by `go test -v -run Quoted ./docs/`.
//
// A block that looks like output but does not come from a transcript — strace or ss output, a
// role run by hand in two terminals, a benchmark — says so on the line before its fence:
//
//	<!-- not from a transcript: strace of the stdlib version, for comparison -->
//
// and is skipped, with its reason logged. Keep such exemptions few: every other quote is
// checked.
//
// How a quote is checked. Its lines are normalised like a transcript (normaliseWith and the
// chapter's rules, from transcript_test.go: numbers, ports, fds and timers become #, wrapped
// prose is joined, a result on its own line is joined to its call, kernel-table rows are
// sorted; see quoteRules for which chapter rules apply) and must then occur in the transcript,
// normalised the same way, in the same order, as a subsequence: a quote may leave lines out —
// a line of just "..." marks such a cut — but may not add, change or reorder any. A cut inside
// a paragraph of narration is allowed at the quote's edges only: its first line may be the end
// of a transcript paragraph, its last line the beginning of one. Because normalising forgives
// layout, the layout is checked on its own: no quoted line but a kernel-table row may be wider
// than 80 columns, as none the programs print is, and a call with its result on the same line
// no wider than lab.Width (78), past which Narrator.Sys moves the result under the call (so the
// layout before results moved, a long call and its result on one line, fails). A chapter page
// (docs/NN-name.md) quotes its own chapter's transcript; any other page (faq.md, ...) may quote
// any transcript, and the block is checked against the one that contains it.
//
// To refresh a failing quote, copy the lines again from docs/transcripts/NN-name.txt (by
// script or editor, never by retyping) and check the numbers the text around it cites.

// sysWithResult matches a system call narrated with its result on the same line.
var sysWithResult = regexp.MustCompile(`^  [^ |].* = \S`)

// terminalWidth is the width the programs' output fits (docs/CONVENTIONS.md: 80 columns).
const terminalWidth = 80

// exemptMarker, on the last non-blank line before a fence, exempts the block; the text after it
// up to "-->" is the reason and must not be empty.
const exemptMarker = "<!-- not from a transcript:"

// anyOrderMarker, in the same place, says the block quotes one run of a part whose lines come in
// a different order each run (06's worker pool; TestTranscriptsMatchPrograms compares that part
// as a set). Such a block is checked line by line: each of its lines, normalised, must be a line
// of the transcript, in any order. Text after the marker up to "-->" is the reason.
const anyOrderMarker = "<!-- one run, order varies:"

// codeBlock is one fenced block of a markdown file.
type codeBlock struct {
	file   string
	line   int // line number of the opening fence, 1-based
	info   string
	lines  []string
	exempt string // reason given by exemptMarker, or ""
	// anyOrder is the reason given by anyOrderMarker, or "".
	anyOrder string
}

var fence = regexp.MustCompile("^(```+|~~~+)\\s*(\\S*)")

// fencedBlocks returns the fenced code blocks of a markdown file, and the line numbers of
// indented code blocks that look like quoted output (which the test rejects: a quote must be
// fenced to be checked).
func fencedBlocks(file string) (blocks []codeBlock, indentedOutput []int, err error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, nil, err
	}
	lines := strings.Split(string(b), "\n")
	lastText := "" // last non-blank line outside code blocks
	for i := 0; i < len(lines); i++ {
		m := fence.FindStringSubmatch(lines[i])
		if m == nil {
			// An indented code block starts after a blank line with four spaces, outside a
			// list (whose continuation lines are indented too).
			if strings.HasPrefix(lines[i], "    ") && i > 0 && strings.TrimSpace(lines[i-1]) == "" &&
				!listItem.MatchString(lastText) && outputLine.MatchString(lines[i]) {
				indentedOutput = append(indentedOutput, i+1)
			}
			if strings.TrimSpace(lines[i]) != "" {
				lastText = lines[i]
			}
			continue
		}
		blk := codeBlock{file: file, line: i + 1, info: m[2]}
		if reason, ok := strings.CutPrefix(strings.TrimSpace(lastText), exemptMarker); ok {
			blk.exempt = strings.TrimSpace(strings.TrimSuffix(reason, "-->"))
			if blk.exempt == "" {
				return nil, nil, fmt.Errorf("%s:%d: %q without a reason", file, i+1, exemptMarker)
			}
		}
		if reason, ok := strings.CutPrefix(strings.TrimSpace(lastText), anyOrderMarker); ok {
			blk.anyOrder = strings.TrimSpace(strings.TrimSuffix(reason, "-->"))
			if blk.anyOrder == "" {
				return nil, nil, fmt.Errorf("%s:%d: %q without a reason", file, i+1, anyOrderMarker)
			}
		}
		j := i + 1
		for j < len(lines) && !strings.HasPrefix(lines[j], m[1]) {
			j++
		}
		if j == len(lines) {
			return nil, nil, fmt.Errorf("%s:%d: code block never closed", file, i+1)
		}
		blk.lines = lines[i+1 : j]
		blocks = append(blocks, blk)
		i, lastText = j, ""
	}
	return blocks, indentedOutput, nil
}

var listItem = regexp.MustCompile(`^\s*(?:[-*+]|\d+\.)\s`)

// outputLine matches the lines only the narrator prints (see the comment at the top).
var outputLine = regexp.MustCompile(`^(?:` +
	`\[\d+\] \S` + // step header
	`|== \S.* ===` + // part header
	`|\s*[a-z_][a-z0-9_]*\(.*\).* = \S` + // system call and result
	`|\s+= -?\d` + // result on its own line
	`|\s+-> \S` + // result
	`|\s+kernel \(sock_diag\):` + // kernel table caption
	`|\s*\| \S` + // kernel table row
	`|\s*` + tcpState + `\s` + // a socket's state first on a line, as ss prints it too
	`)`)

// tcpState is a TCP state as sock_diag tables (FIN_WAIT1) or ss (FIN-WAIT-1, ESTAB) spell it.
const tcpState = `(?:ESTAB(?:LISHED)?|LISTEN|SYN[-_](?:SENT|RECV)|FIN[-_]WAIT-?[12]|CLOSE[-_]WAIT|CLOSING|LAST[-_]ACK|TIME[-_]WAIT)`

// looksLikeOutput reports whether lines have a line only the narrator prints, or are all
// indented: under a step the narrator indents every line by two or four spaces, while the
// pages' own code, commands and diagrams start at the margin.
func looksLikeOutput(lines []string) bool {
	indented := 0
	for _, l := range lines {
		if outputLine.MatchString(l) {
			return true
		}
		if strings.HasPrefix(l, "  ") {
			indented++
		} else if strings.TrimSpace(l) != "" {
			indented = -len(lines)
		}
	}
	return indented > 0
}

// quotesOutput reports whether a block is a quote of program output, by the rule above.
func (b codeBlock) quotesOutput() bool {
	return (b.info == "" || b.info == "text") && looksLikeOutput(b.lines)
}

// elision reports whether a quoted line only marks lines left out.
func elision(line string) bool {
	switch strings.TrimSpace(line) {
	case "...", "…", "[...]", "[…]":
		return true
	}
	return false
}

// quoteRules returns the indices of the chapter's rules that a quote is normalised with — and
// its transcript too, for that quote. A rule rewrites what changes from run to run (FIN_WAIT1
// or 2, a retried connect, EPIPE or ECONNRESET) and stays useful, because most quotes were
// taken from an older run than the committed transcript. Two kinds are left out:
//   - a rule anchored on a step the quote does not contain (it reports its anchor missing):
//     a quote holding that step gets the rule;
//   - a rule that compares a part as an unordered set (physical rules, 06's worker pool): a
//     quote shows one run's order, and that order must be the transcript's. (Sorting a part
//     and then joining its narration would also make a partial quote unmatchable.)
func quoteRules(chapter, text string) []int {
	var use []int
	for i, r := range chapterRules[chapter] {
		if _, err := normaliseWith([]chapterRule{r}, text); err == nil && !r.physical {
			use = append(use, i)
		}
	}
	return use
}

func pickRules(chapter string, use []int) []chapterRule {
	var rules []chapterRule
	for _, i := range use {
		rules = append(rules, chapterRules[chapter][i])
	}
	return rules
}

// normaliseQuote normalises a quote's lines as a transcript of chapter, with the rules
// quoteRules picks, which it returns too. The quote is put behind a one-line banner so that
// unwrapProse cannot take its first lines for the program's banner; an elision mark becomes an
// empty line, which keeps the narration on either side of the cut apart.
func normaliseQuote(chapter string, quote []string) ([]string, []int, error) {
	lines := make([]string, len(quote))
	for i, l := range quote {
		if !elision(l) {
			lines[i] = l
		}
	}
	text := "quote\n\n" + strings.Join(lines, "\n")
	use := quoteRules(chapter, text)
	normalised, err := normaliseWith(pickRules(chapter, use), text)
	if err != nil {
		return nil, nil, err
	}
	var out []string
	for _, l := range normalised[2:] {
		if l != "" {
			out = append(out, l)
		}
	}
	return out, use, nil
}

// transcriptSet holds the transcripts and their normalised forms, one per set of rules used.
type transcriptSet struct {
	raw        map[string]string // chapter → transcript
	normalised map[string][]string
}

func (s *transcriptSet) get(chapter string, use []int) ([]string, error) {
	key := fmt.Sprint(chapter, use)
	if lines, ok := s.normalised[key]; ok {
		return lines, nil
	}
	lines, err := normaliseWith(pickRules(chapter, use), s.raw[chapter])
	if err != nil {
		return nil, fmt.Errorf("docs/%s/%s.txt: %w", transcriptDir, chapter, err)
	}
	s.normalised[key] = lines
	return lines, nil
}

// prose reports whether a normalised line is narration (indented four spaces, not a result),
// which may be cut at a quote's edges.
func prose(l string) bool {
	return strings.HasPrefix(l, "    ") && !strings.HasPrefix(l, "     ") && !strings.HasPrefix(l, "    -> ")
}

// findQuote returns -1 when quote occurs in transcript in order, else the index of the first
// line of quote that does not (after the lines before it).
func findQuote(quote, transcript []string) int {
	// Try every start: the first line may match in several places (an empty step), and the
	// earliest match is not always the one the rest follows.
	best := 0
	for start := range transcript {
		if !lineMatches(quote[0], transcript[start], 0, len(quote)) {
			continue
		}
		k, t := 1, start+1
		for k < len(quote) && t < len(transcript) {
			if lineMatches(quote[k], transcript[t], k, len(quote)) {
				k++
			}
			t++
		}
		if k == len(quote) {
			return -1
		}
		best = max(best, k)
	}
	return best
}

// lineMatches compares the k-th of n quoted lines with a transcript line: equal, or for
// narration at the quote's edges, the end (first line) or beginning (last line) of it.
func lineMatches(q, t string, k, n int) bool {
	if q == t {
		return true
	}
	if !prose(q) || !prose(t) {
		return false
	}
	body := strings.TrimSpace(q)
	return (k == 0 && strings.HasSuffix(t, " "+body)) || (k == n-1 && strings.HasPrefix(t, q+" "))
}

// originalLine returns the index of the quote's line that became the normalised line l.
func originalLine(quote []string, l string) int {
	for i, q := range quote {
		n := normaliseLine(q)
		if strings.TrimSpace(n) != "" && strings.HasPrefix(strings.TrimSpace(l), strings.TrimSpace(n)) {
			return i
		}
	}
	return 0
}

func TestQuotedOutputComesFromTranscripts(t *testing.T) {
	transcripts := &transcriptSet{raw: map[string]string{}, normalised: map[string][]string{}}
	files, err := filepath.Glob(filepath.Join(transcriptDir, "[0-9][0-9]-*.txt"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no transcripts in docs/%s (err %v): run `make docs`", transcriptDir, err)
	}
	var chapters []string
	for _, f := range files {
		chapter := strings.TrimSuffix(filepath.Base(f), ".txt")
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		transcripts.raw[chapter] = string(b)
		chapters = append(chapters, chapter)
	}
	sort.Strings(chapters)
	pages, err := filepath.Glob("*.md")
	if err != nil {
		t.Fatal(err)
	}
	checked, exempt := 0, 0
	for _, page := range pages {
		blocks, indented, err := fencedBlocks(page)
		if err != nil {
			t.Error(err)
			continue
		}
		for _, l := range indented {
			t.Errorf("docs/%s:%d: an indented code block that looks like program output: fence it "+
				"(```text) so that TestQuotedOutputComesFromTranscripts can check it", page, l)
		}
		// A chapter page quotes its own transcript; other pages any.
		candidates := chapters
		if own := strings.TrimSuffix(page, ".md"); transcripts.raw[own] != "" {
			candidates = []string{own}
		}
		for _, b := range blocks {
			if b.info == "text" && strings.TrimSpace(strings.Join(b.lines, "")) == "" {
				t.Errorf("docs/%s:%d: an empty text block: a quote got lost; copy it from docs/%s/", page, b.line, transcriptDir)
				continue
			}
			if !b.quotesOutput() {
				if b.info == "" || b.info == "text" {
					t.Logf("docs/%s:%d: not a quote of output (no line the narrator prints): %.50q", page, b.line, strings.Join(b.lines, " / "))
				}
				continue
			}
			if b.exempt != "" {
				exempt++
				t.Logf("docs/%s:%d: not checked: %s", page, b.line, b.exempt)
				continue
			}
			checked++
			if b.anyOrder != "" {
				if err := checkQuoteAnyOrder(b, candidates, transcripts); err != nil {
					t.Error(err)
				}
				continue
			}
			if err := checkQuote(b, candidates, transcripts); err != nil {
				t.Error(err)
			}
		}
	}
	t.Logf("%d quotes checked, %d exempt", checked, exempt)
	if checked == 0 {
		t.Errorf("no quoted output found in docs/*.md: the recognition rule in quotes_test.go is broken")
	}
}

// checkQuote returns an error when no candidate transcript contains the quote, naming the
// transcript that comes closest (the one matching most of its lines) and the first quoted line
// it lacks.
func checkQuote(b codeBlock, candidates []string, transcripts *transcriptSet) error {
	// Normalisation forgives layout (a result joined to its call, prose joined), so the
	// layout is checked here: the programs print within 80 columns, counted as a terminal
	// does (lab.Columns), except kernel-table rows, which grow with IPv6 addresses; and
	// Narrator.Sys moves a result under its call as soon as both together pass lab.Width. A
	// wider line is from an older layout, such as a long call with its result on its line.
	for i, l := range b.lines {
		c, limit := lab.Columns(l), terminalWidth
		if sysWithResult.MatchString(l) {
			limit = lab.Width
		}
		if c > limit && !strings.HasPrefix(strings.TrimLeft(l, " "), "| ") {
			return fmt.Errorf("docs/%s:%d: this quote's line %d is %d columns wide, but the programs print "+
				"such a line within %d now (a long call's result goes on the next line, narration wraps): %q.\n"+
				"Re-copy the block from docs/%s/", b.file, b.line, b.line+1+i, c, limit, strings.TrimSpace(l), transcriptDir)
		}
	}
	bestChapter, bestLine, bestMatched := "", "", -1
	for _, chapter := range candidates {
		quote, use, err := normaliseQuote(chapter, b.lines)
		if err != nil {
			return fmt.Errorf("docs/%s:%d: %v", b.file, b.line, err)
		}
		transcript, err := transcripts.get(chapter, use)
		if err != nil {
			return err
		}
		if len(quote) == 0 {
			return fmt.Errorf("docs/%s:%d: a quote with nothing but elisions", b.file, b.line)
		}
		k := findQuote(quote, transcript)
		if k < 0 {
			return nil
		}
		if k > bestMatched {
			bestChapter, bestMatched = chapter, k
			i := originalLine(b.lines, quote[k])
			bestLine = fmt.Sprintf("line %d: %q", b.line+1+i, strings.TrimSpace(b.lines[i]))
		}
	}
	return fmt.Errorf("docs/%s:%d: this quote is not the output in docs/%s/%s.txt any more; "+
		"first line not found (in order, after the lines before it): %s.\n"+
		"Re-copy the block from docs/%s/%s.txt (and check the numbers the text around it cites)",
		b.file, b.line, transcriptDir, bestChapter, bestLine, transcriptDir, bestChapter)
}

// checkQuoteAnyOrder checks a block marked with anyOrderMarker: every line of it (elisions
// aside), normalised line by line, is a line of one candidate transcript, normalised the same
// way. Prose is not joined here, because the interleaving that reorders the lines also decides
// which narration lines stand next to each other.
func checkQuoteAnyOrder(b codeBlock, candidates []string, transcripts *transcriptSet) error {
	lineSet := func(text []string) map[string]bool {
		set := map[string]bool{}
		for _, l := range joinResults(text) {
			set[strings.TrimSpace(normaliseLine(l))] = true
		}
		return set
	}
	missing := ""
	for _, chapter := range candidates {
		have := lineSet(strings.Split(transcripts.raw[chapter], "\n"))
		missing = ""
		for _, l := range joinResults(b.lines) {
			if elision(l) || strings.TrimSpace(l) == "" {
				continue
			}
			if !have[strings.TrimSpace(normaliseLine(l))] {
				missing = strings.TrimSpace(l)
				break
			}
		}
		if missing == "" {
			return nil
		}
	}
	return fmt.Errorf("docs/%s:%d: this quote (%s) has a line no transcript prints any more: %q.\n"+
		"Re-copy the block from docs/%s/", b.file, b.line, anyOrderMarker, missing, transcriptDir)
}

// TestQuoteCheckCatchesDrift shows what TestQuotedOutputComesFromTranscripts forgives in a
// quote (another run's numbers, cuts, prose wrapped anew) and what it catches.
func TestQuoteCheckCatchesDrift(t *testing.T) {
	const transcript = `[1] connect
  socket(AF_INET, SOCK_STREAM, 0) = 7
  connect(7, {AF_INET, 127.0.0.1:40001})
      = -1 EINPROGRESS (Operation now in progress)
    kernel (sock_diag):
  | State       Recv-Q Send-Q Local           Peer            Timer/fd
  | LISTEN           1      4 127.0.0.1:40001 0.0.0.0:*
  | ESTABLISHED      0      0 127.0.0.1:50000 127.0.0.1:40001
    The client is ESTABLISHED before accept(): its connection waits in the
    accept queue (全连接队列).

[2] close
  close(7) = 0
  setsockopt(6, IPPROTO_IP, IP_ADD_MEMBERSHIP, {224.0.0.100, 127.0.0.1}, 8)
      = 0
`
	set := &transcriptSet{raw: map[string]string{"99-x": transcript}, normalised: map[string][]string{}}
	cases := []struct {
		name, quote string
		ok          bool
	}{
		{"a verbatim copy", transcript, true},
		{"another run: other fds and ports",
			"  socket(AF_INET, SOCK_STREAM, 0) = 12\n  | LISTEN 1 4 127.0.0.1:3 0.0.0.0:*\n  close(12) = 0", true},
		{"a cut marked ...", "[1] connect\n  ...\n  close(7) = 0", true},
		{"table rows in another order", "  | ESTABLISHED 0 0 127.0.0.1:1 127.0.0.1:2\n  | LISTEN 1 4 127.0.0.1:2 0.0.0.0:*", true},
		{"prose wrapped anew", "    The client is ESTABLISHED before accept(): its\n    connection waits in the accept queue (全连接队列).", true},
		{"prose cut at the quote's end", "  | LISTEN 1 4 127.0.0.1:2 0.0.0.0:*\n    The client is ESTABLISHED before accept(): its connection waits in the", true},
		{"prose cut inside the quote", "    The client is ESTABLISHED before accept(): its connection waits in the\n  close(7) = 0", false},
		{"prose changed", "    The client is ESTABLISHED after accept(): its connection waits in the\n    accept queue (全连接队列).", false},
		{"another errno", "  connect(7, {AF_INET, 127.0.0.1:40001})\n      = -1 ECONNREFUSED (Connection refused)", false},
		{"another state", "  | SYN_SENT 0 1 127.0.0.1:50000 127.0.0.1:40001", false},
		{"lines in another order", "  close(7) = 0\n  socket(AF_INET, SOCK_STREAM, 0) = 7", false},
		{"the old kernel-table prefix", "    | LISTEN 1 4 127.0.0.1:40001 0.0.0.0:*", false},
		{"a call and result the program no longer prints on one line (over 80 columns)",
			"  connect(7, {AF_INET, 127.0.0.1:40001}) = -1 EINPROGRESS (Operation now in progress)", false},
		{"a call and result the program no longer prints on one line (79 columns)",
			"  setsockopt(6, IPPROTO_IP, IP_ADD_MEMBERSHIP, {224.0.0.100, 127.0.0.1}, 8) = 0", false},
		{"the same, as printed now", "  setsockopt(6, IPPROTO_IP, IP_ADD_MEMBERSHIP, {224.0.0.100, 127.0.0.1}, 8)\n      = 0", true},
	}
	for _, c := range cases {
		b := codeBlock{file: "x.md", line: 10, lines: strings.Split(c.quote, "\n")}
		err := checkQuote(b, []string{"99-x"}, set)
		if (err == nil) != c.ok {
			t.Errorf("%s: error %v, want ok = %v", c.name, err, c.ok)
		}
		if err != nil && !(strings.Contains(err.Error(), "docs/x.md:10:") && strings.Contains(err.Error(), "docs/transcripts/")) {
			t.Errorf("%s: the message names neither the block nor the transcript to copy from: %v", c.name, err)
		}
	}

	// A block marked "one run, order varies" may list the lines in another order, but each
	// must still be a line the program prints.
	for _, c := range []struct {
		name, quote string
		ok          bool
	}{
		{"lines in another order", "  close(12) = 0\n  socket(AF_INET, SOCK_STREAM, 0) = 12", true},
		{"a line the program does not print", "  close(12) = 0\n  shutdown(12, SHUT_WR) = 0", false},
	} {
		b := codeBlock{file: "x.md", line: 10, lines: strings.Split(c.quote, "\n"), anyOrder: "test"}
		if err := checkQuoteAnyOrder(b, []string{"99-x"}, set); (err == nil) != c.ok {
			t.Errorf("any order, %s: error %v, want ok = %v", c.name, err, c.ok)
		}
	}
}

// TestQuoteRecognition shows which code blocks count as quoted output and how one is exempted.
func TestQuoteRecognition(t *testing.T) {
	page := "Text.\n\n" +
		"```sh\ngo run ./01-socket-bind-listen handshake\n```\n\n" + // a command
		"```mermaid\nsequenceDiagram\n    C->>S: SYN\n```\n\n" + // a diagram
		"```go\nfd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0) // = 3\n```\n\n" + // code
		"```\nsocket → bind → listen\n```\n\n" + // a drawing of calls at the margin
		"```text\n[1] connect\n  connect(7, {AF_INET, 127.0.0.1:9}) = 0\n```\n\n" + // narrated steps
		"```\n    -> 0100007F:A80B\n```\n\n" + // indented as the narrator indents
		"```text\nTIME-WAIT 0 0 127.0.0.1:43788 127.0.0.1:58911\n```\n\n" + // ss output
		"<!-- not from a transcript: strace, for comparison -->\n" +
		"```\nsetsockopt(5, SOL_IP, IP_MULTICAST_TTL, [1], 4) = 0\n```\n" +
		"\n- a list item\n\n    -> its second paragraph, indented\n" + // a list, not a code block
		"\nText.\n\n    kernel (sock_diag):\n" // an indented code block quoting output
	file := filepath.Join(t.TempDir(), "page.md")
	if err := os.WriteFile(file, []byte(page), 0o644); err != nil {
		t.Fatal(err)
	}
	blocks, indented, err := fencedBlocks(file)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, b := range blocks {
		got = append(got, fmt.Sprintf("%d:%v:%q", b.line, b.quotesOutput(), b.exempt))
	}
	want := []string{`3:false:""`, `7:false:""`, `12:false:""`, `16:false:""`, `20:true:""`, `25:true:""`,
		`29:true:""`, `34:true:"strace, for comparison"`}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("blocks (line:quotes output:exempt reason)\n got %v\nwant %v", got, want)
	}
	if want := strings.Count(page, "\n"); fmt.Sprint(indented) != fmt.Sprint([]int{want}) {
		t.Errorf("indented output blocks at lines %v, want [%d]", indented, want)
	}
}
