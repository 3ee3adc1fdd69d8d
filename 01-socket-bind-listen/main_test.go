//go:build linux

package main

import (
	"bytes"
	"net/netip"
	"sync"
	"testing"
	"unsafe"

	"socklab/internal/lab"
	"socklab/internal/labtest"
	"socklab/internal/netlab"
)

func TestMain(m *testing.M) { labtest.Main(m, &program) }

// narrator gives a step function somewhere to narrate; the narration is shown only when the
// test fails, so that a failure explains itself.
func narrator(t *testing.T) *lab.Narrator {
	t.Helper()
	var mu sync.Mutex
	var buf bytes.Buffer
	t.Cleanup(func() {
		if t.Failed() {
			mu.Lock()
			t.Logf("narration:\n%s", buf.String())
			mu.Unlock()
		}
	})
	return lab.NewNarrator(&lockedWriter{mu: &mu, w: &buf}, false)
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// inHost runs fn in a fresh network namespace when the tests have a private one, and here
// otherwise.
func inHost(t *testing.T, fn func() error) error {
	t.Helper()
	if !labtest.Env.Private {
		return fn()
	}
	h, err := netlab.NewHost("test")
	if err != nil {
		return err
	}
	defer h.Close()
	return h.Do(fn)
}

var loopbackAny = netip.AddrPortFrom(loopback4, 0)

// ptr is unsafe.Pointer for raw system call arguments.
func ptr[T any](p *T) unsafe.Pointer { return unsafe.Pointer(p) }
