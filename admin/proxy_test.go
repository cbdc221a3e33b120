package admin

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestProxyEndpoint(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Listen, cfg.MetricsListen = "127.0.0.1:0", ""
	var st atomic.Pointer[ProxyStatus]
	st.Store(&ProxyStatus{})
	s, err := New(cfg, Sources{Proxy: func() ProxyStatus { return *st.Load() }}, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	u := startServer(t, s)

	// Before any client: an empty list, not null, so that clients can iterate it.
	code, body := do(t, http.MethodGet, u+"/proxy", "", "")
	if code != http.StatusOK || !strings.Contains(body, `"pools": []`) || !strings.Contains(body, `"writes_to": ""`) {
		t.Fatalf("GET /proxy with no pool: %d %s", code, body)
	}

	st.Store(&ProxyStatus{Clients: 3, WritesTo: "127.0.0.1:5434", Pools: []PoolStatus{{
		Backend: "127.0.0.1:5434", Database: "app", User: "web", Clients: 7, ServersActive: 2, ServersIdle: 1, Size: 20,
		CancelsInFlight: 1, ServersHeldForCancel: 1, ClientsWaiting: 4, MaxWaitSeconds: 0.25, Loops: []PoolLoopStatus{{Servers: 3, ServersIdle: 1, ClientsWaiting: 4, MaxWaitSeconds: 0.25}},
	}}})
	code, body = do(t, http.MethodGet, u+"/proxy", "", "")
	var got map[string]any
	if err := json.Unmarshal([]byte(body), &got); code != http.StatusOK || err != nil {
		t.Fatalf("GET /proxy: %d %v %s", code, err, body)
	}
	pool := got["pools"].([]any)[0].(map[string]any)
	for k, want := range map[string]any{"clients": 7.0, "servers_active": 2.0, "servers_idle": 1.0, "size": 20.0, "clients_waiting": 4.0,
		"max_wait_seconds": 0.25, "paused": false, "cancels_in_flight": 1.0, "servers_held_for_cancel": 1.0, "backend": "127.0.0.1:5434", "database": "app", "user": "web"} {
		if pool[k] != want {
			t.Errorf("pools[0].%s = %v, want %v (%s)", k, pool[k], want, body)
		}
	}
	if got["clients"] != 3.0 || got["writes_to"] != "127.0.0.1:5434" {
		t.Errorf("proxy %s", body)
	}
	if code, _ := do(t, http.MethodPost, u+"/proxy", "", ""); code != http.StatusMethodNotAllowed {
		t.Errorf("POST /proxy: %d", code)
	}
}

func TestProxyEndpointWithoutAProxy(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Listen, cfg.MetricsListen = "127.0.0.1:0", ""
	s, err := New(cfg, Sources{Cluster: newCluster(t, "n1")}, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	u := startServer(t, s)
	if code, body := do(t, http.MethodGet, u+"/proxy", "", ""); code != http.StatusNotFound || !strings.Contains(body, "runs no proxy") {
		t.Fatalf("GET /proxy: %d %s", code, body)
	}
}

func TestConnectionsEndpoint(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Listen, cfg.MetricsListen = "127.0.0.1:0", ""
	var list atomic.Pointer[[]ConnStatus]
	list.Store(new([]ConnStatus))
	s, err := New(cfg, Sources{Proxy: func() ProxyStatus { return ProxyStatus{} }, Connections: func() []ConnStatus { return *list.Load() }}, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	u := startServer(t, s)
	if code, body := do(t, http.MethodGet, u+"/proxy/connections", "", ""); code != http.StatusOK || !strings.Contains(body, `"connections": []`) {
		t.Fatalf("GET /proxy/connections with none: %d %s", code, body)
	}
	at := time.Date(2026, 11, 27, 7, 0, 0, 0, time.UTC)
	list.Store(&[]ConnStatus{
		{Kind: "client", ID: "0xc1", Link: "0xs1", User: "web", Database: "app", State: "active", Addr: "10.0.0.9:40000",
			ConnectedAt: at, BackendPID: 4242, ApplicationName: "shop", Loop: 1},
		{Kind: "server", ID: "0xs1", Link: "0xc1", User: "web", Database: "app", State: "active", Addr: "10.0.0.1:5432",
			ConnectedAt: at, BackendPID: 4242, PreparedStatements: 3, Loop: 1},
	})
	code, body := do(t, http.MethodGet, u+"/proxy/connections", "", "")
	var got struct {
		Connections []map[string]any `json:"connections"`
	}
	if err := json.Unmarshal([]byte(body), &got); code != http.StatusOK || err != nil || len(got.Connections) != 2 {
		t.Fatalf("GET /proxy/connections: %d %v %s", code, err, body)
	}
	c := got.Connections[0]
	for k, want := range map[string]any{"kind": "client", "link": "0xs1", "state": "active", "backend_pid": 4242.0,
		"application_name": "shop", "connected_at": "2026-11-27T07:00:00Z", "wait_seconds": 0.0, "loop": 1.0} {
		if c[k] != want {
			t.Errorf("connections[0].%s = %v, want %v (%s)", k, c[k], want, body)
		}
	}
	if _, ok := c["last_request_at"]; ok {
		t.Errorf("a zero last_request_at is left out: %s", body)
	}
	if got.Connections[1]["prepared_statements"] != 3.0 {
		t.Errorf("server: %v", got.Connections[1])
	}
}

// With api.token set, the connection list (client addresses, users) needs the token.
func TestConnectionsEndpointNeedsTheTokenWhenThereIsOne(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Listen, cfg.MetricsListen, cfg.Token = "127.0.0.1:0", "", "s3cret"
	s, err := New(cfg, Sources{Proxy: func() ProxyStatus { return ProxyStatus{} },
		Connections: func() []ConnStatus { return []ConnStatus{{Kind: "client", Addr: "10.0.0.9:1234"}} }}, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	u := startServer(t, s)
	if code, body := do(t, http.MethodGet, u+"/proxy/connections", "", ""); code != http.StatusUnauthorized || strings.Contains(body, "10.0.0.9") {
		t.Fatalf("without the token: %d %s", code, body)
	}
	if code, body := do(t, http.MethodGet, u+"/proxy/connections", "s3cret", ""); code != http.StatusOK || !strings.Contains(body, "10.0.0.9") {
		t.Fatalf("with the token: %d %s", code, body)
	}
	if code, _ := do(t, http.MethodGet, u+"/proxy", "", ""); code != http.StatusOK {
		t.Fatalf("GET /proxy stays open: %d", code)
	}
}
