package admin

import (
	"encoding/json"
	"log/slog"
	"strings"
	"testing"

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
