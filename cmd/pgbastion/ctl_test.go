package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestCtlRemoveSendsAnAuthenticatedDelete(t *testing.T) {
	var got string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		got = r.Method + " " + r.URL.EscapedPath() + " " + r.Header.Get("Authorization") + " " + string(body)
		if r.URL.Path == "/members/primary" {
			w.WriteHeader(http.StatusPreconditionFailed)
		}
		_, _ = w.Write([]byte(`{"removed": "x"}`))
	}))
	defer srv.Close()
	var out, errOut bytes.Buffer
	if code := Main([]string{"ctl", "--api", srv.URL, "--token", "t0k", "remove", "db 3"}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	if want := "DELETE /members/db%203 Bearer t0k "; got != want {
		t.Fatalf("request %q, want %q", got, want)
	}
	if code := Main([]string{"ctl", "--api", srv.URL, "--token", "t0k", "remove", "primary"}, &out, &errOut); code != 1 ||
		!strings.Contains(errOut.String(), "412") {
		t.Fatalf("refused removal: exit %d, %q", code, errOut.String())
	}
	if code := Main([]string{"ctl", "--api", srv.URL, "remove"}, &out, &errOut); code != 1 || !strings.Contains(errOut.String(), "usage") {
		t.Fatalf("missing name: exit %d, %q", code, errOut.String())
	}
}

