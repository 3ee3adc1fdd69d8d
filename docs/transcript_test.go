//go:build linux

package docs_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"
)

// transcriptDir holds what `make docs` wrote: one file per chapter, the demo's whole output.
const transcriptDir = "transcripts"

// demoTimeout bounds one demo run; the slowest (01, with its SYN retransmissions) takes about
// 15 s alone.
const demoTimeout = 3 * time.Minute

// TestTranscriptsMatchPrograms proves that docs/transcripts cannot drift from the code: each
// chapter's program is built and run exactly as `make docs` runs it (NO_COLOR=1, stdout and
// stderr together, from the module root), and its output must equal the committed transcript
// once both are normalised (see normalise) — the same steps, system calls, errnos, states and
// narration, in the same order.
func TestTranscriptsMatchPrograms(t *testing.T) {
	goTool := usableGoTool(t)
	root, err := filepath.Abs(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	transcripts, err := filepath.Glob(filepath.Join(transcriptDir, "[0-9][0-9]-*.txt"))
	if err != nil || len(transcripts) == 0 {
		t.Fatalf("no transcripts in docs/%s (err %v): run `make docs`", transcriptDir, err)
	}
	// Every written chapter has a transcript, and every transcript has a chapter.
	programs, _ := filepath.Glob(filepath.Join(root, "[0-9][0-9]-*", "main.go"))
	for _, p := range programs {
		chapter := filepath.Base(filepath.Dir(p))
		if _, err := os.Stat(filepath.Join(transcriptDir, chapter+".txt")); err != nil {
			t.Errorf("chapter %s has no docs/transcripts/%s.txt: run `make docs`", chapter, chapter)
		}
	}
	bin := t.TempDir()
	for _, file := range transcripts {
		chapter := strings.TrimSuffix(filepath.Base(file), ".txt")
		t.Run(chapter, func(t *testing.T) {
			t.Parallel()
			if _, err := os.Stat(filepath.Join(root, chapter, "main.go")); err != nil {
				t.Fatalf("docs/transcripts/%s.txt has no program %s/main.go: remove the transcript or restore the chapter", chapter, chapter)
			}
			want, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			exe := filepath.Join(bin, chapter)
			if out, err := goCommand(goTool, root, "build", "-o", exe, "./"+chapter).CombinedOutput(); err != nil {
				t.Fatalf("go build ./%s: %v\n%s", chapter, err, out)
			}
			got := runDemo(t, exe, root)
			const hostOnly = "running on the host's loopback"
			if bytes.Contains(got, []byte(hostOnly)) && !bytes.Contains(want, []byte(hostOnly)) {
				// The transcript was made in a private namespace; a run without one skips the
				// namespace-only steps, so the two cannot match. Not drift: a poorer machine.
				line, _, _ := strings.Cut(string(got[bytes.Index(got, []byte(hostOnly)):]), "\n")
				t.Skipf("the demo could not enter a private network namespace here (%s); the transcript can only be checked where it can", line)
			}
			wantLines, err := normalise(chapter, string(want))
			if err != nil {
				t.Fatalf("docs/transcripts/%s.txt: %v", chapter, err)
			}
			gotLines, err := normalise(chapter, string(got))
			if err != nil {
				t.Fatalf("output of ./%s: %v", chapter, err)
			}
			if d := firstDifference(wantLines, gotLines, 3, 12); d != "" {
				t.Errorf("docs/transcripts/%s.txt no longer matches what ./%s prints "+
					"(both normalised; - transcript, + program now):\n%s%s\n"+
					"run `make docs` and review the diff", chapter, chapter, d, saveOutput(chapter, got))
			}
		})
	}
}

// usableGoTool finds the go command and proves it can build this module offline, or skips.
// go test puts its own GOROOT/bin first in PATH, so the same toolchain builds the demos; a test
// binary run by hand falls back to $GOROOT/bin/go. The CI runs every test binary a second time
// as user nobody, whose HOME has no module cache: that run skips here, and the run as the
// tree's owner covers the check.
func usableGoTool(t *testing.T) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		if goroot := os.Getenv("GOROOT"); goroot != "" {
			goTool, err = filepath.Join(goroot, "bin", "go"), nil
		}
	}
	if err != nil {
		t.Skipf("no go command in PATH or $GOROOT/bin (%v): cannot build the demos to compare their transcripts", err)
	}
	// The module graph must load from the local module cache (GOPROXY=off below), and the build
	// cache must be writable. The module cache is looked at before the go command may use it,
	// so that a user without one (nobody, HOME=/tmp) does not leave an empty one behind;
	// `go list -m all` then proves it holds this module's requirements; a file created in
	// GOCACHE proves the build cache is writable.
	out, err := goCommand(goTool, repoRoot, "env", "GOMODCACHE", "GOCACHE").Output()
	paths := strings.Split(strings.TrimSpace(string(out)), "\n")
	if err != nil || len(paths) != 2 {
		t.Skipf("`go env` fails as uid %d (%v): cannot build the demos", os.Getuid(), err)
	}
	modCache, cache := paths[0], paths[1]
	if _, err := os.ReadDir(filepath.Join(modCache, "cache", "download")); err != nil {
		t.Skipf("no readable module cache as uid %d (%v): cannot build the demos offline", os.Getuid(), err)
	}
	if out, err := goCommand(goTool, repoRoot, "list", "-m", "all").CombinedOutput(); err != nil {
		t.Skipf("the go command cannot load this module offline as uid %d (%v: %s): cannot build the demos", os.Getuid(), err, firstLine(out))
	}
	if cache == "" || cache == "off" {
		err = fmt.Errorf("GOCACHE is %q", cache)
	}
	if err == nil {
		if err = os.MkdirAll(cache, 0o777); err == nil {
			var f *os.File
			if f, err = os.CreateTemp(cache, "socklab-probe-*"); err == nil {
				f.Close()
				os.Remove(f.Name())
			}
		}
	}
	if err != nil {
		t.Skipf("the go build cache is not writable as uid %d (%v): cannot build the demos", os.Getuid(), err)
	}
	return goTool
}

