package netns

import (
	"fmt"
	"os"
	"os/exec"
	"testing"
)

// SkipOrFail skips the test with the reason, unless the environment variable CI is "true": CI
// must run every test tier, so there a missing prerequisite fails the test instead.
func SkipOrFail(t testing.TB, format string, args ...any) {
	t.Helper()
	reason := fmt.Sprintf(format, args...)
	if mustNotSkip(os.Getenv("CI")) {
		t.Fatalf("CI=true, so this cannot be skipped: %s", reason)
	}
	t.Skip(reason)
}

// mustNotSkip is SkipOrFail's rule.
func mustNotSkip(ci string) bool { return ci == "true" }

// Require checks what every test of this package needs: root (network namespaces, veth and
// bridges) and iproute2's ip with its netns command. It calls SkipOrFail when one is missing.
func Require(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		SkipOrFail(t, "needs root to create network namespaces (run the tests as root, e.g. sudo -E go test)")
	}
	RequireCommand(t, "ip", "iproute2")
	if out, err := exec.Command("ip", "netns", "list").CombinedOutput(); err != nil {
		SkipOrFail(t, "needs `ip netns` (iproute2 with network namespace support; a busybox ip lacks it): ip netns list: %v: %s", err, out)
	}
}

// RequireCommand checks that an executable is on PATH; pkg names the package that provides it.
func RequireCommand(t testing.TB, name, pkg string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		SkipOrFail(t, "needs %s (install %s): %v", name, pkg, err)
	}
}
