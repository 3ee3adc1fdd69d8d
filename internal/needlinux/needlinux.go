// Package needlinux is what a socklab program runs on an operating system other than Linux:
// one sentence saying why it cannot run there and what to do instead, and exit status 1.
// It has no build constraint on purpose, so `go run ./01-socket-bind-listen` on macOS or
// Windows prints that sentence instead of "build constraints exclude all Go files".
package needlinux

import (
	"fmt"
	"io"
	"os"
	"runtime"
)

// Message is the sentence a student sees; it matches the Makefile's.
func Message(goos string) string {
	return fmt.Sprintf("socklab needs Linux, not %s, because every lab makes Linux system calls "+
		"(sock_diag, namespaces, epoll, splice): use a Linux VM or container (see docs/README.md)", goos)
}

// Main prints Message to stderr and exits 1.
func Main() {
	say(os.Stderr)
	os.Exit(1)
}

func say(w io.Writer) { fmt.Fprintln(w, Message(runtime.GOOS)) }
