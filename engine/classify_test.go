package engine

import "testing"

func TestClassifyQuery(t *testing.T) {
	cases := []struct {
		q    string
		kind queryKind
		name string
	}{
		{"SELECT 1", qOther, ""},
		{"select abalance from pgbench_accounts where aid = 1;", qOther, ""},
		{"SET application_name = 'x'", qSet, "application_name"},
		{"set SESSION work_mem TO '64MB';", qSet, "work_mem"},
		{"SET work_mem='1MB'", qSet, "work_mem"},
		{"SET LOCAL work_mem = '1MB'", qOther, ""},
		{"SET ROLE admin", qSessionState, ""},
		{"SET SESSION AUTHORIZATION bob", qSessionState, ""},
		{"RESET work_mem", qSet, "work_mem"},
		{"RESET ALL", qSessionState, ""},
		{"DEALLOCATE stmt1", qDeallocate, "stmt1"},
		{"deallocate prepare \"Stmt1\"", qDeallocate, "Stmt1"},
		{"DEALLOCATE ALL", qOther, ""},
		{"PREPARE p AS SELECT 1", qSessionState, ""},
		{"LISTEN chan", qSessionState, ""},
		{"SELECT 1; SET x = 1", qSessionState, ""},
		{"SELECT ';SET' ; SELECT 2", qOther, ""},
		{"/* SET */ SELECT 1", qOther, ""},
		{"-- comment\nSET statement_timeout = 0", qSet, "statement_timeout"},
		{"CREATE TEMP TABLE t (a int) ON COMMIT DROP", qOther, ""},
		{"CREATE TEMP TABLE t (a int)", qSessionState, ""},
		{"DECLARE c CURSOR WITH HOLD FOR SELECT 1", qSessionState, ""},
	}
	for _, c := range cases {
		got := classifyQuery([]byte(c.q))
		if got.kind != c.kind || got.name != c.name {
			t.Errorf("%q: got kind %d name %q, want %d %q", c.q, got.kind, got.name, c.kind, c.name)
		}
	}
}

// set_config(name, value, false) changes the session as SET does: followed when the proxy can
// read it, a reset before reuse when it cannot, nothing when it is transaction-local.
func TestClassifySetConfig(t *testing.T) {
	cases := []struct {
		q      string
		kind   queryKind
		name   string
		value  string
		notice bool // mayChangeSession must notice it
	}{
		{"SELECT set_config('app.tenant', '42', false)", qSet, "app.tenant",
			"42", true},
		{"select PG_CATALOG.Set_Config( 'App.Tenant' , 'it''s' , 'off' ) as x;", qSet, "app.tenant",
			"it's", true},
		{"SELECT set_config('search_path', 'a, b', false)", qSet, "search_path",
			"a, b", true},
		// Transaction-local: nothing outlives the transaction.
		{"SELECT set_config('app.tenant', '42', true)", qOther, "", "", true},
		{"SELECT set_config('app.tenant', $1, true), * FROM t WHERE id = $2", qOther, "", "", true},
		{"SELECT 1; SELECT set_config('a.b', 'c', 't')", qOther, "", "", true},
		// What the proxy cannot read: the server is reset before reuse.
		{"SELECT set_config('app.tenant', $1, false)", qSessionState, "", "", true},
		{"SELECT set_config($1, $2, $3)", qSessionState, "", "", true},
		{"SELECT set_config('a.b', 'c', false), set_config('a.c', 'd', false)", qSessionState, "", "", true},
		{"SELECT 1; SELECT set_config('a.b', 'c', false)", qSessionState, "", "", true},
		{"SELECT set_config('a.b', current_setting('x.y'), true)", qSessionState, "", "", true},
		{"SELECT set_config('a.b', E'c\\d', false)", qSessionState, "", "", true},
		{"SELECT set_config('a.b', 'c\\d', false)", qSessionState, "", "", true},
		{"SELECT set_config('', 'c', false)", qSessionState, "", "", true},
		{"SELECT * FROM settings_config", qOther, "", "", false},
		{"SELECT reset_config FROM t", qOther, "", "", false},
	}
	for _, c := range cases {
		if got := mayChangeSession([]byte(c.q)); got != c.notice {
			t.Errorf("%q: mayChangeSession = %v", c.q, got)
		}
		got := classifyQuery([]byte(c.q))
		if got.kind != c.kind || got.name != c.name || got.value != c.value {
			t.Errorf("%q: got kind %d name %q value %q, want %d %q %q", c.q, got.kind, got.name, got.value, c.kind, c.name, c.value)
		}
		if set := got.setting(); got.kind == qSet && (!set.Config || set.Value != c.value || set.SQL != "") {
			t.Errorf("%q: setting %+v, want a set_config of %q", c.q, *set, c.value)
		}
	}
}
