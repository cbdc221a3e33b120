package pgctl

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgbastion/pgbastion/ha"
	"github.com/pgbastion/pgbastion/ha/fsm"
)

// Controller implements ha.PostgreSQL for the local server: what the agent runs when it
// executes directives. Every method is idempotent.
type Controller struct {
	inst *Instance
	// Bootstrap allows this node to initdb a new cluster when its data directory is empty and
	// no primary exists to clone from.
	Bootstrap bool
	// Self is this node's member name (used as application_name and slot name).
	Self string
	// State returns the current cluster state (to find a primary to clone from, and the
	// cluster's system identifier).
	State func() *fsm.State

	// cloning follows the clone of the primary running now (nil: none), for CloneProgress.
	cloning atomic.Pointer[cloneProgress]

	mu sync.Mutex
	// lastCheckpoint is the shutdown checkpoint of the last clean stop of this server as a
	// primary, returned again by a repeated Follow of the same upstream.
	lastCheckpoint fsm.LSN
}

var (
	_ ha.HBA           = (*Controller)(nil)
	_ ha.PostgreSQL    = (*Controller)(nil)
	_ ha.Replication   = (*Controller)(nil)
	_ ha.CloneProgress = (*Controller)(nil)
)

// NewController wraps an Instance.
func NewController(inst *Instance, self string, bootstrap bool, state func() *fsm.State) *Controller {
	return &Controller{inst: inst, Self: self, Bootstrap: bootstrap, State: state}
}

// Instance returns the wrapped server.
func (c *Controller) Instance() *Instance { return c.inst }

// Probe implements ha.PostgreSQL.
func (c *Controller) Probe(ctx context.Context) (ha.PGStatus, error) {
	var st ha.PGStatus
	conn, err := c.inst.Connect(ctx)
	if err != nil {
		return st, err
	}
	defer conn.Close(context.Background())
	const q = `SELECT pg_catalog.pg_is_in_recovery(),
	CASE WHEN pg_catalog.pg_is_in_recovery() THEN NULL ELSE pg_catalog.pg_current_wal_flush_lsn()::text END,
	pg_catalog.pg_last_wal_receive_lsn()::text, pg_catalog.pg_last_wal_replay_lsn()::text,
	CASE WHEN pg_catalog.pg_is_in_recovery()
	  THEN COALESCE((SELECT received_tli FROM pg_catalog.pg_stat_wal_receiver), (SELECT timeline_id FROM pg_catalog.pg_control_checkpoint()))
	  ELSE ('x' || substr(pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_flush_lsn()), 1, 8))::bit(32)::int END,
	(SELECT sender_host FROM pg_catalog.pg_stat_wal_receiver WHERE status = 'streaming'),
	(SELECT sender_port FROM pg_catalog.pg_stat_wal_receiver WHERE status = 'streaming'),
	(SELECT system_identifier::text FROM pg_catalog.pg_control_system()),
	pg_catalog.current_setting('synchronous_standby_names'),
	(SELECT pg_catalog.json_agg(application_name ORDER BY application_name)::text FROM pg_catalog.pg_stat_replication WHERE state = 'streaming')`
	res := conn.ExecParams(ctx, q, nil, nil, nil, nil).Read()
	if res.Err != nil {
		return st, res.Err
	}
	if len(res.Rows) != 1 || len(res.Rows[0]) != 10 {
		return st, errors.New("unexpected probe result")
	}
	r := res.Rows[0]
	if string(r[0]) == "t" {
		st.Role = fsm.RoleReplica
	} else {
		st.Role = fsm.RolePrimary
	}
	st.FlushLSN = parseLSN(r[1])
	st.ReceivedLSN = parseLSN(r[2])
	st.ReplayedLSN = parseLSN(r[3])
	if tli, err := strconv.ParseUint(string(r[4]), 10, 32); err == nil {
		st.Timeline = uint32(tli)
	}
	st.UpstreamHost = string(r[5])
	if p, err := strconv.Atoi(string(r[6])); err == nil {
		st.UpstreamPort = p
	}
	st.SystemID = string(r[7])
	st.SyncStandbyNames = string(r[8])
	if r[9] != nil {
		if err := json.Unmarshal(r[9], &st.Streaming); err != nil {
			return st, fmt.Errorf("reading pg_stat_replication: %w", err)
		}
	}
	return st, nil
}

