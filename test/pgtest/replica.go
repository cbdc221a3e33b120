package pgtest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// ReplicaOptions configure AddReplica. The zero value is usable.
type ReplicaOptions struct {
	// Name is the replica's name, its cluster_name and therefore the application_name it shows
	// in the upstream's pg_stat_replication. Default "replicaN".
	Name string
	// Slot, when set, is a physical replication slot created on the upstream by pg_basebackup
	// and used by the replica.
	Slot string
	// NoWait returns as soon as the replica accepts connections, without waiting until it
	// streams.
	NoWait bool
}

// AddReplica clones this instance with pg_basebackup, configures the clone as a streaming
// standby of it, starts it on its own free port and waits until the upstream reports it as
// streaming. The replica is stopped and removed in t.Cleanup.
func (i *Instance) AddReplica(t testing.TB, opts *ReplicaOptions) *Instance {
	t.Helper()
	Require(t, Programs("pg_basebackup"))
	if opts == nil {
		opts = &ReplicaOptions{}
	}
	i.mu.Lock()
	i.nextRep++
	n := i.nextRep
	i.mu.Unlock()
	name := opts.Name
	if name == "" {
		name = fmt.Sprintf("replica%d", n)
		if i.upstreamOf() != nil {
			name = fmt.Sprintf("%s-replica%d", i.name, n)
		}
	}
	r := newInstance(t, name, i.password, i.auth)
	r.roleHBA = append([]string(nil), i.roleHBA...)
	args := []string{"-D", r.data, "-h", i.Host(), "-p", fmt.Sprint(i.port), "-U", Superuser,
		"-X", "stream", "-c", "fast", "--no-sync", "-w"}
	if opts.Slot != "" {
		args = append(args, "-C", "-S", opts.Slot)
	}
	ctx, cancel := opContext(t)
	defer cancel()
	if err := r.user.run(ctx, r.base, r.bin("pg_basebackup"), args,
		"PGPASSWORD="+i.password); err != nil {
		t.Fatalf("pgtest: %s: %v", name, err)
	}
	if err := r.writeStandbyConf(i, opts.Slot); err != nil {
		t.Fatalf("pgtest: %s: %v", name, err)
	}
	r.attach(i)
	r.startFresh(t)
	if !opts.NoWait {
		r.WaitStreaming(t)
	}
	return r
}

func (i *Instance) upstreamOf() *Instance {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.upstream
}

// attach records up as this instance's upstream, detaching it from any previous one.
func (i *Instance) attach(up *Instance) {
	if old := i.upstreamOf(); old != nil {
		old.mu.Lock()
		old.replicas = slices.DeleteFunc(old.replicas, func(x *Instance) bool { return x == i })
		old.mu.Unlock()
	}
	i.mu.Lock()
	i.upstream = up
	i.mu.Unlock()
	if up != nil {
		up.mu.Lock()
		up.replicas = append(up.replicas, i)
		up.mu.Unlock()
	}
}

