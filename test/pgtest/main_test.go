package pgtest

import (
	"testing"

	"go.uber.org/goleak"
)

// Every postmaster waiter goroutine must be gone once each test's cleanups have run.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
