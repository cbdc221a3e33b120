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