func parseLSN(b []byte) fsm.LSN {
	if len(b) == 0 {
		return 0
	}
	l, _ := fsm.ParseLSN(string(b))
	return l
}

// Start implements ha.PostgreSQL: it starts the server with the role its data directory has.
// An empty data directory is cloned from the current primary, or initialised when this node
// may bootstrap the cluster.
func (c *Controller) Start(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.inst.PostmasterAlive() || c.inst.Ping(ctx) == nil {
		// Ours, or left running by a previous PGBastion process (still in recovery, perhaps,
		// and not answering yet): adopt it, as Follow does, rather than start a second one.
		// A pg_hba list changed since it started applies now.
		if err := c.inst.SyncHBA(ctx); err != nil {
			c.inst.log.Warn("cannot apply postgresql.pg_hba", "err", err)
		}
		return nil
	}
	if !c.inst.HasData() {
		if err := c.bootstrap(ctx); err != nil {
			return err
		}
	} else if err := c.checkSystemID(ctx); err != nil {
		return err
	}
	return c.inst.Start(ctx)
}

// checkSystemID refuses a data directory that belongs to another cluster: its database
// system identifier differs from the one the cluster recorded when its first primary was
// named. Such a directory is never started, rewound or removed: it is someone else's data.
func (c *Controller) checkSystemID(ctx context.Context) error {
	if c.State == nil {
		return nil
	}
	want := c.State().SystemID
	if want == "" {
		return nil
	}
	got, err := c.inst.SystemID(ctx)
	if err != nil {
		return err
	}
	if got != want {
		return fmt.Errorf("the data directory %s belongs to another cluster (database system identifier %s, this cluster's is %s): "+
			"refusing to start, rewind or replace it; move it away to let this node clone the cluster", c.inst.cfg.DataDir, got, want)
	}
	return nil
}

func (c *Controller) bootstrap(ctx context.Context) error {
	if p, ok := c.primary(); ok {
		return c.clone(ctx, p.PGHost, p.PGPort)
	}
	if !c.Bootstrap {
		return errors.New("the data directory is empty and there is no primary to clone from yet; waiting")
	}
	return c.inst.InitDB(ctx)
}

// primary returns the current primary member other than this node.
func (c *Controller) primary() (fsm.Member, bool) {
	if c.State == nil {
		return fsm.Member{}, false
	}
	st := c.State()
	m, ok := st.Members[st.Primary]
	if !ok || m.Name == c.Self || m.PGHost == "" || m.PGPort == 0 {
		return fsm.Member{}, false
	}
	return m, true
}

// Stop implements ha.PostgreSQL: a fast shutdown; for a primary the result carries the LSN of
// its shutdown checkpoint.
func (c *Controller) Stop(ctx context.Context) (ha.StopResult, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stop(ctx)
}

func (c *Controller) stop(ctx context.Context) (ha.StopResult, error) {
	if err := c.inst.Stop(ctx, Fast); err != nil {
		return ha.StopResult{}, err
	}
	res, err := c.shutdownCheckpoint(ctx)
	if err == nil && res.CheckpointLSN != 0 {
		c.lastCheckpoint = res.CheckpointLSN
	}
	return res, err
}

