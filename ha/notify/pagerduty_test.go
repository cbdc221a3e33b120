package notify

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/pgbastion/pgbastion/ha/fsm"
)

// pdMessage is what the tests read of an Events API v2 message.
type pdMessage struct {
	RoutingKey  string `json:"routing_key"`
	EventAction string `json:"event_action"`
	DedupKey    string `json:"dedup_key"`
	Payload     *struct {
		Summary  string `json:"summary"`
		Source   string `json:"source"`
		Severity string `json:"severity"`
		Class    string `json:"class"`
	} `json:"payload"`
}

// TestPagerDutyAlertsOpenAndClose: a failover pages for the fenced old primary, and the page
// closes when that node runs as a healthy replica again; maintenance mode opens an alert that
// resuming closes; info events page nobody; the integration key is in the body, never in a log.
func TestPagerDutyAlertsOpenAndClose(t *testing.T) {
	pd := newReceiver(t)
	hooks := []Webhook{{URL: pd.srv.URL + "/v2/enqueue", Format: "pagerduty", RoutingKey: "R0UT1NGKEY", Name: "pd"}}
	if err := hooks[0].Validate("webhooks[0]"); err != nil {
		t.Fatal(err)
	}
	var leader atomic.Bool
	leader.Store(true)
	var logs syncBuffer
	n := New(Callbacks{}, hooks, Options{Cluster: "main", Node: "db3", IsLeader: leader.Load, Metrics: metrics.NewSet(),
		RetryBase: 10 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	ctx, cancel := context.WithCancel(context.Background())
	defer n.startWorkers(ctx).Wait()
	defer cancel()

	s0, s1 := failover() // db1 fenced (critical), db2 the healthy primary, primary_changed
	n.observe(s0, s1)
	s2 := next(s1, 30)
	setStatus(s2, "db1", fsm.StateRunningReplica, fsm.RoleReplica, true, 29) // db1 rejoined
	n.observe(s1, s2)
	s3 := next(s2, 31)
	s3.Paused = true
	n.observe(s2, s3)
	s4 := next(s3, 32)
	s4.Paused = false
	n.observe(s3, s4)

	want := []string{
		"trigger main/node/db1 critical", // db1 fenced: it was the primary
		"resolve main/node/db2",          // db2 running and healthy: closes nothing open, harmless
		"resolve main/no_primary",        // a primary is named
		"resolve main/node/db1",          // db1 back as a healthy replica
		"trigger main/maintenance warning",
		"resolve main/maintenance",
	}
	waitFor(t, "the PagerDuty messages", func() bool { return len(pd.received()) == len(want) })
	var got []string
	for _, r := range pd.received() {
		var m pdMessage
		if err := json.Unmarshal(r.body, &m); err != nil {
			t.Fatal(err)
		}
		if m.RoutingKey != "R0UT1NGKEY" {
			t.Errorf("routing key %q", m.RoutingKey)
		}
		line := m.EventAction + " " + m.DedupKey
		if m.Payload != nil {
			line += " " + m.Payload.Severity
			if m.Payload.Source == "" || !strings.HasPrefix(m.Payload.Summary, "main: ") || m.Payload.Class == "" {
				t.Errorf("payload %+v", *m.Payload)
			}
		}
		got = append(got, line)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("messages:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if strings.Contains(logs.String(), "R0UT1NGKEY") {
		t.Error("the routing key reached the log")
	}
}

func TestPagerDutyValidation(t *testing.T) {
	w := Webhook{Format: "pagerduty", RoutingKey: "k"}
	if err := w.Validate("webhooks[0]"); err != nil || w.URL != DefaultPagerDutyURL {
		t.Fatalf("default URL: %q %v", w.URL, err)
	}
	for _, c := range []struct {
		w    Webhook
		want string
	}{
		{Webhook{Format: "pagerduty"}, "routing_key: required with format pagerduty"},
		{Webhook{URL: "http://x", RoutingKey: "k"}, "routing_key: only for format pagerduty"},
		{Webhook{URL: "http://x", Format: "teams"}, "is not json, slack or pagerduty"},
	} {
		if err := c.w.Validate("webhooks[0]"); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", c.w, err, c.want)
		}
	}
	// Filters apply to what opens alerts; what closes one is sent when its opening could be.
	w = Webhook{Format: "pagerduty", RoutingKey: "k", Events: []string{"no_primary"}, MinSeverity: "critical"}
	if err := w.Validate("w"); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		e    Event
		want bool
	}{
		{Event{Type: EvNoPrimary, Severity: SevCritical}, true},
		{Event{Type: EvNoPrimary, Severity: SevWarning}, false},  // a switchover's short gap
		{Event{Type: EvPrimaryChanged, Severity: SevInfo}, true}, // closes no_primary
		{Event{Type: EvMaintenance, Severity: SevWarning}, false},
		{Event{Type: EvConfigChanged, Severity: SevInfo}, false},
	} {
		if got := w.wants(c.e); got != c.want {
			t.Errorf("%s %s: %v, want %v", c.e.Type, c.e.Severity, got, c.want)
		}
	}
}
