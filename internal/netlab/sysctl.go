//go:build linux

package netlab

import (
	"fmt"
	"os"
	"runtime"
	"strings"
)

// Sysctl reads a net.* sysctl of the calling thread's network namespace, e.g.
// Sysctl("net.ipv4.tcp_fin_timeout") → "60". /proc/sys/net is resolved against the namespace
// of the thread that opens it, so the thread is locked for the read.
func Sysctl(name string) (string, error) {
	path, err := sysctlPath(name)
	if err != nil {
		return "", err
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read sysctl %s: %w", name, err)
	}
	return strings.TrimSpace(string(b)), nil
}

// SetSysctl writes a net.* sysctl, but only in a private namespace created by this program:
// on the host it returns ErrNotPrivate and writes nothing. The check and the write happen on
// one locked thread, so they concern the same namespace.
func SetSysctl(name, value string) error {
	path, err := sysctlPath(name)
	if err != nil {
		return err
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if !inPrivateNamespace() {
		return fmt.Errorf("sysctl %s=%s: %w", name, value, ErrNotPrivate)
	}
	if err := os.WriteFile(path, []byte(value), 0); err != nil {
		return fmt.Errorf("write sysctl %s=%s: %w", name, value, err)
	}
	return nil
}

// SetSysctls writes several sysctls in order and returns a function that restores the
// previous values (useful in tests that share one namespace). It stops at the first error,
// restoring what it had already changed.
func SetSysctls(kv ...string) (restore func(), err error) {
	if len(kv)%2 != 0 {
		return nil, fmt.Errorf("SetSysctls wants name, value pairs; got %d strings", len(kv))
	}
	var undo []func()
	restore = func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}
	for i := 0; i < len(kv); i += 2 {
		name, value := kv[i], kv[i+1]
		old, err := Sysctl(name)
		if err != nil {
			restore()
			return nil, err
		}
		if err := SetSysctl(name, value); err != nil {
			restore()
			return nil, err
		}
		undo = append(undo, func() { _ = SetSysctl(name, old) })
	}
	return restore, nil
}
