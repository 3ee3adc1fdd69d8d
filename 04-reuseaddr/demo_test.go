//go:build linux

package main

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"

	"socklab/internal/labtest"
)

// The narrated demo runs every part to the end (exit 0) and prints the lesson's results:
// the EADDRINUSE, the matrix, the myths (the sysctl ones only in a private namespace). Not parallel: its myths part changes namespace
// sysctls that the other tests depend on.
func TestDemoRunsEveryPart(t *testing.T) {
	out, errOut, code := labtest.RunProgram(t, nil)
	assert.Equal(t, 0, code, errOut)
	for _, want := range []string{
		"EADDRINUSE (Address already in use)",
		"closed first  old RA  new RA",
		"TIME_WAIT",
		"IP_LOCAL_PORT_RANGE",
		"SO_REUSEPORT",
		"getsockopt(",
		"Read along: docs/04-reuseaddr.md",
	} {
		assert.Contains(t, out, want)
	}
	if labtest.Env.Private { // the namespace-only steps ran
		assert.Contains(t, out, "TCPTimeWaitOverflow")
		assert.NotContains(t, out, "skipped: ")
	} else {
		assert.Contains(t, out, "skipped: tcp_fin_timeout and tcp_max_tw_buckets")
	}
}

// With -host the demo runs on the loopback it is given and skips, by name, only the three
// steps that write sysctls.
func TestDemoHostSkipsOnlySysctlSteps(t *testing.T) {
	out, errOut, code := labtest.RunProgram(t, nil, "-host")
	assert.Equal(t, 0, code, errOut)
	assert.Equal(t, 3, strings.Count(out, "skipped: "), out)
	assert.Contains(t, out, "skipped: tcp_tw_reuse=0")
	assert.Contains(t, out, "skipped: tcp_migrate_req=1")
	assert.Contains(t, out, "skipped: tcp_fin_timeout and tcp_max_tw_buckets")
	assert.Contains(t, out, "closed first  old RA  new RA")
}
