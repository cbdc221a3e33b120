// Package await is the tests' replacement for sleeping: it polls a condition until it holds
// or a deadline passes. Nothing outside tests may use it.
package await

import (
	"testing"
	"time"
)

// True polls cond every few milliseconds until it returns true, and fails the test with the
// formatted message if it does not within timeout.
func True(t testing.TB, timeout time.Duration, cond func() bool, format string, args ...any) {
	t.Helper()
	if !Poll(timeout, cond) {
		t.Fatalf("not within %s: "+format, append([]any{timeout}, args...)...)
	}
}

// Poll reports whether cond became true within timeout.
func Poll(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
}
