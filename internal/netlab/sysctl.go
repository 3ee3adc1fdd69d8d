//go:build linux

package netlab

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sort"
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

// hostSysctlDirs are the trees whose values the lab promises never to change on the host.
var hostSysctlDirs = []string{"/proc/sys/net/ipv4", "/proc/sys/net/ipv6/conf/all", "/proc/sys/net/core"}

// snapshotHostSysctls reads every readable value under hostSysctlDirs from the calling
// thread's namespace (the host, when called before Enter re-executes).
func snapshotHostSysctls() map[string]string {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	snap := map[string]string{}
	for _, dir := range hostSysctlDirs {
		_ = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return nil
			}
			if info, err := d.Info(); err != nil || info.Mode().Perm()&0o444 == 0 {
				return nil // write-only entries such as route/flush
			}
			if b, err := os.ReadFile(path); err == nil {
				snap[path] = strings.TrimSpace(string(b))
			}
			return nil
		})
	}
	return snap
}

// diffSysctls lists the values that differ between two snapshots.
func diffSysctls(before, after map[string]string) []string {
	var changed []string
	for path, old := range before {
		if now, ok := after[path]; ok && now != old {
			name := strings.ReplaceAll(strings.TrimPrefix(path, "/proc/sys/"), "/", ".")
			changed = append(changed, fmt.Sprintf("%s %q → %q", name, old, now))
		}
	}
	sort.Strings(changed)
	return changed
}
