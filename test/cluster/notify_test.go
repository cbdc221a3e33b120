package cluster

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// hookWatch receives a cluster's webhook events and records its callbacks' runs.
type hookWatch struct {
	srv   *httptest.Server
	calls string // the file every callback appends "NODE ACTION ROLE CLUSTER" to
	prog  string

	mu     sync.Mutex
	events []hookEvent
}

// hookEvent is the part of a webhook event the tests look at.
type hookEvent struct {
	ID         string `json:"id"`
	Type       string `json:"type"`
	Cluster    string `json:"cluster"`
	Sender     string `json:"sender"`
	Primary    string `json:"primary"`
	OldPrimary string `json:"old_primary"`
	Message    string `json:"message"`
	Operation  *struct {
		Kind      string `json:"kind"`
		RequestID string `json:"request_id"`
		TraceID   string `json:"trace_id"`
	} `json:"operation"`
}

// waitCalls waits until every line in want is among the callbacks' runs.
func (h *hookWatch) waitCalls(t *testing.T, want ...string) {
	t.Helper()
	waitTrue(t, time.Minute, func() bool {
		lines := h.callLines()
		for _, w := range want {
			if !slices.Contains(lines, w) {
				return false
			}
		}
		return true
	}, fmt.Sprintf("callbacks %q", want))
}

func newHookWatch(t *testing.T) *hookWatch {
	h := &hookWatch{}
	h.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var e hookEvent
		if err := json.Unmarshal(body, &e); err != nil || r.Header.Get("Authorization") != "Bearer hook-token" {
			http.Error(w, "bad event", http.StatusBadRequest)
			return
		}
		h.mu.Lock()
		h.events = append(h.events, e)
		h.mu.Unlock()
	}))
	t.Cleanup(h.srv.Close)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("webhook events received: %+v\ncallbacks run: %q", h.received(), h.callLines())
		}
	})
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	h.calls = filepath.Join(dir, "calls")
	h.prog = filepath.Join(dir, "callback.sh")
	if err := os.WriteFile(h.calls, nil, 0o666); err != nil {
		t.Fatal(err)
	}
	_ = os.Chmod(h.calls, 0o666)
	script := fmt.Sprintf("#!/bin/sh\necho \"$PGBASTION_NODE $*\" >> '%s'\n", h.calls)
	if err := os.WriteFile(h.prog, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return h
}

// webhooks is the configuration's top-level webhooks section.
func (h *hookWatch) webhooks() string {
	return fmt.Sprintf("webhooks:\n  - {url: %s/events, name: test, headers: {Authorization: Bearer hook-token}}\n", h.srv.URL)
}

// callbacks is the postgresql.callbacks setting.
func (h *hookWatch) callbacks() string {
	return fmt.Sprintf("callbacks: {on_start: %s, on_stop: %s, on_role_change: %s, on_restart: %s, on_reload: %s}\n", h.prog, h.prog, h.prog, h.prog, h.prog)
}

func (h *hookWatch) received() []hookEvent {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.events)
}

func (h *hookWatch) callLines() []string {
	b, _ := os.ReadFile(h.calls)
	return strings.Split(strings.TrimSpace(string(b)), "\n")
}

// checkSwitchover waits for the webhook events and callbacks of a switchover from old to
// cand: the switchover's start and end and the new primary, each delivered once, and the
// role changes on both nodes.
func (h *hookWatch) checkSwitchover(t *testing.T, c *Cluster, old, cand string) {
	t.Helper()
	find := func(typ string) []hookEvent {
		var out []hookEvent
		for _, e := range h.received() {
			if e.Type == typ && (e.Operation == nil || e.Operation.Kind == "switchover") {
				if typ != "primary_changed" || (e.Primary == cand && e.OldPrimary == old) {
					out = append(out, e)
				}
			}
		}
		return out
	}
	waitTrue(t, time.Minute, func() bool {
		return len(find("operation_started")) > 0 && len(find("primary_changed")) > 0 && len(find("operation_finished")) > 0
	}, "the switchover's webhook events")
	for _, typ := range []string{"operation_started", "primary_changed", "operation_finished"} {
		if got := find(typ); len(got) != 1 {
			t.Errorf("%s delivered %d times: %+v", typ, len(got), got)
		}
	}
	e := find("primary_changed")[0]
	if e.Cluster != "pgbastion" || e.Sender == "" || !strings.Contains(e.Message, cand+" is the primary, replacing "+old) {
		t.Errorf("primary_changed: %+v", e)
	}
	for _, e := range h.received() {
		t.Logf("webhook event %s: %s", e.ID, e.Message)
	}
	// Every node derived the same event (GET /cluster/events; ctl events reads it).
	for _, n := range c.Nodes {
		waitTrue(t, 30*time.Second, func() bool {
			resp, err := http.Get("http://" + n.API + "/cluster/events?type=primary_changed")
			if err != nil {
				return false
			}
			defer resp.Body.Close()
			var v struct{ Events []hookEvent }
			if json.NewDecoder(resp.Body).Decode(&v) != nil {
				return false
			}
			return slices.ContainsFunc(v.Events, func(x hookEvent) bool { return x.ID == e.ID && x.Message == e.Message })
		}, n.Name+" lists "+e.ID+" in GET /cluster/events")
	}

	h.waitCalls(t, cand+" on_role_change primary pgbastion", old+" on_role_change replica pgbastion")
	t.Logf("callbacks: %q", h.callLines())
}