func TestCtlListFlagsASilentNode(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"primary": "n2", "raft_leader": "n2", "nodes": [
			{"name": "n1", "status": {"role": "primary", "state": "RUNNING_PRIMARY", "healthy": true}, "status_age_seconds": 42.3},
			{"name": "n2", "status": {"role": "primary", "state": "RUNNING_PRIMARY", "healthy": true}, "status_age_seconds": 0.4,
			 "pending_restart": ["shared_buffers", "max_connections"]}]}`))
	}))
	defer srv.Close()
	var out, errOut bytes.Buffer
	if code := Main([]string{"ctl", "--api", srv.URL, "list"}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	lines := strings.Split(out.String(), "\n")
	if len(lines) < 3 || !strings.Contains(lines[1], "no report for 42s") || strings.Contains(lines[2], "no report") ||
		!strings.Contains(lines[2], "pending restart (shared_buffers, max_connections)") || strings.Contains(lines[1], "pending") {
		t.Fatalf("ctl list:\n%s", out.String())
	}
}

func TestCtlConfigSetWaitsAndReportsRefusals(t *testing.T) {
	var patched string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case http.MethodPatch:
			if r.Header.Get("Authorization") != "Bearer tok" {
				w.WriteHeader(http.StatusUnauthorized)
				_, _ = w.Write([]byte(`{"error": "missing or wrong bearer token"}`))
				return
			}
			b, _ := io.ReadAll(r.Body)
			patched = string(b)
			_, _ = w.Write([]byte(`{"version": 2}`))
		case http.MethodGet:
			_, _ = w.Write([]byte(`{"version": 2, "parameters": {"work_mem": "64MB"}, "nodes": [
				{"name": "n1", "applied_version": 2, "applied": true, "pending_restart": ["shared_buffers"]},
				{"name": "n2", "applied_version": 2, "applied": false, "error": "work_mem: invalid value"}]}`))
		}
	}))
	defer srv.Close()
	var out, errOut bytes.Buffer
	code := Main([]string{"ctl", "--api", srv.URL, "--token", "tok", "config", "set", "work_mem=64MB", "shared_buffers=1GB"}, &out, &errOut)
	if code == 0 || !strings.Contains(errOut.String(), "refused part of the configuration on n2") {
		t.Fatalf("exit %d, stderr %s", code, errOut.String())
	}
	if !strings.Contains(patched, `"work_mem":"64MB"`) || !strings.Contains(patched, `"shared_buffers":"1GB"`) {
		t.Fatalf("PATCH body %s", patched)
	}
	if s := out.String(); !strings.Contains(s, "version 2 accepted") || !strings.Contains(s, "shared_buffers") || !strings.Contains(s, "work_mem: invalid value") {
		t.Fatalf("output:\n%s", s)
	}

	out.Reset()
	errOut.Reset()
	if code := Main([]string{"ctl", "--api", srv.URL, "config", "set", "work_mem"}, &out, &errOut); code == 0 || !strings.Contains(errOut.String(), "not NAME=VALUE") {
		t.Fatalf("a bare name: exit %d, %s", code, errOut.String())
	}
	if code := Main([]string{"ctl", "--api", srv.URL, "config", "reset", "work_mem"}, &out, &errOut); code == 0 || !strings.Contains(errOut.String(), "bearer token") || !strings.Contains(errOut.String(), "--token") {
		t.Fatalf("without the token: exit %d, %s", code, errOut.String())
	}
}

func TestCtlEventsPrintsATimeline(t *testing.T) {
	var query string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		query = r.URL.RawQuery
		_, _ = w.Write([]byte(`{"events": [
			{"at": "2026-11-26T03:00:01Z", "severity": "critical", "type": "no_primary", "message": "no primary: db1 no longer takes writes"},
			{"at": "2026-11-26T03:00:02Z", "severity": "warning", "type": "primary_changed", "message": "db2 is the primary, replacing db1 (failover), timeline 2"}]}`))
	}))
	defer srv.Close()
	var out, errOut bytes.Buffer
	if code := Main([]string{"ctl", "--api", srv.URL, "events", "--severity", "warning"}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	if query != "limit=50&severity=warning" {
		t.Errorf("query %q", query)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "TIME") ||
		!strings.Contains(lines[2], "warning   primary_changed  db2 is the primary, replacing db1 (failover), timeline 2") ||
		!strings.HasPrefix(lines[1], time.Date(2026, 11, 26, 3, 0, 1, 0, time.UTC).Local().Format("2006-01-02 15:04:05 MST")+"  critical") {
		t.Errorf("output:\n%s", out.String())
	}
}

func TestCtlHistory(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/history" {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write([]byte(`{"history": [
			{"at": "2026-11-26T03:00:00Z", "index": 5, "new_primary": "db1", "reason": "bootstrap"},
			{"at": "2026-11-26T03:10:00Z", "index": 90, "new_primary": "db2", "old_primary": "db1", "kind": "failover", "timeline": 2, "lsn": 50331816, "reason": "primary db1 is down"},
			{"at": "2026-11-26T04:00:00Z", "index": 120, "new_primary": "db1", "old_primary": "db2", "kind": "switchover", "operation_id": 3, "timeline": 3, "lsn": 50331900, "reason": "switchover requested"}],
			"operations": [{"id": 3, "kind": "switchover", "trace": {"request_id": "maint-42", "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"}}]}`))
	}))
	defer srv.Close()
	var out, errOut bytes.Buffer
	if code := Main([]string{"ctl", "--api", srv.URL, "history"}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 4 || !strings.Contains(lines[0], "BY          REQUEST   REASON") ||
		!strings.Contains(lines[1], "-   -          db1      -         -           -         bootstrap") ||
		!strings.HasSuffix(lines[2], "  2   0/30000A8  db2      db1       failover    -         primary db1 is down") ||
		!strings.HasSuffix(lines[3], "  3   0/30000FC  db1      db2       switchover  maint-42  switchover requested") {
		t.Errorf("output:\n%s", out.String())
	}
}

func TestCtlEventsFollow(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/cluster/events":
			_, _ = w.Write([]byte(`{"events": [{"at": "2026-11-26T03:00:01Z", "severity": "warning", "type": "maintenance", "message": "maintenance mode on"}]}`))
		case "/events":
			w.Header().Set("Content-Type", "text/event-stream")
			_, _ = w.Write([]byte("event: state\nid: 7\ndata: {\"index\": 7}\n\n" +
				"event: cluster_event\ndata: {\"at\": \"2026-11-26T03:00:02Z\", \"severity\": \"info\", \"type\": \"node_state\", \"message\": \"db3: STOPPED → RUNNING_REPLICA\"}\n\n" +
				": keepalive\n\n" +
				"event: cluster_event\ndata: {\"at\": \"2026-11-26T03:00:03Z\", \"severity\": \"critical\", \"type\": \"no_primary\", \"message\": \"no primary: db1 no longer takes writes\"}\n\n"))
		}
	}))
	defer srv.Close()
	var out, errOut bytes.Buffer
	code := Main([]string{"ctl", "--api", srv.URL, "events", "--follow", "--severity", "warning"}, &out, &errOut)
	if code != 1 || !strings.Contains(errOut.String(), "the event stream ended") {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 3 || !strings.Contains(lines[1], "maintenance mode on") ||
		!strings.HasSuffix(lines[2], "critical  no_primary          no primary: db1 no longer takes writes") {
		t.Errorf("output:\n%s", out.String())
	}
}

func TestCtlPoolsShowsEachPoolAndWhatToNotice(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/proxy" {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write([]byte(`{"clients": 1003, "writes_to": "10.0.0.1:5432", "pools": [
			{"backend": "10.0.0.1:5432", "database": "app", "user": "web", "clients": 1001, "servers_active": 19, "servers_idle": 0,
			 "servers_held_for_cancel": 1, "cancels_in_flight": 1, "size": 20, "reserve": 5, "clients_waiting": 980, "max_wait_seconds": 0.0813, "paused": false,
			 "loops": [{"servers": 10, "servers_idle": 0, "clients_waiting": 490, "max_wait_seconds": 0.0813},
			           {"servers": 10, "servers_idle": 0, "clients_waiting": 490, "max_wait_seconds": 0.07}]},
			{"backend": "10.0.0.1:5432", "database": "app", "user": "batch", "servers_active": 0, "servers_idle": 2,
			 "size": 20, "reserve": 0, "clients_waiting": 0, "max_wait_seconds": 0, "paused": true, "loops": []}]}`))
	}))
	defer srv.Close()
	var out, errOut bytes.Buffer
	if code := Main([]string{"ctl", "--api", srv.URL, "pools", "--loops"}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 6 {
		t.Fatalf("ctl pools --loops: %d lines:\n%s", len(lines), out.String())
	}
	for i, want := range [][]string{
		{"1003 client connections; writes go to 10.0.0.1:5432"},
		{"BACKEND", "MAX WAIT"},
		{"app", "web", "1001", "19", "20+5", "980", "81ms", "full: clients wait", "1 held until a cancel lands"},
		{"loop 0", "490", "81ms"},
		{"loop 1", "490", "70ms"},
		{"batch", "paused: new transactions wait"},
	} {
		for _, w := range want {
			if !strings.Contains(lines[i], w) {
				t.Fatalf("line %d %q lacks %q:\n%s", i, lines[i], w, out.String())
			}
		}
	}
	if strings.Contains(lines[5], "full") {
		t.Fatalf("an idle pool is not full: %q", lines[5])
	}
}

func TestCtlPoolsWithoutAProxySaysSo(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte(`{"error": "no such endpoint: /proxy"}`))
	}))
	defer srv.Close()
	var out, errOut bytes.Buffer
	if code := Main([]string{"ctl", "--api", srv.URL, "pools"}, &out, &errOut); code != 1 ||
		!strings.Contains(errOut.String(), "no such endpoint: /proxy") {
		t.Fatalf("exit %d: %q", code, errOut.String())
	}
}

func TestCtlReinitShowsTheCloneAsItGoes(t *testing.T) {
	defer func(d time.Duration) { cloneProgressEvery = d }(cloneProgressEvery)
	cloneProgressEvery = 0
	var mu sync.Mutex
	polls := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		switch r.URL.Path {
		case "/reinitialize":
			w.WriteHeader(http.StatusAccepted)
			_, _ = w.Write([]byte(`{"id": 5}`))
		case "/restarts":
			polls++
			status := "pending"
			if polls > 1 {
				status = "done"
			}
			_, _ = w.Write([]byte(`{"restarts": [{"id": 5, "status": "` + status + `"}]}`))
		case "/nodes":
			st := `"state": "STOPPED", "reason": "reinitialising at an operator's request (5): cloning from db1, 12 GiB copied of about 40 GiB (30 %) in 4m0s"`
			if polls > 1 {
				st = `"state": "RUNNING_REPLICA", "healthy": true`
			}
			_, _ = w.Write([]byte(`{"nodes": [{"name": "db3", "status": {` + st + `}}]}`))
		}
	}))
	defer srv.Close()
	var out, errOut bytes.Buffer
	if code := Main([]string{"ctl", "--api", srv.URL, "reinit", "--yes", "db3"}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	if !regexp.MustCompile(`^reinitialising db3 from the primary ... \n  12 GiB copied of about 40 GiB \(30 %\) in 4m0s ... running again as a replica \([0-9.]+s\)\n$`).MatchString(out.String()) {
		t.Fatalf("ctl reinit:\n%s", out.String())
	}
}

func TestCtlConnectionsPutsWaitingClientsFirst(t *testing.T) {
	now := time.Now().UTC()
	ago := func(d time.Duration) string { return now.Add(-d).Format(time.RFC3339Nano) }
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/proxy/connections" {
			http.NotFound(w, r)
			return
		}
		_, _ = fmt.Fprintf(w, `{"connections": [
			{"kind": "client", "id": "c1", "user": "web", "database": "app", "state": "active", "addr": "10.0.0.9:1111", "connected_at": %q, "last_request_at": %q, "loop": 0},
			{"kind": "client", "id": "c2", "link": "s1", "user": "web", "database": "app", "state": "active", "addr": "10.0.0.9:2222", "connected_at": %q, "backend_pid": 4242, "application_name": "shop", "tls": "TLSv1.3/TLS_AES_128_GCM_SHA256", "loop": 1},
			{"kind": "client", "id": "c3", "user": "web", "database": "app", "state": "waiting", "wait_seconds": 1.5, "addr": "10.0.0.9:3333", "connected_at": %q, "loop": 0},
			{"kind": "server", "id": "s1", "link": "c2", "user": "web", "database": "app", "state": "active", "addr": "10.0.0.1:5432", "connected_at": %q, "backend_pid": 4242, "prepared_statements": 2, "loop": 1}]}`,
			ago(2*time.Hour), ago(3*time.Second), ago(90*time.Second), ago(5*time.Second), ago(time.Hour))
	}))
	defer srv.Close()
	var out, errOut bytes.Buffer
	if code := Main([]string{"ctl", "--api", srv.URL, "connections"}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 8 {
		t.Fatalf("ctl connections: %d lines:\n%s", len(lines), out.String())
	}
	for i, want := range [][]string{
		{"3 client connections, 1 waiting for a server; 1 server connections"},
		{"CLIENT", "SERVER PID", "TLS", "ID"},
		{"10.0.0.9:3333", "waiting", "1.5s", "5s ago", " c3"},
		{"10.0.0.9:2222", "active", "4242", "shop", "1m30s ago", "TLSv1.3", " c2"},
		{"10.0.0.9:1111", "active", "2h0m0s ago", "3s ago", " c1"},
		{""},
		{"SERVER", "PID", "CLIENT", "PREPARED"},
		{"10.0.0.1:5432", "active", "4242", "10.0.0.9:2222", "2", "1h0m0s ago"},
	} {
		for _, w := range want {
			if !strings.Contains(lines[i], w) {
				t.Fatalf("line %d %q lacks %q:\n%s", i, lines[i], w, out.String())
			}
		}
	}

	out.Reset()
	if code := Main([]string{"ctl", "--api", srv.URL, "conns", "--waiting"}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	if s := out.String(); strings.Count(s, "\n") != 3 || !strings.Contains(s, "10.0.0.9:3333") || strings.Contains(s, "SERVER\t") || strings.Contains(s, "10.0.0.1:5432") {
		t.Fatalf("ctl conns --waiting:\n%s", s)
	}
}

// ctl switchover --scheduled books the switchover (scheduled_at in the body), --cancel sends
// DELETE /switchover, and ctl list shows a booking.
func TestCtlScheduledSwitchover(t *testing.T) {
	var requests []string
	at := time.Now().Add(2 * time.Hour).UTC().Truncate(time.Second)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		requests = append(requests, r.Method+" "+r.URL.Path+" "+strings.TrimSpace(string(b)))
		switch {
		case r.Method == http.MethodGet && r.URL.Path == "/nodes":
			_, _ = fmt.Fprintf(w, `{"primary": "n1", "raft_leader": "n1", "nodes": [{"name": "n1", "status": {"role": "primary"}}],
				"scheduled_switchover": {"leader": "n1", "candidate": "n2", "at": %q}}`, at.Format(time.RFC3339))
		case r.Method == http.MethodPost:
			w.WriteHeader(http.StatusAccepted)
			_, _ = w.Write([]byte(`{"message": "switchover from n1 to n2 scheduled"}`))
		default:
			_, _ = w.Write([]byte(`{"message": "scheduled switchover cancelled"}`))
		}
	}))
	defer srv.Close()
	var out, errOut bytes.Buffer
	when := at.Format(time.RFC3339)
	if code := Main([]string{"ctl", "--api", srv.URL, "--token", "tok", "switchover", "--candidate", "n2", "--scheduled", when}, &out, &errOut); code != 0 {
		t.Fatalf("switchover --scheduled: exit %d: %s", code, errOut.String())
	}
	if code := Main([]string{"ctl", "--api", srv.URL, "--token", "tok", "switchover", "--cancel"}, &out, &errOut); code != 0 {
		t.Fatalf("switchover --cancel: exit %d: %s", code, errOut.String())
	}
	out.Reset()
	if code := Main([]string{"ctl", "--api", srv.URL, "list"}, &out, &errOut); code != 0 {
		t.Fatalf("list: exit %d: %s", code, errOut.String())
	}
	want := []string{
		`POST /switchover {"candidate":"n2","leader":"","scheduled_at":"` + when + `"}`,
		"DELETE /switchover ",
		"GET /nodes ",
	}
	if strings.Join(requests, "\n") != strings.Join(want, "\n") {
		t.Errorf("requests:\n%s\nwant:\n%s", strings.Join(requests, "\n"), strings.Join(want, "\n"))
	}
	if !strings.Contains(out.String(), "switchover from n1 to n2 scheduled at "+when+", in 2h0m0s") {
		t.Errorf("ctl list:\n%s", out.String())
	}
}

// ctl proxy pause/resume name a database when given one.
func TestCtlProxyPauseOneDatabase(t *testing.T) {
	var requests []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		requests = append(requests, r.Method+" "+r.URL.Path+" "+strings.TrimSpace(string(b)))
		_, _ = w.Write([]byte(`{"drained": true, "message": "database \"app\" paused: no transaction holds a server connection"}`))
	}))
	defer srv.Close()
	var out, errOut bytes.Buffer
	for _, args := range [][]string{{"pause", "--wait", "5s", "app"}, {"resume", "app"}, {"resume"}} {
		if code := Main(append([]string{"ctl", "--api", srv.URL, "--token", "tok", "proxy"}, args...), &out, &errOut); code != 0 {
			t.Fatalf("ctl proxy %v: exit %d: %s", args, code, errOut.String())
		}
	}
	want := []string{
		`POST /proxy/pause {"database":"app","wait_seconds":5}`,
		`POST /proxy/resume {"database":"app"}`,
		`POST /proxy/resume {}`,
	}
	if strings.Join(requests, "\n") != strings.Join(want, "\n") {
		t.Errorf("requests:\n%s\nwant:\n%s", strings.Join(requests, "\n"), strings.Join(want, "\n"))
	}
	if !strings.Contains(out.String(), "database app resumed") {
		t.Errorf("output:\n%s", out.String())
	}
	if code := Main([]string{"ctl", "--api", srv.URL, "proxy", "pause", "a", "b"}, &out, &errOut); code == 0 {
		t.Error("ctl proxy pause with two databases succeeded")
	}
}

func TestCtlHealthExitsByTheCheck(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/liveness":
			_, _ = w.Write([]byte(`{"status": "alive"}`))
		case "/primary":
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte(`{"name": "db2", "role": "replica", "state": "RUNNING_REPLICA", "healthy": true}`))
		default:
			w.WriteHeader(http.StatusNotFound)
		}
	}))
	defer srv.Close()
	var out, errOut bytes.Buffer
	if code := Main([]string{"ctl", "--api", srv.URL, "health"}, &out, &errOut); code != 0 || out.String() != "liveness: 200 OK (status alive)\n" {
		t.Fatalf("liveness: exit %d, out %q, err %q", code, out.String(), errOut.String())
	}
	out.Reset()
	if code := Main([]string{"ctl", "--api", srv.URL, "health", "--check", "primary"}, &out, &errOut); code != 1 ||
		!strings.Contains(errOut.String(), "primary: 503 Service Unavailable (role replica, state RUNNING_REPLICA)") {
		t.Fatalf("primary on a replica: exit %d, out %q, err %q", code, out.String(), errOut.String())
	}
	errOut.Reset()
	if code := Main([]string{"ctl", "--api", srv.URL, "health", "--check", "bogus"}, &out, &errOut); code != 1 ||
		!strings.Contains(errOut.String(), `unknown check "bogus"`) {
		t.Fatalf("unknown check: exit %d, err %q", code, errOut.String())
	}
	srv.Close()
	errOut.Reset()
	if code := Main([]string{"ctl", "--api", srv.URL, "health", "--timeout", "1s"}, &out, &errOut); code != 1 ||
		!strings.Contains(errOut.String(), "cannot reach the API") {
		t.Fatalf("API down: exit %d, err %q", code, errOut.String())
	}
}

func TestCtlTopologyShowsWhoStreamsFromWhom(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"primary": "n1", "nodes": [
			{"name": "n1", "pg_host": "10.0.0.1", "pg_port": 5432, "status": {"role": "primary", "state": "RUNNING_PRIMARY"}},
			{"name": "n2", "pg_host": "10.0.0.2", "pg_port": 5432, "status": {"role": "replica", "state": "RUNNING_REPLICA", "following": "n1", "lag_bytes": 16}},
			{"name": "n3", "pg_host": "10.0.0.3", "pg_port": 5432, "status": {"role": "replica", "state": "RUNNING_REPLICA", "following": "n2", "lag_bytes": 48}},
			{"name": "n4", "pg_host": "10.0.0.4", "pg_port": 5432, "status": {"role": "replica", "state": "STOPPED"}}]}`))
	}))
	defer srv.Close()
	var out, errOut bytes.Buffer
	if code := Main([]string{"ctl", "--api", srv.URL, "topology"}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	want := []string{"NODE", "n1 ", "+ n2 ", "  + n3 ", "? n4 "}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != len(want) {
		t.Fatalf("ctl topology:\n%s", out.String())
	}
	for i, w := range want {
		if !strings.HasPrefix(lines[i], w) {
			t.Fatalf("line %d %q, want it to start with %q:\n%s", i, lines[i], w, out.String())
		}
	}
}

