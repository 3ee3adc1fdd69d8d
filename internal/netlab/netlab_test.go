//go:build linux

package netlab

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// The package's own tests cannot use labtest (it imports netlab), so TestMain enters the
// namespace itself.
func TestMain(m *testing.M) {
	if os.Getenv(envFallbackProbe) == "1" {
		fallbackProbe()
		return
	}
	env := Enter()
	if !env.Private {
		println("netlab tests: " + env.Reason)
	}
	os.Exit(m.Run())
}

func needPrivate(t *testing.T) {
	t.Helper()
	if !Current().Private {
		t.Skip("needs a private network namespace: " + Enter().Reason)
	}
}

// Inside the lab namespace loopback is up and sysctls are the namespace's own: writing one
// changes what this namespace reads back.
func TestSysctlWriteInPrivateNamespace(t *testing.T) {
	needPrivate(t)
	restore, err := SetSysctls("net.ipv4.tcp_fin_timeout", "7")
	require.NoError(t, err)
	v, err := Sysctl("net.ipv4.tcp_fin_timeout")
	require.NoError(t, err)
	assert.Equal(t, "7", v)
	restore()
	v, err = Sysctl("net.ipv4.tcp_fin_timeout")
	require.NoError(t, err)
	assert.NotEqual(t, "7", v, "restore put the old value back")
}

// The guard compares the calling thread's namespace with the host's: pretend ours is the
// host's and the write must be refused, leaving the value as it was.
func TestSysctlWriteRefusedInHostNamespace(t *testing.T) {
	needPrivate(t)
	ino, err := threadNetnsInode()
	require.NoError(t, err)
	t.Setenv(envHostNetns, strconv.FormatUint(ino, 10))
	before, err := Sysctl("net.ipv4.tcp_fin_timeout")
	require.NoError(t, err)
	err = SetSysctl("net.ipv4.tcp_fin_timeout", "9")
	require.ErrorIs(t, err, ErrNotPrivate)
	after, err := Sysctl("net.ipv4.tcp_fin_timeout")
	require.NoError(t, err)
	assert.Equal(t, before, after)
}

func TestSysctlNamesOutsideNetAreRejected(t *testing.T) {
	for _, name := range []string{"kernel.hostname", "net/../kernel/x", "net.ipv4.a b", "vm.swappiness"} {
		_, err := sysctlPath(name)
		assert.Error(t, err, name)
	}
	p, err := sysctlPath("net.core.somaxconn")
	require.NoError(t, err)
	assert.Equal(t, "/proc/sys/net/core/somaxconn", p)
}

func TestLoopbackIsUp(t *testing.T) {
	needPrivate(t)
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	defer unix.Close(fd)
	require.NoError(t, unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}))
	sa, err := unix.Getsockname(fd)
	require.NoError(t, err)
	require.NoError(t, unix.Sendto(fd, []byte("ping"), 0, sa), "loopback delivers to itself")
	buf := make([]byte, 8)
	require.NoError(t, unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 2}))
	n, _, err := unix.Recvfrom(fd, buf, 0)
	require.NoError(t, err)
	assert.Equal(t, "ping", string(buf[:n]))
}

// A second host is a separate namespace: its own sysctls, its own port space, reachable only
// over the veth pair.
func TestHostJoinedByVeth(t *testing.T) {
	needPrivate(t)
	h, err := NewHost("peer")
	require.NoError(t, err)
	defer h.Close()
	link, err := h.Connect(netip.MustParsePrefix("192.0.2.1/24"), netip.MustParsePrefix("192.0.2.2/24"))
	require.NoError(t, err)

	// Sysctls are per namespace: a write on the peer is not seen in the lab namespace.
	labValue, err := Sysctl("net.ipv4.tcp_syn_retries")
	require.NoError(t, err)
	require.NoError(t, h.Do(func() error { return SetSysctl("net.ipv4.tcp_syn_retries", "2") }))
	var peerValue string
	require.NoError(t, h.Do(func() (err error) { peerValue, err = Sysctl("net.ipv4.tcp_syn_retries"); return err }))
	assert.Equal(t, "2", peerValue)
	now, err := Sysctl("net.ipv4.tcp_syn_retries")
	require.NoError(t, err)
	assert.Equal(t, labValue, now)

	// A UDP datagram crosses the veth from the lab to the peer host.
	var peerFD int
	require.NoError(t, h.Do(func() error {
		var err error
		peerFD, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		return unix.Bind(peerFD, &unix.SockaddrInet4{Port: 7777, Addr: link.PeerAddr.Addr().As4()})
	}))
	defer unix.Close(peerFD)
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	defer unix.Close(fd)
	require.NoError(t, unix.Sendto(fd, []byte("over veth"), 0, &unix.SockaddrInet4{Port: 7777, Addr: link.PeerAddr.Addr().As4()}))
	require.NoError(t, unix.SetsockoptTimeval(peerFD, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 3}))
	buf := make([]byte, 32)
	n, from, err := unix.Recvfrom(peerFD, buf, 0)
	require.NoError(t, err)
	assert.Equal(t, "over veth", string(buf[:n]))
	assert.Equal(t, link.LocalAddr.Addr().As4(), from.(*unix.SockaddrInet4).Addr, "source is the lab's veth address")

	// The peer's address is not local to the lab namespace: binding it fails.
	err = unix.Bind(fd, &unix.SockaddrInet4{Addr: link.PeerAddr.Addr().As4()})
	assert.ErrorIs(t, err, unix.EADDRNOTAVAIL)
}