func firstLine(b []byte) string {
	line, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
	return line
}

// goCommand runs the go tool in dir without ever reaching the network (GOPROXY=off,
// GOTOOLCHAIN=local): a test must not download modules or toolchains.
func goCommand(goTool, dir string, args ...string) *exec.Cmd {
	cmd := exec.Command(goTool, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOPROXY=off", "GOTOOLCHAIN=local")
	return cmd
}

// runDemo runs a chapter program as `make docs` does: from the module root, NO_COLOR=1, stdout
// and stderr into one stream. A non-zero exit is a failure in its own right.
func runDemo(t *testing.T, exe, dir string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), demoTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe)
	cmd.Dir = dir
	// Drop netlab's own markers in case this test process ever runs inside a lab namespace:
	// the demo must create its namespace itself, as under `make docs`.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SOCKLAB_") && !strings.HasPrefix(kv, "NO_COLOR=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "NO_COLOR=1")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out // one pipe, interleaved exactly like 2>&1
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	err := cmd.Run()
	t.Logf("%s ran in %v", filepath.Base(exe), time.Since(start).Round(time.Millisecond))
	if err != nil {
		t.Fatalf("%s exited with %v (make docs would fail too); its last lines:\n%s", filepath.Base(exe), err, lastLines(out.String(), 15))
	}
	return out.Bytes()
}