// writeStandbyConf makes the data directory a standby of up: standby.signal plus
// primary_conninfo (and primary_slot_name) appended to postgresql.auto.conf, where later lines
// win.
func (i *Instance) writeStandbyConf(up *Instance, slot string) error {
	if err := i.user.writeOwned(filepath.Join(i.data, "standby.signal"), nil, 0o600); err != nil {
		return err
	}
	conninfo := fmt.Sprintf("host=%s port=%d user=%s password=%s application_name=%s",
		up.Host(), up.port, Superuser, connQuote(up.password), i.name)
	conf := fmt.Sprintf("# pgtest: follow %s\nprimary_conninfo = %s\nprimary_slot_name = %s\n",
		up.name, quote(conninfo), quote(slot))
	f, err := os.OpenFile(filepath.Join(i.data, "postgresql.auto.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(conf)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// WaitStreaming waits until this replica's upstream reports it as streaming in
// pg_stat_replication.
func (i *Instance) WaitStreaming(t testing.TB) {
	t.Helper()
	up := i.upstreamOf()
	if up == nil {
		t.Fatalf("pgtest: %s is not a replica", i.name)
	}
	i.eventually(t, "streaming from "+up.name, func(ctx context.Context) (bool, error) {
		n, err := up.queryString(ctx, `SELECT count(*)::text FROM pg_stat_replication
			WHERE application_name = $1 AND state = 'streaming'`, i.name)
		return n == "1", err
	})
}

// WaitCatchUp waits until this replica has replayed everything its upstream had written (or,
// for a cascading upstream, replayed) when WaitCatchUp was called.
func (i *Instance) WaitCatchUp(t testing.TB) {
	t.Helper()
	up := i.upstreamOf()
	if up == nil {
		t.Fatalf("pgtest: %s is not a replica", i.name)
	}
	lsn := up.QueryString(t, `SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
		ELSE pg_current_wal_lsn() END::text`)
	i.eventually(t, "replay of "+lsn, func(ctx context.Context) (bool, error) {
		ok, err := i.queryString(ctx, `SELECT (pg_last_wal_replay_lsn() >= $1::pg_lsn)::text`, lsn)
		return ok == "true", err
	})
}

// InRecovery reports pg_is_in_recovery().
func (i *Instance) InRecovery(t testing.TB) bool {
	t.Helper()
	return i.QueryString(t, "SELECT pg_is_in_recovery()::text") == "true"
}

// Promote runs `pg_ctl promote` on this replica and waits until it accepts writes.
func (i *Instance) Promote(t testing.TB) {
	t.Helper()
	Require(t, Programs("pg_ctl"))
	ctx, cancel := opContext(t)
	defer cancel()
	if err := i.user.run(ctx, i.base, i.bin("pg_ctl"),
		[]string{"promote", "-D", i.data, "-w", "-t", "60"}); err != nil {
		t.Fatalf("pgtest: %s: %v", i.name, err)
	}
	i.eventually(t, "writable after promote", func(ctx context.Context) (bool, error) {
		ro, err := i.queryString(ctx, "SELECT (pg_is_in_recovery() OR current_setting('transaction_read_only')::bool)::text")
		return ro == "false", err
	})
	i.attach(nil)
}

// Follow turns this instance into a streaming standby of up: it is stopped (fast) if running,
// given standby.signal and a primary_conninfo for up, started, and awaited until streaming. It
// does not rewind: use Rewind for a former primary whose history diverged.
func (i *Instance) Follow(t testing.TB, up *Instance) {
	t.Helper()
	if i.Running() {
		i.Stop(t, Fast)
	}
	i.follow(t, up)
}

func (i *Instance) follow(t testing.TB, up *Instance) {
	t.Helper()
	if err := i.writeStandbyConf(up, ""); err != nil {
		t.Fatalf("pgtest: %s: %v", i.name, err)
	}
	i.attach(up)
	i.Start(t)
	i.WaitStreaming(t)
}

// Rewind stops this instance (fast, if running; a killed instance is fine), runs pg_rewind
// against source, and then makes it a streaming standby of source as Follow does. The data
// directory must have been created with checksums or wal_log_hints, which Start ensures.
func (i *Instance) Rewind(t testing.TB, source *Instance) {
	t.Helper()
	Require(t, Programs("pg_rewind"))
	if i.Running() {
		i.Stop(t, Fast)
	}
	if err := i.waitOrphans(); err != nil { // pg_rewind's crash recovery needs them gone
		t.Fatalf("pgtest: %s: %v", i.name, err)
	}
	// pg_rewind reads the source's timeline from its control file, which a just-promoted server
	// updates only at its next checkpoint; without one it would say "no rewind required".
	source.Exec(t, "CHECKPOINT")
	ctx, cancel := opContext(t)
	defer cancel()
	if err := i.user.run(ctx, i.base, i.bin("pg_rewind"), []string{
		"--target-pgdata", i.data, "--source-server", source.ConnString(), "--no-sync"}); err != nil {
		t.Fatalf("pgtest: %s: %v", i.name, err)
	}
	i.follow(t, source)
}

// eventually polls cond until it returns true, failing the test after readyTimeout with the
// last error.
func (i *Instance) eventually(t testing.TB, what string, cond func(ctx context.Context) (bool, error)) {
	t.Helper()
	ctx, cancel := opContext(t)
	defer cancel()
	ctx, cancel2 := context.WithTimeout(ctx, readyTimeout)
	defer cancel2()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	var last error
	for {
		ok, err := cond(ctx)
		if ok {
			return
		}
		if err != nil {
			last = err
		}
		select {
		case <-ctx.Done():
			t.Fatalf("pgtest: %s: timed out waiting for %s (last error: %v)", i.name, what, last)
		case <-tick.C:
		}
	}
}