// shutdownCheckpoint reads pg_controldata of a stopped server: the shutdown checkpoint of a
// former primary (a server shut down in recovery reports none).
func (c *Controller) shutdownCheckpoint(ctx context.Context) (ha.StopResult, error) {
	out, err := c.inst.controlData(ctx)
	if err != nil {
		return ha.StopResult{}, err
	}
	if out["Database cluster state"] != "shut down" {
		return ha.StopResult{}, nil
	}
	lsn, err := fsm.ParseLSN(out["Latest checkpoint location"])
	if err != nil {
		return ha.StopResult{}, fmt.Errorf("reading the shutdown checkpoint: %w", err)
	}
	return ha.StopResult{CheckpointLSN: lsn}, nil
}

// Promote implements ha.PostgreSQL.
func (c *Controller) Promote(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if rec, err := c.inst.InRecovery(ctx); err == nil && !rec {
		return nil
	}
	return c.inst.Promote(ctx)
}

// Follow implements ha.PostgreSQL: it makes the server a standby of up. A former primary is
// shut down cleanly and rewound with pg_rewind (or re-cloned, when allowed and rewinding is
// impossible).
func (c *Controller) Follow(ctx context.Context, up ha.Upstream) (ha.StopResult, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var res ha.StopResult
	if c.inst.HasData() {
		if err := c.checkSystemID(ctx); err != nil {
			return res, err
		}
	}
	// A postmaster this process adopted rather than started counts too: it must be stopped
	// before anything is done to its data directory.
	if c.inst.PostmasterAlive() {
		if st, err := c.Probe(ctx); err == nil && st.Role == fsm.RoleReplica && st.UpstreamHost != "" && c.followsAlready(up) {
			// Done before (the acknowledgement was lost): report the same checkpoint.
			res.CheckpointLSN = c.lastCheckpoint
			return res, nil
		}
		r, err := c.stop(ctx)
		if err != nil {
			return res, err
		}
		res = r
	} else if c.inst.HasData() {
		r, err := c.shutdownCheckpoint(ctx)
		if err == nil {
			res = r
		}
	}
	c.lastCheckpoint = res.CheckpointLSN
	if !c.inst.HasData() {
		if err := c.clone(ctx, up.Host, up.Port); err != nil {
			return res, err
		}
	} else if res.CheckpointLSN != 0 || c.inst.wasPrimary(ctx) {
		// A former primary may have written WAL its successor never received. pg_rewind
		// needs a cleanly shut down target: finish crash recovery first (a killed primary).
		err := c.inst.recoverIfCrashed(ctx)
		if err == nil {
			err = c.rewind(ctx, up)
		}
		if err != nil {
			if !c.inst.cfg.RemoveDataDirectoryOnRewindFailure {
				return res, fmt.Errorf("pg_rewind from %s failed and postgresql.remove_data_directory_on_rewind_failure is off, so the node stays out of the cluster "+
					"(set it to true to let PGBastion re-clone this node, or move %s away by hand): %w", up.Name, c.inst.cfg.DataDir, err)
			}
			c.inst.log.Warn("pg_rewind failed; re-cloning (postgresql.remove_data_directory_on_rewind_failure)", "upstream", up.Name, "error", err)
			if err := c.clone(ctx, up.Host, up.Port); err != nil {
				return res, fmt.Errorf("pg_rewind failed and re-cloning from %s failed too: %w", up.Name, err)
			}
		}
	} else if c.inst.shutDownCleanly(ctx) {
		// A standby can have replayed WAL of the old timeline beyond the point where the new
		// primary's timeline forked off (it was ahead of the node that was promoted, or it
		// followed a primary that was lost); PostgreSQL then refuses to start as a standby of
		// the new primary ("requested timeline is not a child of this server's history").
		// pg_rewind finds that out and does nothing when the histories agree. A failure here
		// is not final: the start below says whether the standby can follow as it is.
		if err := c.rewind(ctx, up); err != nil {
			c.inst.log.Warn("pg_rewind of a standby before following failed; starting it as it is", "upstream", up.Name, "error", err)
		}
	}
	slot := ha.SlotName(c.Self)
	c.ensureSlotOn(ctx, up.Host, up.Port, slot)
	if err := c.inst.Follow(up.Host, up.Port, c.Self, slot); err != nil {
		return res, err
	}
	return res, c.inst.Start(ctx)
}

