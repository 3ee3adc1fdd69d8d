package needlinux

import (
	"strings"
	"testing"
)

// The sentence names the system it refused and points at the way out.
func TestMessageNamesTheWayOut(t *testing.T) {
	var b strings.Builder
	say(&b)
	msg := b.String()
	if !strings.Contains(msg, "needs Linux") || !strings.Contains(msg, "VM or container") {
		t.Fatalf("message lacks the reason or the way out: %q", msg)
	}
	if strings.Count(msg, "\n") != 1 {
		t.Fatalf("message is not one line: %q", msg)
	}
}
