package admin

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgbastion/pgbastion/ha/fsm"
)

func TestClusterPostgreSQLConfig(t *testing.T) {
	c := newCluster(t, "n1")
	cfg := DefaultConfig()
	cfg.Listen, cfg.MetricsListen, cfg.Token = "127.0.0.1:0", "", "s3cret"
	var checked map[string]string
	pgDown := false
	s, err := New(cfg, Sources{Cluster: c, CheckPGParams: func(_ context.Context, set map[string]string) (bool, error) {
		checked = set
		if pgDown {
			return false, nil
		}
		if v, ok := set["work_mem"]; ok && v == "lots" {
			return true, errors.New(`invalid value for parameter "work_mem": "lots"`)
		}
		return true, nil
	}}, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	base := startServer(t, s)
	url := base + "/cluster/postgresql"
	view := func() pgConfigView {
		t.Helper()
		code, body := do(t, "GET", url, "", "")
		if code != 200 {
			t.Fatalf("GET: %d %s", code, body)
		}
		var v pgConfigView
		if err := json.Unmarshal([]byte(body), &v); err != nil {
			t.Fatal(err)
		}
		return v
	}

	if v := view(); v.Version != 0 || len(v.Parameters) != 0 || !v.AllApplied || len(v.Nodes) != 2 {
		t.Fatalf("before any change: %+v", v)
	}

	// Mutations need the token.
	if code, _ := do(t, "PATCH", url, "", `{"parameters":{"work_mem":"64MB"}}`); code != 401 {
		t.Fatalf("PATCH without token: %d", code)
	}
	if code, _ := do(t, "DELETE", url+"?name=work_mem", "wrong", ""); code != 401 {
		t.Fatalf("DELETE with a wrong token: %d", code)
	}

	code, body := do(t, "PATCH", url, "s3cret", `{"parameters":{"work_mem":"64MB","shared_buffers":"256MB"}}`)
	if code != 200 || !strings.Contains(body, `"version": 1`) {
		t.Fatalf("PATCH: %d %s", code, body)
	}
	if checked["work_mem"] != "64MB" {
		t.Fatalf("the values were not checked against PostgreSQL first: %v", checked)
	}
	v := view()
	if v.Version != 1 || v.Parameters["work_mem"] != "64MB" || v.Parameters["shared_buffers"] != "256MB" || v.AllApplied {
		t.Fatalf("after PATCH: %+v", v)
	}

	// Nodes report; one of them needs a restart, the other refused a value.
	c.apply(t, fsm.ReportPGConfig{Node: "n1", Version: 1, PendingRestart: []string{"shared_buffers"}})
	c.apply(t, fsm.ReportPGConfig{Node: "n2", Version: 1, Error: `shared_buffers: invalid value`})
	v = view()
	if !v.Nodes[0].Applied || v.Nodes[0].PendingRestart[0] != "shared_buffers" || v.Nodes[1].Applied || v.Nodes[1].Error == "" ||
		v.AllApplied || len(v.Pending) != 1 || v.Pending[0] != "n1" {
		t.Fatalf("after the reports: %+v", v)
	}

	// What PostgreSQL refuses, or the core rejects, changes nothing and says why.
	for _, c := range []struct {
		body string
		code int
		want string
	}{
		{`{"parameters":{"work_mem":"lots"}}`, 400, `refuses it, nothing was changed: invalid value for parameter`},
		{`{"parameters":{"port":"6000"}}`, 400, "postgresql.port"},
		{`{"parameters":{"Work Mem":"1"}}`, 400, "not a PostgreSQL parameter name"},
		{`{"parameters":{}}`, 400, "the body needs"},
		{`{"params":{"work_mem":"1MB"}}`, 400, "unknown field"},
		{`{"parameters":{"work_mem":"1MB"},"if_version":7}`, 409, "changed meanwhile"},
	} {
		code, body := do(t, "PATCH", url, "s3cret", c.body)
		if code != c.code || !strings.Contains(body, c.want) {
			t.Errorf("PATCH %s: %d %s, want %d mentioning %q", c.body, code, body, c.code, c.want)
		}
	}
	if v := view(); v.Version != 1 || v.Parameters["work_mem"] != "64MB" {
		t.Fatalf("a refused change was applied: %+v", v)
	}

	// null removes; DELETE removes; both are remembered as resets for the agents.
	if code, body := do(t, "PATCH", url, "s3cret", `{"parameters":{"shared_buffers":null},"if_version":1}`); code != 200 {
		t.Fatalf("PATCH null: %d %s", code, body)
	}
	if code, body := do(t, "DELETE", url+"?name=work_mem", "s3cret", ""); code != 200 {
		t.Fatalf("DELETE: %d %s", code, body)
	}
	if code, body := do(t, "DELETE", url, "s3cret", ""); code != 400 || !strings.Contains(body, "?name=") {
		t.Fatalf("DELETE without a name: %d %s", code, body)
	}
	if v := view(); v.Version != 3 || len(v.Parameters) != 0 {
		t.Fatalf("after removing both: %+v", v)
	}
	if r := c.State().PGConfig.Reset; len(r) != 2 {
		t.Fatalf("resets remembered: %v", r)
	}

	// A parameter a standby needs at least the primary's value of cannot be reset (it may
	// fall back to less).
	if code, body := do(t, "DELETE", url+"?name=max_connections", "s3cret", ""); code != 400 || !strings.Contains(body, "cannot start with less than its primary") {
		t.Fatalf("DELETE max_connections: %d %s", code, body)
	}

	// With this node's PostgreSQL down the change still goes through, and says it was not
	// checked; except for those parameters, which cannot be checked against the running value.
	pgDown = true
	code, body = do(t, "PATCH", url, "s3cret", `{"parameters":{"work_mem":"8MB"}}`)
	if code != 200 || !strings.Contains(body, "not reachable") {
		t.Fatalf("PATCH with PostgreSQL down: %d %s", code, body)
	}
	code, body = do(t, "PATCH", url, "s3cret", `{"parameters":{"max_connections":"300"}}`)
	if code != 503 || !strings.Contains(body, "send the change to a node whose PostgreSQL is up") {
		t.Fatalf("PATCH max_connections with PostgreSQL down: %d %s", code, body)
	}
}

// TestPatroniConfigEndpoint: GET/PATCH/PUT /config, Patroni's dynamic configuration, reach the
// cluster-wide parameters and the pause; settings PGBastion keeps per node are refused, naming
// where they live.
func TestPatroniConfigEndpoint(t *testing.T) {
	c := newCluster(t, "n1")
	cfg := DefaultConfig()
	cfg.Listen, cfg.MetricsListen, cfg.Token = "127.0.0.1:0", "", "s3cret"
	s, err := New(cfg, Sources{Cluster: c}, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	url := startServer(t, s) + "/config"
	get := func() string {
		t.Helper()
		code, body := do(t, "GET", url, "", "")
		if code != 200 {
			t.Fatalf("GET /config: %d %s", code, body)
		}
		return strings.TrimSpace(body)
	}
	compact := func(s string) string {
		var v any
		if err := json.Unmarshal([]byte(s), &v); err != nil {
			t.Fatalf("%v: %s", err, s)
		}
		b, _ := json.Marshal(v)
		return string(b)
	}
	if got := compact(get()); got != `{"postgresql":{"parameters":{}}}` {
		t.Fatalf("empty: %s", got)
	}
	if code, _ := do(t, "PATCH", url, "", `{"postgresql":{"parameters":{"work_mem":"8MB"}}}`); code != 401 {
		t.Fatalf("PATCH without the token: %d", code)
	}
	code, body := do(t, "PATCH", url, "s3cret", `{"postgresql":{"parameters":{"work_mem":"8MB","max_connections":200,"jit":false}},"pause":true}`)
	if code != 200 || compact(body) != `{"pause":true,"postgresql":{"parameters":{"jit":"off","max_connections":"200","work_mem":"8MB"}}}` {
		t.Fatalf("PATCH: %d %s", code, body)
	}
	code, body = do(t, "PATCH", url, "s3cret", `{"postgresql":{"parameters":{"jit":null}},"pause":false}`)
	if code != 200 || compact(body) != `{"postgresql":{"parameters":{"max_connections":"200","work_mem":"8MB"}}}` {
		t.Fatalf("PATCH removing jit, resuming: %d %s", code, body)
	}
	// PUT replaces the parameter set (max_connections cannot be reset: set, not removed, here).
	code, body = do(t, "PUT", url, "s3cret", `{"postgresql":{"parameters":{"work_mem":"16MB","max_connections":"200"}}}`)
	if code != 200 || compact(body) != `{"postgresql":{"parameters":{"max_connections":"200","work_mem":"16MB"}}}` {
		t.Fatalf("PUT: %d %s", code, body)
	}
	for patch, want := range map[string]string{
		`{"ttl":30}`:                                     "failover section",
		`{"postgresql":{"use_pg_rewind":true}}`:          "postgresql section",
		`{"postgresql":{"parameters":{"work_mem":[1]}}}`: "string, a number",
		`[1]`: "JSON object",
		`{"postgresql":{"parameters":{"max_connections":null}}}`: "cannot be reset",
	} {
		if code, body := do(t, "PATCH", url, "s3cret", patch); code != 400 || !strings.Contains(body, want) {
			t.Errorf("PATCH %s: %d %s, want 400 saying %q", patch, code, body, want)
		}
	}
	if got := compact(get()); got != `{"postgresql":{"parameters":{"max_connections":"200","work_mem":"16MB"}}}` {
		t.Fatalf("after refused changes: %s", got)
	}

	// postgresql.pg_hba (patronictl edit-config's favourite): set, refused when malformed
	// (nothing else in the body changes then), removed by null, and by a PUT without it.
	code, body = do(t, "PATCH", url, "s3cret", `{"postgresql":{"pg_hba":["hostssl all all 10.0.0.0/8 scram-sha-256","  local all all peer "]}}`)
	want := `{"postgresql":{"parameters":{"max_connections":"200","work_mem":"16MB"},"pg_hba":["hostssl all all 10.0.0.0/8 scram-sha-256","local all all peer"]}}`
	if code != 200 || compact(body) != want {
		t.Fatalf("PATCH pg_hba: %d %s", code, body)
	}
	if h := c.State().PGHBA; h == nil || h.Version != 1 {
		t.Fatalf("cluster-wide pg_hba after the PATCH: %+v", h)
	}
	// The same list again is no change (no new version for every node to apply).
	if code, _ := do(t, "PATCH", url, "s3cret", `{"postgresql":{"pg_hba":["hostssl all all 10.0.0.0/8 scram-sha-256","local all all peer"]}}`); code != 200 || c.State().PGHBA.Version != 1 {
		t.Fatalf("PATCH of the same list: %d, version %d", code, c.State().PGHBA.Version)
	}
	code, body = do(t, "PATCH", url, "s3cret", `{"postgresql":{"parameters":{"work_mem":"32MB"},"pg_hba":["hots all all 0/0 md5"]}}`)
	if code != 400 || !strings.Contains(body, `postgresql.pg_hba[0]: \"hots\" is not a pg_hba.conf line kind`) {
		t.Fatalf("PATCH with a malformed line: %d %s", code, body)
	}
	if code, body := do(t, "PATCH", url, "s3cret", `{"postgresql":{"pg_hba":"host all all 0/0 md5"}}`); code != 400 || !strings.Contains(body, "must be a list") {
		t.Fatalf("PATCH with a string: %d %s", code, body)
	}
	if got := compact(get()); got != want {
		t.Fatalf("after refused pg_hba changes: %s", got)
	}
	code, body = do(t, "PUT", url, "s3cret", `{"postgresql":{"parameters":{"work_mem":"16MB","max_connections":"200"}}}`)
	if code != 200 || strings.Contains(body, "pg_hba") || c.State().PGHBA.Version != 2 || len(c.State().PGHBA.Lines) != 0 {
		t.Fatalf("PUT without pg_hba: %d %s", code, body)
	}
	if code, body := do(t, "PATCH", url, "s3cret", `{"postgresql":{"pg_hba":null}}`); code != 200 || c.State().PGHBA.Version != 2 {
		t.Fatalf("PATCH removing an absent list: %d %s", code, body)
	}
}

// GET, PUT and DELETE /cluster/postgresql/pg_hba, and each member's report in the view.
func TestClusterPgHBAEndpoint(t *testing.T) {
	c := newCluster(t, "n1")
	cfg := DefaultConfig()
	cfg.Listen, cfg.MetricsListen, cfg.Token = "127.0.0.1:0", "", "s3cret"
	s, err := New(cfg, Sources{Cluster: c}, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	url := startServer(t, s) + "/cluster/postgresql/pg_hba"
	view := func() pgHBAView {
		t.Helper()
		code, body := do(t, "GET", url, "", "")
		var v pgHBAView
		if code != 200 || json.Unmarshal([]byte(body), &v) != nil {
			t.Fatalf("GET: %d %s", code, body)
		}
		return v
	}
	if v := view(); v.Version != 0 || len(v.Lines) != 0 || !v.AllApplied {
		t.Fatalf("before any list: %+v", v)
	}
	if code, _ := do(t, "PUT", url, "", `{"lines":["host all all 0/0 md5"]}`); code != 401 {
		t.Fatalf("PUT without the token: %d", code)
	}
	for body, want := range map[string]string{
		`{"lines":[]}`:                   "DELETE removes",
		`{"lines":["host all all md5"]}`: "too few fields",
		`{"lines":["host all all 0/0 md5"], "if_version": 3}`: "changed meanwhile",
	} {
		if code, got := do(t, "PUT", url, "s3cret", body); code < 400 || !strings.Contains(got, want) {
			t.Errorf("PUT %s: %d %s, want %q", body, code, got, want)
		}
	}
	if code, body := do(t, "DELETE", url, "s3cret", ""); code != 400 || !strings.Contains(body, "no cluster-wide pg_hba to remove") {
		t.Fatalf("DELETE with no list: %d %s", code, body)
	}
	version := func(body string) uint64 {
		var v struct {
			Version uint64 `json:"version"`
		}
		_ = json.Unmarshal([]byte(body), &v)
		return v.Version
	}
	code, body := do(t, "PUT", url, "s3cret", `{"lines":["hostssl all all 10.0.0.0/8 scram-sha-256"]}`)
	if code != 200 || version(body) != 1 {
		t.Fatalf("PUT: %d %s", code, body)
	}
	v := view()
	if v.Version != 1 || !slices.Equal(v.Lines, []string{"hostssl all all 10.0.0.0/8 scram-sha-256"}) || v.AllApplied || len(v.Nodes) != 2 || v.Nodes[0].Applied {
		t.Fatalf("after the PUT, before the nodes report: %+v", v)
	}
	for _, r := range []fsm.ReportPGHBA{
		{Node: "n1", Version: 1, Outcome: "pg_hba.conf rewritten and loaded by PostgreSQL"},
		{Node: "n2", Version: 1, Local: true, Outcome: "this node's own postgresql.pg_hba takes precedence"},
	} {
		if res, err := c.propose(r, time.Now()); err != nil || res.Err != nil {
			t.Fatal(err, res.Err)
		}
	}
	if v := view(); !v.AllApplied || !v.Nodes[0].Applied || v.Nodes[0].Outcome == "" || !v.Nodes[1].Local {
		t.Fatalf("after the reports: %+v", v)
	}
	// GET /cluster/postgresql carries the same view.
	_, body = do(t, "GET", strings.TrimSuffix(url, "/pg_hba"), "", "")
	var all pgConfigView
	if err := json.Unmarshal([]byte(body), &all); err != nil || all.PgHBA == nil || all.PgHBA.Version != 1 {
		t.Fatalf("GET /cluster/postgresql: %v %s", err, body)
	}
	if code, body := do(t, "DELETE", url, "s3cret", ""); code != 200 || version(body) != 2 {
		t.Fatalf("DELETE: %d %s", code, body)
	}
	if v := view(); v.Version != 2 || len(v.Lines) != 0 || v.AllApplied {
		t.Fatalf("after the DELETE: %+v", v)
	}
}