// Reinit implements ha.Reinitializer (Patroni's reinit): it stops the server, replaces the
// data directory with a base backup of up and starts it as up's standby. Nothing is touched
// when up cannot be reached, or when the data directory belongs to another cluster.
func (c *Controller) Reinit(ctx context.Context, up ha.Upstream) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	conn, err := c.inst.ConnectTo(ctx, up.Host, up.Port)
	if err != nil {
		return fmt.Errorf("cannot reach the primary %s at %s:%d, so nothing was changed: %w", up.Name, up.Host, up.Port, err)
	}
	conn.Close(context.Background())
	if c.inst.HasData() {
		if err := c.checkSystemID(ctx); err != nil {
			return err
		}
		sctx, cancel := context.WithTimeout(ctx, time.Minute)
		err := c.inst.Stop(sctx, Fast)
		cancel()
		if err != nil {
			return fmt.Errorf("stopping PostgreSQL before removing its data directory: %w", err)
		}
	}
	c.lastCheckpoint = 0
	if err := c.clone(ctx, up.Host, up.Port); err != nil {
		// Leave no half copy that could be mistaken for data: an empty directory is cloned
		// again when the node next starts.
		if rerr := os.RemoveAll(c.inst.cfg.DataDir); rerr != nil {
			err = errors.Join(err, rerr)
		}
		return fmt.Errorf("cloning from %s: %w (the data directory is left empty: the node clones it again when it next starts)", up.Name, err)
	}
	if err := c.inst.Follow(up.Host, up.Port, c.Self, ha.SlotName(c.Self)); err != nil {
		return err
	}
	return c.inst.Start(ctx)
}

// rewind runs pg_rewind from up after a checkpoint there. pg_rewind before PostgreSQL 16 takes
// the source's timeline from its last checkpoint, and for seconds after a promotion (until the
// checkpoint the promotion requested completes) that still names the old timeline: pg_rewind
// then reports "no rewind required", and the node, holding WAL of the old timeline beyond the
// fork, can never stream from the new primary.
func (c *Controller) rewind(ctx context.Context, up ha.Upstream) error {
	conn, err := c.inst.ConnectTo(ctx, up.Host, up.Port)
	if err != nil {
		return fmt.Errorf("connecting to %s for a checkpoint before pg_rewind: %w", up.Name, err)
	}
	// Only a primary whose last checkpoint predates its timeline needs one. A standby source
	// (the candidate of a switchover, before its promotion) is on the old timeline anyway, and
	// a CHECKPOINT there is a restartpoint that can take seconds — inside the write pause.
	const q = `SELECT NOT pg_catalog.pg_is_in_recovery() AND
	  (SELECT timeline_id FROM pg_catalog.pg_control_checkpoint()) <>
	  ('x' || substr(pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_lsn()), 1, 8))::bit(32)::int`
	res := conn.ExecParams(ctx, q, nil, nil, nil, nil).Read()
	err = res.Err
	if err == nil && len(res.Rows) == 1 && string(res.Rows[0][0]) == "t" {
		_, err = conn.Exec(ctx, "CHECKPOINT").ReadAll()
	}
	conn.Close(context.Background())
	if err != nil {
		return fmt.Errorf("checkpoint on %s before pg_rewind: %w", up.Name, err)
	}
	return c.inst.Rewind(ctx, up.Host, up.Port)
}