// ctl config hba set reads a pg_hba.conf-like file (comments and blank lines skipped), PUTs
// the lines, waits for every node and fails when one refused them.
func TestCtlConfigHBA(t *testing.T) {
	var put string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case http.MethodPut:
			b, _ := io.ReadAll(r.Body)
			put = string(b)
			_, _ = w.Write([]byte(`{"version": 3}`))
		case http.MethodGet:
			_, _ = w.Write([]byte(`{"version": 3, "lines": ["hostssl all all 10.0.0.0/8 scram-sha-256"], "nodes": [
				{"name": "n1", "applied_version": 3, "applied": true, "outcome": "pg_hba.conf rewritten and loaded by PostgreSQL"},
				{"name": "n2", "applied_version": 3, "applied": true, "local": true, "outcome": "this node's own postgresql.pg_hba takes precedence"},
				{"name": "n3", "applied_version": 3, "applied": false, "error": "PostgreSQL refuses the cluster-wide pg_hba[0]: invalid"}]}`))
		}
	}))
	defer srv.Close()
	file := filepath.Join(t.TempDir(), "hba")
	writeFile(t, file, "# cluster access\n\nhostssl all all 10.0.0.0/8 scram-sha-256   \n")
	var out, errOut bytes.Buffer
	code := Main([]string{"ctl", "--api", srv.URL, "--token", "tok", "config", "hba", "set", file}, &out, &errOut)
	if code == 0 || !strings.Contains(errOut.String(), "refused the pg_hba list on n3") {
		t.Fatalf("exit %d, stderr %s", code, errOut.String())
	}
	if strings.TrimSpace(put) != `{"lines":["hostssl all all 10.0.0.0/8 scram-sha-256"]}` {
		t.Fatalf("PUT body %s", put)
	}
	for _, want := range []string{"version 3 accepted", "hostssl all all 10.0.0.0/8", "n2    true     3        true", "invalid"} {
		if !strings.Contains(out.String(), want) {
			t.Fatalf("output lacks %q:\n%s", want, out.String())
		}
	}
	writeFile(t, file, "# only comments\n")
	if code := Main([]string{"ctl", "--api", srv.URL, "config", "hba", "set", file}, &out, &errOut); code == 0 || !strings.Contains(errOut.String(), "ctl config hba remove") {
		t.Fatalf("an empty file: exit %d, %s", code, errOut.String())
	}
}
