package admin

import (
	"bufio"
	"encoding/json"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pgbastion/pgbastion/ha/notify"
)

func TestClusterEventsFilters(t *testing.T) {
	evs := []notify.Event{
		{ID: "a", Type: notify.EvNodeState, Severity: notify.SevInfo, Message: "db2: STOPPED → RUNNING_REPLICA"},
		{ID: "b", Type: notify.EvNoPrimary, Severity: notify.SevCritical, Message: "no primary: <db1> no longer takes writes"},
		{ID: "c", Type: notify.EvPrimaryChanged, Severity: notify.SevWarning, Message: "db2 is the primary, replacing db1"},
		{ID: "d", Type: notify.EvMaintenance, Severity: notify.SevWarning, Message: "maintenance mode on"},
	}
	cfg := DefaultConfig()
	cfg.Listen, cfg.MetricsListen = "127.0.0.1:0", ""
	s, err := New(cfg, Sources{Cluster: newCluster(t, "n1"), Events: func() []notify.Event { return evs }}, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	base := startServer(t, s)
	ids := func(query string) string {
		t.Helper()
		code, body := do(t, "GET", base+"/cluster/events"+query, "", "")
		if code != 200 {
			t.Fatalf("%s: %d %s", query, code, body)
		}
		var v struct{ Events []notify.Event }
		if err := json.Unmarshal([]byte(body), &v); err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, e := range v.Events {
			out = append(out, e.ID)
		}
		return strings.Join(out, ",")
	}
	for q, want := range map[string]string{
		"":                                      "a,b,c,d",
		"?severity=warning":                     "b,c,d",
		"?severity=critical":                    "b",
		"?type=primary_changed&type=no_primary": "b,c",
		"?limit=2":                              "c,d",
		"?severity=warning&limit=0":             "",
	} {
		if got := ids(q); got != want {
			t.Errorf("%q: %s, want %s", q, got, want)
		}
	}
	for q, want := range map[string]string{
		"?severity=high": `severity \"high\" is not info, warning or critical`,
		"?type=failover": `type \"failover\" is not an event type`,
		"?limit=-1":      `limit \"-1\" is not a count`,
	} {
		if code, body := do(t, "GET", base+"/cluster/events"+q, "", ""); code != 400 || !strings.Contains(body, want) {
			t.Errorf("%q: %d %s", q, code, body)
		}
	}
}

func TestEventStreamCarriesClusterEvents(t *testing.T) {
	evc := make(chan notify.Event, 1)
	stopped := make(chan struct{})
	cfg := DefaultConfig()
	cfg.Listen, cfg.MetricsListen = "127.0.0.1:0", ""
	s, err := New(cfg, Sources{Cluster: newCluster(t, "n1"),
		SubscribeEvents: func() (<-chan notify.Event, func()) { return evc, func() { close(stopped) } }}, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	base := startServer(t, s)
	resp, err := http.Get(base + "/events")
	if err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(resp.Body)
	if line, _ := r.ReadString('\n'); line != "event: state\n" {
		t.Fatalf("first line %q", line)
	}
	evc <- notify.Event{ID: "primary_changed:9", Type: notify.EvPrimaryChanged, Message: "n2 is the primary"}
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("stream ended before the cluster event: %v", err)
		}
		if line == "event: cluster_event\n" {
			data, _ := r.ReadString('\n')
			if !strings.HasPrefix(data, "data: ") || !strings.Contains(data, `"id":"primary_changed:9"`) || !strings.Contains(data, `"message":"n2 is the primary"`) {
				t.Fatalf("data line %q", data)
			}
			break
		}
	}
	resp.Body.Close()
	// The server learns that the client went away when a write fails: events keep coming.
	deadline := time.After(10 * time.Second)
	for {
		select {
		case evc <- notify.Event{ID: "x", Type: notify.EvMaintenance}:
		case <-stopped:
			return
		case <-deadline:
			t.Fatal("the subscription was not ended when the client went away")
		case <-time.After(10 * time.Millisecond):
		}
	}
}