// clone replaces the data directory with a copy of the primary at host:port, made by the
// configured replica methods (pg_basebackup streaming through this node's replication slot
// there, created first when it is missing, unless another method is listed first).
func (c *Controller) clone(ctx context.Context, host string, port int) error {
	c.cloning.Store(&cloneProgress{dir: c.inst.cfg.DataDir, total: c.upstreamSize(ctx, host, port), started: time.Now()})
	defer c.cloning.Store(nil)
	slot := ha.SlotName(c.Self)
	if !c.ensureSlotOn(ctx, host, port, slot) {
		slot = "" // stream without it; primary_slot_name is set when the server starts following
	}
	return c.inst.CreateReplica(ctx, host, port, c.Self, slot)
}

// ensureSlotOn creates this node's physical slot on the upstream if it is missing, so that the
// upstream keeps the WAL this node needs from the moment it clones or follows. The upstream's
// agent creates the slots of every member too; this just does not wait for it.
func (c *Controller) ensureSlotOn(ctx context.Context, host string, port int, slot string) bool {
	conn, err := c.inst.ConnectTo(ctx, host, port)
	if err != nil {
		c.inst.log.Warn("cannot reach the upstream to create this node's replication slot", "host", host, "port", port, "error", err)
		return false
	}
	defer conn.Close(context.Background())
	if err := createSlot(ctx, conn, slot); err != nil {
		c.inst.log.Warn("cannot create this node's replication slot on the upstream", "slot", slot, "error", err)
		return false
	}
	return true
}

// followsAlready reports whether primary_conninfo already names up, through this node's slot.
func (c *Controller) followsAlready(up ha.Upstream) bool {
	b, err := os.ReadFile(filepath.Join(c.inst.cfg.DataDir, "postgresql.auto.conf"))
	if err != nil {
		return false
	}
	return bytes.Contains(b, []byte(fmt.Sprintf("host=%s port=%d ", up.Host, up.Port))) &&
		bytes.Contains(b, []byte(fmt.Sprintf("primary_slot_name = '%s'", ha.SlotName(c.Self))))
}

// Checkpoint implements ha.PostgreSQL.
func (c *Controller) Checkpoint(ctx context.Context) error {
	conn, err := c.inst.Connect(ctx)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, "CHECKPOINT").ReadAll()
	return err
}

// controlData runs pg_controldata and returns its fields.
func (i *Instance) controlData(ctx context.Context) (map[string]string, error) {
	cmd := i.command(ctx, "pg_controldata", "-D", i.cfg.DataDir)
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("pg_controldata: %w", err)
	}
	m := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok {
			m[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	return m, nil
}

// wasPrimary reports whether the stopped data directory belonged to a primary (no
// standby.signal).
func (i *Instance) wasPrimary(context.Context) bool {
	_, err := os.Stat(filepath.Join(i.cfg.DataDir, "standby.signal"))
	return errors.Is(err, os.ErrNotExist)
}

// shutDownCleanly reports whether the data directory was shut down cleanly (as a primary or
// as a standby), as pg_rewind requires of its target.
func (i *Instance) shutDownCleanly(ctx context.Context) bool {
	m, err := i.controlData(ctx)
	if err != nil {
		return false
	}
	switch m["Database cluster state"] {
	case "shut down", "shut down in recovery":
		return true
	}
	return false
}

// recoverIfCrashed runs crash recovery in single-user mode when the data directory was not
// shut down cleanly, so pg_rewind can work on it.
func (i *Instance) recoverIfCrashed(ctx context.Context) error {
	m, err := i.controlData(ctx)
	if err != nil {
		return err
	}
	switch m["Database cluster state"] {
	case "shut down", "shut down in recovery":
		return nil
	}
	_ = os.Remove(filepath.Join(i.cfg.DataDir, "postmaster.pid"))
	cmd := i.command(ctx, "postgres", "--single", "-F", "-D", i.cfg.DataDir, "-c", "archive_mode=off", "postgres")
	cmd.Stdin = strings.NewReader("")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("crash recovery before pg_rewind: %w\n%s", err, strings.TrimSpace(string(out)))
	}
	return nil
}