func TestHostClosedRefusesWork(t *testing.T) {
	needPrivate(t)
	h, err := NewHost("short-lived")
	require.NoError(t, err)
	h.Close()
	done := make(chan error, 1)
	go func() { done <- h.Do(func() error { return nil }) }()
	select {
	case err := <-done:
		assert.Error(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("Do on a closed host hung")
	}
}

func TestDiffSysctls(t *testing.T) {
	before := map[string]string{"/proc/sys/net/ipv4/a": "1", "/proc/sys/net/core/b": "2"}
	after := map[string]string{"/proc/sys/net/ipv4/a": "1", "/proc/sys/net/core/b": "3"}
	assert.Equal(t, []string{`net.core.b "2" → "3"`}, diffSysctls(before, after))
	assert.Empty(t, diffSysctls(before, before))
}

// Two snapshots of the host taken back to back agree, so the check Enter makes after every
// namespaced run cannot fail for values that drift on their own.
func TestHostSnapshotIsStable(t *testing.T) {
	a := snapshotHostSysctls()
	b := snapshotHostSysctls()
	assert.NotEmpty(t, a)
	assert.Empty(t, diffSysctls(a, b))
}

// envFallbackProbe makes the test binary act as a probe of the fallback path instead of
// running tests.
const envFallbackProbe = "SOCKLAB_TEST_FALLBACK_PROBE"

// fallbackProbe runs in a throwaway user namespace whose user.max_user_namespaces it sets to 0
// (a limit of that namespace, not of the host), so that creating the lab's namespaces fails the
// way it does on systems that forbid unprivileged user namespaces. It was not started by Enter,
// so it also checks that the sysctl guard refuses there.
func fallbackProbe() {
	if err := os.WriteFile("/proc/sys/user/max_user_namespaces", []byte("0"), 0); err != nil {
		fmt.Println("probe-setup-failed:", err)
		os.Exit(3)
	}
	env := Enter()
	fmt.Printf("private=%v\nreason=%s\n", env.Private, env.Reason)
	err := SetSysctl("net.ipv4.tcp_fin_timeout", "5")
	fmt.Printf("sysctl-refused=%v\n", errors.Is(err, ErrNotPrivate))
	os.Exit(0)
}

// Where user namespaces are forbidden, Enter does not fail the program: it returns on the host
// with one sentence saying why, and netlab refuses to write sysctls there.
func TestFallbackWhenNamespacesAreForbidden(t *testing.T) {
	cmd := exec.Command("/proc/self/exe")
	cmd.Env = append(os.Environ(), envFallbackProbe+"=1")
	cmd.Env = slicesWithout(cmd.Env, envChild+"=1") // start as if on the host
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  syscall.CLONE_NEWUSER,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getuid(), Size: 1}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getgid(), Size: 1}},
	}
	out, err := cmd.CombinedOutput()
	if err != nil && strings.Contains(string(out), "probe-setup-failed") {
		t.Skipf("cannot limit user namespaces here: %s", out)
	}
	if err != nil && errors.Is(err, unix.EPERM) {
		t.Skip("user namespaces unavailable even for the probe")
	}
	require.NoError(t, err, "%s", out)
	t.Logf("probe said:\n%s", out)
	assert.Contains(t, string(out), "private=false")
	assert.Contains(t, string(out), "max_user_namespaces")
	assert.Contains(t, string(out), "sysctl-refused=true")
}

func slicesWithout(env []string, drop string) []string {
	var out []string
	for _, e := range env {
		if e != drop {
			out = append(out, e)
		}
	}
	return out
}

// Another process in the same namespace (a test and the demo it runs) numbers its links from 1
// too: Connect skips a name that is taken instead of failing with "File exists".
func TestConnectSkipsLinkNamesTakenByAnotherProcess(t *testing.T) {
	needPrivate(t)
	taken := fmt.Sprintf("vlab%d", hostSeq.Load()+1)
	require.NoError(t, ip("link", "add", taken, "type", "veth", "peer", "name", "xtaken"))
	defer func() { assert.NoError(t, ip("link", "del", taken)) }()

	h, err := NewHost("peer")
	require.NoError(t, err)
	defer h.Close()
	link, err := h.Connect(netip.MustParsePrefix("192.0.2.5/30"), netip.MustParsePrefix("192.0.2.6/30"))
	require.NoError(t, err)
	assert.NotEqual(t, taken, link.LocalIf)
	assert.Regexp(t, `^vlab\d+$`, link.LocalIf)
}
