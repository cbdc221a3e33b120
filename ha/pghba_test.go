package ha

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgbastion/pgbastion/ha/fsm"
	"github.com/pgbastion/pgbastion/ha/internal/await"
)

// hbaPG adds the cluster-wide pg_hba list to a fake PostgreSQL: a line with "/33" is refused
// as PostgreSQL's parser would, and unreachable fails every try until it is cleared.
type hbaPG struct {
	*fakePG
	mu          sync.Mutex
	lines       []string
	tries       int
	unreachable bool
}

func (p *hbaPG) ApplyClusterHBA(_ context.Context, lines []string) (string, bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.tries++
	if p.unreachable {
		return "", false, errors.New("PostgreSQL runs but cannot be reached")
	}
	for k, l := range lines {
		if strings.Contains(l, "/33") {
			return "", false, fmt.Errorf("PostgreSQL refuses the cluster-wide pg_hba[%d]: invalid CIDR mask: %w", k, ErrHBARefused)
		}
	}
	p.lines = slices.Clone(lines)
	return "pg_hba.conf rewritten and loaded by PostgreSQL", false, nil
}

func (p *hbaPG) state() ([]string, int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.lines), p.tries
}

// The agent applies each version of the list once and reports it; a refusal is reported and
// not tried again; a failure to reach PostgreSQL is tried again and reported only once it
// worked.
func TestAgentAppliesTheClusterPgHBA(t *testing.T) {
	c := newFakeCluster(t, "n1")
	c.setup()
	pgs := newFakePGNet()
	pgs.add("n2", fsm.RolePrimary, 5000, "")
	pg := &hbaPG{fakePG: pgs.add("n1", fsm.RoleReplica, 4000, "n2")}
	runAgent(t, c, pg, agentConfig(), AgentOptions{})
	await.True(t, 2*time.Second, func() bool { return c.status("n1").State == fsm.StateRunningReplica }, "agent running")
	report := func() fsm.PGHBAStatus { return c.State().PGHBA.Nodes["n1"] }

	c.must(fsm.SetPGHBA{Lines: []string{"hostssl all all 10.0.0.0/8 scram-sha-256"}})
	await.True(t, 2*time.Second, func() bool { return report().Version == 1 }, "version 1 reported: %+v", c.State().PGHBA)
	if r := report(); r.Error != "" || !strings.Contains(r.Outcome, "loaded") {
		t.Fatalf("report: %+v", r)
	}
	lines, tries := pg.state()
	if !slices.Equal(lines, []string{"hostssl all all 10.0.0.0/8 scram-sha-256"}) {
		t.Fatalf("lines applied: %q", lines)
	}
	idx := c.State().Index
	await.True(t, 2*time.Second, func() bool { return c.State().Index > idx+10 }, "agent reporting")
	if _, again := pg.state(); again != tries {
		t.Fatalf("applied %d more times without a change", again-tries)
	}

	c.must(fsm.SetPGHBA{Lines: []string{"host all all 10.0.0.0/33 md5"}})
	await.True(t, 2*time.Second, func() bool { return report().Version == 2 }, "version 2 reported")
	if r := report(); !strings.Contains(r.Error, "pg_hba[0]: invalid CIDR mask") {
		t.Fatalf("refusal not reported: %+v", r)
	}
	_, tries = pg.state()
	idx = c.State().Index
	await.True(t, 2*time.Second, func() bool { return c.State().Index > idx+10 }, "agent reporting")
	if _, again := pg.state(); again != tries {
		t.Fatalf("a refused list was tried %d more times", again-tries)
	}

	// PostgreSQL out of reach: tried again, and reported only when it worked.
	pg.mu.Lock()
	pg.unreachable = true
	pg.mu.Unlock()
	c.must(fsm.SetPGHBA{Lines: []string{"local all all peer"}})
	await.True(t, 5*time.Second, func() bool { _, n := pg.state(); return n >= tries+2 }, "tried again")
	if r := report(); r.Version != 2 {
		t.Fatalf("reported version %d before it was applied", r.Version)
	}
	pg.mu.Lock()
	pg.unreachable = false
	pg.mu.Unlock()
	await.True(t, 5*time.Second, func() bool { r := report(); return r.Version == 3 && r.Error == "" }, "version 3 applied: %+v", report())
}