// saveOutput keeps the program's raw output of a mismatching run for a closer look, because
// the diff shows normalised lines only and the next run may differ.
func saveOutput(chapter string, out []byte) string {
	f, err := os.CreateTemp("", "socklab-transcript-"+chapter+"-*.txt")
	if err != nil {
		return ""
	}
	defer f.Close()
	if _, err := f.Write(out); err != nil {
		return ""
	}
	return "(the program's whole output is in " + f.Name() + ")\n"
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Normalisation. A transcript is compared line by line after these rewrites, each of which
// removes one thing that changes from run to run while keeping everything a reader relies on:
// the order of steps and system calls, their names, flags, errnos and return shapes, socket
// states, IPv4 addresses and every word of narration. Each rule was found by running every demo
// a dozen times, also all at once as this test does, and diffing the outputs.
var (
	// Paths of temporary files (07 writes its payload under os.TempDir()) contain a random
	// name and depend on $TMPDIR: keep only the program's own prefix.
	tempPath = regexp.MustCompile(`[\w./-]*/(socklab-)[\w-]*`)
	// C-style hex numbers: mmap(2)'s address and a port printed in hex (0x9B13). Replaced
	// before digits, because a hex number may happen to contain no digit at all (0xBEEF).
	hexNumber = regexp.MustCompile(`\b0x[0-9a-fA-F]+\b`)
	// /proc/net/tcp's ADDR:PORT in hex (0100007F:9B13): the port is ephemeral.
	procNetAddr = regexp.MustCompile(`\b[0-9A-F]{8}:[0-9A-F]{4}\b`)
	// IPv6 addresses with hex groups: a veth's link-local address comes from a random MAC.
	ipv6 = regexp.MustCompile(`\b[0-9a-fA-F]{1,4}(?::[0-9a-fA-F]{0,4}){2,7}\b`)
	// IPv4 addresses are fixed by the lessons (loopback, TEST-NET-1, multicast groups), so
	// they are kept verbatim; a port after one is not.
	ipv4 = regexp.MustCompile(`\b(?:\d{1,3}\.){3}\d{1,3}\b`)
	// Every other number — ports, fds, ISNs, byte counts, queue lengths, timers, measured
	// throughput — becomes #. Decimals too, because a timer prints tenths below 10 s only
	// (sockdiag.TimerString: "60s" but "5.0s"), and prose prints "60.0 s". Digits that end a
	// name are part of it and stay: FIN_WAIT1 is not FIN_WAIT2, accept4 is not accept.
	number = regexp.MustCompile(`(^|\W)\d+(?:\.\d+)?`)
	// Column alignment depends on the widest number in a column; runs of spaces inside a
	// line carry no meaning once numbers are gone.
	spaces = regexp.MustCompile(`[ \t]+`)
	// Arrows and rules drawn to a width ("|-- ACK seq=1 ack=1 ------>|" in 03's capture
	// diagram) are as long as their labels leave room for; the labels hold numbers.
	drawnLine = regexp.MustCompile(`-{3,}|={3,}`)
)

// ipv4Mark protects IPv4 addresses from the number rule; it contains no digit.
const ipv4Mark = "\x00"

// normaliseLine applies the per-line rules to one line of output.
func normaliseLine(line string) string {
	line = strings.TrimRight(line, " \t\r")
	indent := line[:len(line)-len(strings.TrimLeft(line, " "))]
	line = tempPath.ReplaceAllString(line, "$$TMPDIR/$1#")
	line = hexNumber.ReplaceAllString(line, "#")
	line = procNetAddr.ReplaceAllString(line, "#:#")
	line = ipv6.ReplaceAllString(line, "#")
	var kept []string
	line = ipv4.ReplaceAllStringFunc(line, func(a string) string {
		kept = append(kept, a)
		return ipv4Mark
	})
	line = number.ReplaceAllString(line, "${1}#")
	for _, a := range kept {
		line = strings.Replace(line, ipv4Mark, a, 1)
	}
	line = drawnLine.ReplaceAllStringFunc(line, func(l string) string { return l[:3] })
	// The narrator indents by 0, 2 or 4 spaces; deeper indentation comes from a
	// preformatted block (lab.Block) whose first column is right-aligned numbers (03's
	// milliseconds), so its depth depends on their width: any depth beyond 4 reads as 5.
	if len(indent) > 4 {
		indent = "     "
	}
	return indent + spaces.ReplaceAllString(strings.TrimLeft(line, " "), " ")
}

// A chapterRule rewrites the normalised lines of one chapter, for a race that chapter shows on
// purpose or cannot avoid. It reports an error when its anchor is gone from the output, so a
// rule never silently stops applying (or silently applies to nothing).
type chapterRule struct {
	why string
	// physical rules see the lines as printed (after the per-line rules); the others see
	// narration paragraphs already joined into one line each (see unwrapProse).
	physical bool
	apply    func(lines []string) ([]string, error)
}

// finWaitEitherWay: right after the FIN of shutdown(2) or close(2) the kernel table catches the
// closing end in FIN_WAIT1 (FIN not yet acknowledged, retransmission timer "on") or already
// in FIN_WAIT2 (an orphan one with its tcp_fin_timeout timer); the ACK's timing decides. For
// chapters where that moment is incidental (not 03, whose lesson it is), both read
// "FIN_WAIT1|2" without a timer.
var finWaitEitherWay = chapterRule{
	why: "FIN_WAIT1 or FIN_WAIT2 right after our FIN",
	apply: func(lines []string) ([]string, error) {
		for i, l := range lines {
			lines[i] = finWaitRow.ReplaceAllString(l, "${1}FIN_WAIT1|2 ${2}${3}")
		}
		return lines, nil
	},
}

var finWaitRow = regexp.MustCompile(`^(  \| )FIN_WAIT[12] (.*?)(?: (?:on|timewait) #s)?(?: retrans #)?( no fd)?$`)

var chapterRules = map[string][]chapterRule{
	"01-socket-bind-listen": {finWaitEitherWay, {
		// After accept() frees one slot, both waiting clients retransmit their SYNs; whether
		// the second one's SYN lands together with the first (it gets in too, the server
		// holding SYN_RECV for it) or later (still SYN_SENT, "retrans N") depends on how their
		// backoff timers line up. The step's calls and narration stay; its table's rows go.
		why: "one or both waiting clients admitted after accept()",
		apply: func(lines []string) ([]string, error) {
			return dropTableRows(lines, "accept() frees a slot")
		},
	}},
	"04-reuseaddr": {{
		// tcp_tw_reuse lets connect() take over a TIME_WAIT only once its last timestamp is
		// older than tcp_tw_reuse_delay (1 ms here): the first attempt may or may not be too
		// early. A refused attempt right before the same connect() succeeding, and the
		// "succeeded at attempt N" line, are the retry, not the lesson.
		why: "connect() retried until tcp_tw_reuse_delay passes",
		apply: func(lines []string) ([]string, error) {
			var out []string
			for i, l := range lines {
				if strings.HasPrefix(l, "    -> succeeded at attempt #") {
					continue
				}
				if call, _, ok := strings.Cut(l, " = -# EADDRNOTAVAIL"); ok && strings.HasPrefix(l, "  connect(") &&
					i+1 < len(lines) && lines[i+1] == call+" = #" && (i+2 >= len(lines) || strings.HasPrefix(lines[i+2], "    -> succeeded at attempt #")) {
					continue
				}
				out = append(out, l)
			}
			return out, nil
		},
	}},
	"06-epoll-server": {finWaitEitherWay, {
		// The backpressure client's zero window makes the server's kernel send window probes
		// on its persist timer; whether one has gone out when the table is dumped ("persist
		// 0.2s retrans 1" or just "persist 0.4s") is timing. The timer stays, the count goes.
		why: "zero-window probes already sent or not",
		apply: func(lines []string) ([]string, error) {
			for i, l := range lines {
				if strings.HasPrefix(l, "  | ") {
					lines[i] = strings.Replace(l, " persist #s retrans #", " persist #s", 1)
				}
			}
			return lines, nil
		},
	}, {
		// Two workers serve three clients at once: which worker prints first, whether
		// epoll_wait returns the three ready fds in one call or in several, and whether the
		// last worker's lines come before or after the shutdown step's title, is scheduling.
		// From that step to the end of its part, compare the set of distinct lines, with a
		// list of identical epoll events counted once: every call, flag and sentence must
		// still be there. Physical lines, because interleaved one-line sentences would
		// otherwise be joined differently from run to run.
		why:      "worker pool serving three clients concurrently",
		physical: true,
		apply: func(lines []string) ([]string, error) {
			return unorderedPart(lines, "clients connect and each sends one line", collapseRepeatedEvents)
		},
	}},
	"07-sendfile-splice": {{
		// After the receiver's RST, the sender's next write fails with EPIPE or ECONNRESET
		// depending on whether the RST was processed before the write (the doc says
		// "ECONNRESET or EPIPE"). Both spellings, errno and Go error text, become one.
		why: "EPIPE or ECONNRESET after the peer's RST",
		apply: func(lines []string) ([]string, error) {
			r := strings.NewReplacer(
				"EPIPE (Broken pipe)", "EPIPE|ECONNRESET",
				"ECONNRESET (Connection reset by peer)", "EPIPE|ECONNRESET",
				"broken pipe", "broken pipe|connection reset by peer",
				"connection reset by peer", "broken pipe|connection reset by peer")
			for i, l := range lines {
				lines[i] = r.Replace(l)
			}
			return lines, nil
		},
	}, {
		// "... N calls went well, then:" is followed by the last call that went well before
		// the failure; with splice that is either half of the loop (file → pipe, or pipe →
		// socket), whichever ran last when the RST arrived. The count is a number already;
		// that one line goes.
		why: "last successful call before the peer's RST",
		apply: func(lines []string) ([]string, error) {
			var out []string
			for i, l := range lines {
				if i > 0 && strings.HasSuffix(lines[i-1], "calls went well, then:") && strings.HasPrefix(l, "  ") && !strings.HasPrefix(l, "   ") {
					continue
				}
				out = append(out, l)
			}
			return out, nil
		},
	}},
}

// unorderedPart replaces the lines from the step whose title contains title to the end of its
// part (the next "== " line) by their sorted distinct set, after rewriting each with fix.
func unorderedPart(lines []string, title string, fix func(string) string) ([]string, error) {
	start := -1
	for i, l := range lines {
		if strings.HasPrefix(l, "[") && strings.Contains(l, title) {
			start = i + 1
			break
		}
	}
	if start < 0 {
		return nil, fmt.Errorf("no step titled %q: update chapterRules in docs/transcript_test.go", title)
	}
	end := start
	for end < len(lines) && !strings.HasPrefix(lines[end], "== ") {
		end++
	}
	set := map[string]bool{}
	for _, l := range lines[start:end] {
		set[fix(l)] = true
	}
	var body []string
	for l := range set {
		body = append(body, l)
	}
	sort.Strings(body)
	return append(append(append([]string{}, lines[:start]...), body...), lines[end:]...), nil
}

// dropTableRows removes the rows (not the header) of the kernel tables in the step whose
// title contains title.
func dropTableRows(lines []string, title string) ([]string, error) {
	start := -1
	for i, l := range lines {
		if strings.HasPrefix(l, "[") && strings.Contains(l, title) {
			start = i + 1
			break
		}
	}
	if start < 0 {
		return nil, fmt.Errorf("no step titled %q: update chapterRules in docs/transcript_test.go", title)
	}
	out := append([]string{}, lines[:start]...)
	i := start
	for ; i < len(lines) && !strings.HasPrefix(lines[i], "[") && !strings.HasPrefix(lines[i], "== "); i++ {
		if !strings.HasPrefix(lines[i], "  | ") || strings.HasPrefix(lines[i], "  | State ") {
			out = append(out, lines[i])
		}
	}
	return append(out, lines[i:]...), nil
}

// collapseRepeatedEvents turns epoll_wait(#, [{EPOLLIN, fd #}, {EPOLLIN, fd #}], ...) into
// epoll_wait(#, [{EPOLLIN, fd #}], ...): how many ready fds one call returns is timing.
func collapseRepeatedEvents(line string) string {
	first, last := strings.Index(line, "[{"), strings.Index(line, "}]")
	if first < 0 || last < first {
		return line
	}
	events := strings.Split(line[first+2:last], "}, {")
	var kept []string
	for i, e := range events {
		if i == 0 || e != events[i-1] {
			kept = append(kept, e)
		}
	}
	return line[:first+2] + strings.Join(kept, "}, {") + line[last:]
}

// normalise turns a chapter's transcript into the lines that are compared.
func normalise(chapter, text string) ([]string, error) {
	return normaliseWith(chapterRules[chapter], text)
}

func normaliseWith(rules []chapterRule, text string) ([]string, error) {
	var lines []string
	for _, l := range joinResults(strings.Split(strings.TrimRight(text, "\n"), "\n")) {
		lines = append(lines, normaliseLine(l))
	}
	apply := func(physical bool) error {
		for _, rule := range rules {
			if rule.physical != physical {
				continue
			}
			var err error
			if lines, err = rule.apply(lines); err != nil {
				return fmt.Errorf("rule %q: %w", rule.why, err)
			}
		}
		return nil
	}
	if err := apply(true); err != nil {
		return nil, err
	}
	lines = unwrapProse(lines)
	if err := apply(false); err != nil {
		return nil, err
	}
	return sortKernelTables(lines), nil
}

// sortKernelTables sorts the rows of every sock_diag table ("  | " lines after the header).
// sockdiag.SortForDisplay orders rows by state and then by port, and ports are ephemeral, so
// the order of rows in one state changes from run to run; which rows exist does not.
func sortKernelTables(lines []string) []string {
	for i := 0; i < len(lines); i++ {
		if !strings.HasPrefix(lines[i], "  | State ") {
			continue
		}
		j := i + 1
		for j < len(lines) && strings.HasPrefix(lines[j], "  | ") {
			j++
		}
		sort.Strings(lines[i+1 : j])
		i = j - 1
	}
	return lines
}

// joinResults puts a system call's result back behind its call: lab.Narrator.Sys prints the
// result on a line of its own when call and result would pass 80 columns, and a longer port or
// fd number can move it there. It runs before every other rule, because the call and its
// result are one printed unit even where lines are compared as a set.
//
// sockdiag.WriteTable does the same with a table row that would pass 80 columns: its timer goes
// on the next row, under the Local column ("  |" and then only spaces before it).
func joinResults(lines []string) []string {
	var out []string
	for _, l := range lines {
		if len(out) > 0 && strings.HasPrefix(l, "     ") && strings.HasPrefix(strings.TrimLeft(l, " "), "= ") {
			out[len(out)-1] += " " + strings.TrimLeft(l, " ")
			continue
		}
		if len(out) > 0 && strings.HasPrefix(l, "  |          ") && strings.HasPrefix(out[len(out)-1], "  | ") {
			out[len(out)-1] += " " + strings.TrimLeft(l[3:], " ")
			continue
		}
		out = append(out, l)
	}
	return out
}

// unwrapProse joins consecutive narration lines (indented four spaces, lab.Say wraps them at
// 78 columns) into one: a number printed one digit longer moves the line breaks of the
// paragraph that contains it. Result lines ("    -> ...") and the kernel-table caption start
// a new line of their own. The banner (the program's name, summary and where it runs, up to
// the first empty line) is wrapped the same way, unindented, and becomes one line too.
func unwrapProse(lines []string) []string {
	var out []string
	banner := true
	prose := func(l string) bool {
		return strings.HasPrefix(l, "    ") && !strings.HasPrefix(l, "     ") && !strings.HasPrefix(l, "    -> ")
	}
	for i, l := range lines {
		banner = banner && l != "" && !strings.HasPrefix(l, " ")
		switch {
		case i > 0 && banner:
			out[len(out)-1] += " " + l
		case i > 0 && prose(l) && prose(lines[i-1]) && !strings.HasPrefix(l, "    kernel (sock_diag):"):
			out[len(out)-1] += " " + strings.TrimLeft(l, " ")
		default:
			out = append(out, l)
		}
	}
	return out
}

// firstDifference returns the first hunk where want and got differ, unified-diff style with
// context lines around it and at most limit changed lines of each side, or "" when equal.
func firstDifference(want, got []string, context, limit int) string {
	// Longest common subsequence by dynamic programming: transcripts have a few hundred
	// lines, so the table stays small.
	n, m := len(want), len(got)
	lcs := make([][]int32, n+1)
	for i := range lcs {
		lcs[i] = make([]int32, m+1)
	}
	for i := n - 1; i >= 0; i-- {
		for j := m - 1; j >= 0; j-- {
			if want[i] == got[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	i, j := 0, 0
	for i < n && j < m && want[i] == got[j] {
		i, j = i+1, j+1
	}
	if i == n && j == m {
		return ""
	}
	var b strings.Builder
	fmt.Fprintf(&b, "@@ transcript line %d, program line %d (normalised, prose unwrapped) @@\n", i+1, j+1)
	for k := max(0, i-context); k < i; k++ {
		b.WriteString("  " + want[k] + "\n")
	}
	// Walk the edit script until context equal lines follow again or limit is reached.
	removed, added, equal := 0, 0, 0
	for (i < n || j < m) && equal < context && removed+added < 2*limit {
		switch {
		case i < n && j < m && want[i] == got[j]:
			b.WriteString("  " + want[i] + "\n")
			i, j, equal = i+1, j+1, equal+1
		case j < m && (i == n || lcs[i][j+1] >= lcs[i+1][j]):
			b.WriteString("+ " + got[j] + "\n")
			j, added, equal = j+1, added+1, 0
		default:
			b.WriteString("- " + want[i] + "\n")
			i, removed, equal = i+1, removed+1, 0
		}
	}
	if i < n || j < m {
		b.WriteString("...\n")
	}
	return b.String()
}

// TestTranscriptNormalisationKeepsWhatMatters shows what the comparison of
// TestTranscriptsMatchPrograms forgives (what changes run to run) and what it catches (drift).
func TestTranscriptNormalisationKeepsWhatMatters(t *testing.T) {
	const table = "    kernel (sock_diag):\n  | State       Recv-Q Send-Q Local           Peer            Timer/fd\n"
	cases := []struct {
		name, chapter, a, b string
		same                bool
		rules               []chapterRule // instead of the chapter's
	}{
		{"ports, fds and timers", "03-x",
			"  connect(7, {AF_INET, 127.0.0.1:40001}) = 0\n" + table + "  | TIME_WAIT      0      0 127.0.0.1:40001 127.0.0.1:9 timewait 60s no fd\n",
			"  connect(12, {AF_INET, 127.0.0.1:5999}) = 0\n" + table + "  | TIME_WAIT      0      0 127.0.0.1:5999 127.0.0.1:9 timewait 9.8s no fd\n", true, nil},
		{"hex and IPv6", "01-x",
			"    -> 0100007F:9B13 (39699 = 0x9B13) from fe80::4c3a:aff:fe1e:5ec\n",
			"    -> 0100007F:BEEF (48879 = 0xBEEF) from fe80::e0e:1ff:fe2:a0b\n", true, nil},
		{"prose rewrapped", "02-x",
			"    The server keeps 10 bytes in its queue and the\n    client none.\n",
			"    The server keeps 10000 bytes in its queue and\n    the client none.\n", true, nil},
		{"table rows in another order", "03-x",
			table + "  | ESTABLISHED 0 0 127.0.0.1:1 127.0.0.1:2\n  | ESTABLISHED 0 0 127.0.0.1:2 127.0.0.1:1 no fd\n",
			table + "  | ESTABLISHED 0 0 127.0.0.1:3 127.0.0.1:4 no fd\n  | ESTABLISHED 0 0 127.0.0.1:4 127.0.0.1:3\n", true, nil},
		{"a table row gone", "03-x",
			table + "  | ESTABLISHED 0 0 127.0.0.1:1 127.0.0.1:2\n  | ESTABLISHED 0 0 127.0.0.1:2 127.0.0.1:1 no fd\n",
			table + "  | ESTABLISHED 0 0 127.0.0.1:1 127.0.0.1:2\n", false, nil},
		{"another state", "03-x",
			table + "  | FIN_WAIT1 0 1 127.0.0.1:1 127.0.0.1:2 on 0.2s\n",
			table + "  | FIN_WAIT2 0 1 127.0.0.1:1 127.0.0.1:2 on 0.2s\n", false, nil},
		{"FIN_WAIT1 or 2 where the moment is incidental", "",
			table + "  | FIN_WAIT1 0 1 127.0.0.1:1 127.0.0.1:2 on 0.2s\n",
			table + "  | FIN_WAIT2 0 0 127.0.0.1:1 127.0.0.1:2\n", true, []chapterRule{finWaitEitherWay}},
		{"another errno", "03-x",
			"  write(5, buf, 3) = -1 EPIPE (Broken pipe)\n",
			"  write(5, buf, 3) = -1 ECONNRESET (Connection reset by peer)\n", false, nil},
		{"EPIPE or ECONNRESET where the doc says either", "07-sendfile-splice",
			"  write(5, buf, 3) = -1 EPIPE (Broken pipe)\n    write failed: broken pipe (the\n    receiver closed)\n",
			"  write(5, buf, 3) = -1 ECONNRESET (Connection reset by peer)\n    write failed: connection reset by\n    peer (the receiver closed)\n", true, nil},
		{"a result moved under its call", "01-x",
			"  connect(7, {AF_INET, 127.0.0.1:4000}) = -1 EINPROGRESS (Operation now in progress)\n",
			"  connect(7, {AF_INET, 127.0.0.1:40001})\n      = -1 EINPROGRESS (Operation now in progress)\n", true, nil},
		{"another errno under its call", "01-x",
			"  connect(7, {AF_INET, 127.0.0.1:40001})\n      = -1 EINPROGRESS (Operation now in progress)\n",
			"  connect(7, {AF_INET, 127.0.0.1:40001})\n      = -1 ECONNREFUSED (Connection refused)\n", false, nil},
		{"a wide row's timer moved under Local", "01-x",
			table + "  | SYN_RECV         0      0 127.0.0.1:5342 127.0.0.1:4920 on 4.0s retrans 2 no fd\n",
			table + "  | SYN_RECV         0      0 127.0.0.1:53421 127.0.0.1:49206\n  |                           on 4.0s retrans 2 no fd\n", true, nil},
		{"another system call", "06-x", "  accept4(6, ...) = 7\n", "  accept(6, ...) = 7\n", false, nil},
		{"another address", "04-x", "  bind(6, {AF_INET, 127.0.0.1:0}) = 0\n", "  bind(6, {AF_INET, 0.0.0.0:0}) = 0\n", false, nil},
		{"a step more", "02-x", "[1] connect\n  connect(3, ...) = 0\n", "[1] connect\n  connect(3, ...) = 0\n\n[2] close\n  close(3) = 0\n", false, nil},
		{"narration changed", "02-x", "    the queue holds backlog+1\n", "    the queue holds backlog\n", false, nil},
	}
	for _, c := range cases {
		rules := chapterRules[c.chapter]
		if c.rules != nil {
			rules = c.rules
		}
		a, errA := normaliseWith(rules, c.a)
		b, errB := normaliseWith(rules, c.b)
		if errA != nil || errB != nil {
			t.Errorf("%s: %v %v", c.name, errA, errB)
			continue
		}
		if d := firstDifference(a, b, 1, 5); (d == "") != c.same {
			t.Errorf("%s: same = %v, want %v\n%s", c.name, d == "", c.same, d)
		}
	}
}
