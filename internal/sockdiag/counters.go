//go:build linux

package sockdiag

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
)

// Counter returns one of the kernel's SNMP/netstat counters of the calling thread's network
// namespace, e.g. Counter("TcpExt", "ListenOverflows") or Counter("Tcp", "ActiveOpens"), as
// `nstat -az` shows them. It reads /proc/thread-self/net/netstat and /proc/thread-self/net/snmp
// (/proc/self/net would describe the main thread's namespace, which may differ).
func Counter(group, name string) (int64, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	for _, file := range []string{"/proc/thread-self/net/netstat", "/proc/thread-self/net/snmp"} {
		b, err := os.ReadFile(file)
		if err != nil {
			return 0, err
		}
		if v, ok := findCounter(string(b), group, name); ok {
			return v, nil
		}
	}
	return 0, fmt.Errorf("kernel counter %s:%s not found in /proc/net/netstat or /proc/net/snmp", group, name)
}

// findCounter scans the two-line format of /proc/net/netstat: a header line "Group: A B C"
// followed by a values line "Group: 1 2 3".
func findCounter(text, group, name string) (int64, bool) {
	lines := strings.Split(text, "\n")
	for i := 0; i+1 < len(lines); i++ {
		head := strings.Fields(lines[i])
		vals := strings.Fields(lines[i+1])
		if len(head) == 0 || head[0] != group+":" || len(vals) != len(head) || vals[0] != head[0] {
			continue
		}
		for j := 1; j < len(head); j++ {
			if head[j] == name {
				v, err := strconv.ParseInt(vals[j], 10, 64)
				return v, err == nil
			}
		}
		i++ // skip the values line
	}
	return 0, false
}
