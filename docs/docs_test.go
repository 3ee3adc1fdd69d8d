//go:build linux

// Package docs_test keeps the documentation honest: every test or benchmark a document cites as
// evidence must exist, and every relative link must lead somewhere.
package docs_test

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"unicode"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// repoRoot is the module root, one level above docs/.
const repoRoot = ".."

// markdownFiles lists README.md and every .md file under docs/.
func markdownFiles(t *testing.T) []string {
	files := []string{filepath.Join(repoRoot, "README.md")}
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(path, ".md") {
			files = append(files, path)
		}
		return err
	})
	require.NoError(t, err)
	return files
}

var funcDecl = regexp.MustCompile(`(?m)^func ((?:Test|Benchmark|Fuzz|Example)\w+)\(`)

// definedTests collects the names of every test, benchmark, fuzz target and example in the repo.
func definedTests(t *testing.T) map[string]bool {
	names := map[string]bool{}
	err := filepath.WalkDir(repoRoot, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == "testdata") {
			return filepath.SkipDir
		}
		if !d.IsDir() && strings.HasSuffix(path, "_test.go") {
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			for _, m := range funcDecl.FindAllStringSubmatch(string(b), -1) {
				names[m[1]] = true
			}
		}
		return nil
	})
	require.NoError(t, err)
	return names
}

// A cited name looks like TestSomething or BenchmarkSomething (subtests after a slash are
// checked by their parent).
var citedTest = regexp.MustCompile(`\b((?:Test|Benchmark)[A-Z0-9]\w*)`)

func TestEveryCitedTestExists(t *testing.T) {
	defined := definedTests(t)
	for _, file := range markdownFiles(t) {
		b, err := os.ReadFile(file)
		require.NoError(t, err)
		for _, m := range citedTest.FindAllStringSubmatch(string(b), -1) {
			name := m[1]
			if name == "TestMain" {
				continue
			}
			assert.True(t, defined[name], "%s cites %s, but no test of that name exists", file, name)
		}
	}
}

var mdLink = regexp.MustCompile(`\]\(([^)\s]+)\)`)

func TestEveryRelativeLinkResolves(t *testing.T) {
	for _, file := range markdownFiles(t) {
		b, err := os.ReadFile(file)
		require.NoError(t, err)
		for _, m := range mdLink.FindAllStringSubmatch(string(b), -1) {
			target := m[1]
			if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") || strings.HasPrefix(target, "#") {
				continue
			}
			target, _, _ = strings.Cut(target, "#")
			path := filepath.Join(filepath.Dir(file), target)
			_, err := os.Stat(path)
			assert.NoError(t, err, "%s links to %s, which does not exist", file, m[1])
		}
	}
}

// headingAnchors returns the anchors GitHub gives the headings of a markdown file: lower case,
// punctuation dropped (letters of any script, digits, '-' and '_' kept), spaces turned into
// '-', and "-1", "-2" ... appended to repeats. Headings inside fenced code blocks do not count.
func headingAnchors(t *testing.T, file string) map[string]bool {
	b, err := os.ReadFile(file)
	require.NoError(t, err)
	anchors := map[string]bool{}
	seen := map[string]int{}
	inFence := false
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "```") {
			inFence = !inFence
			continue
		}
		if inFence || !strings.HasPrefix(line, "#") {
			continue
		}
		text := strings.TrimSpace(strings.TrimLeft(line, "#"))
		text = mdLink.ReplaceAllString(text, "]") // [text](url) keeps only its text
		var slug strings.Builder
		for _, r := range strings.ToLower(text) {
			switch {
			case r == ' ':
				slug.WriteRune('-')
			case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r):
				slug.WriteRune(r)
			}
		}
		s := slug.String()
		if n := seen[s]; n > 0 {
			anchors[fmt.Sprintf("%s-%d", s, n)] = true
		} else {
			anchors[s] = true
		}
		seen[s]++
	}
	return anchors
}

// A link to a section (file.md#anchor or #anchor) must name a heading that exists, so renaming a
// section cannot silently break the glossary, the FAQ or the reading guide.
func TestEveryLinkedSectionExists(t *testing.T) {
	anchorsOf := map[string]map[string]bool{}
	for _, file := range markdownFiles(t) {
		b, err := os.ReadFile(file)
		require.NoError(t, err)
		for _, m := range mdLink.FindAllStringSubmatch(string(b), -1) {
			target, anchor, found := strings.Cut(m[1], "#")
			if !found || strings.Contains(target, "://") {
				continue
			}
			path := file
			if target != "" {
				path = filepath.Join(filepath.Dir(file), target)
			}
			if !strings.HasSuffix(path, ".md") {
				continue // anchors into code or other files are not headings
			}
			if anchorsOf[path] == nil {
				if _, err := os.Stat(path); err != nil {
					continue // TestEveryRelativeLinkResolves reports it
				}
				anchorsOf[path] = headingAnchors(t, path)
			}
			assert.True(t, anchorsOf[path][anchor], "%s links to %s, but %s has no heading with anchor #%s",
				file, m[1], path, anchor)
		}
	}
}
