package netns

import (
	"fmt"
	"testing"
	"time"
)

// DefaultPoll is how often Eventually checks its condition.
const DefaultPoll = 10 * time.Millisecond

// WaitFor calls cond every poll until it returns nil or timeout has passed. It returns nil as
// soon as cond does, otherwise an error that carries cond's last answer. cond's error says what
// is not true yet ("n2 holds 198.18.0.200: false").
func WaitFor(timeout, poll time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	t := time.NewTimer(poll)
	defer t.Stop()
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if !time.Now().Before(deadline) {
			return fmt.Errorf("still not true after %v: %w", timeout, err)
		}
		t.Reset(min(poll, time.Until(deadline)))
		<-t.C
	}
}

// Eventually is WaitFor with DefaultPoll that fails the test on timeout, prefixed with what the
// test was waiting for.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	if err := WaitFor(timeout, DefaultPoll, cond); err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
}
