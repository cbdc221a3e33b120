package ha

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/pgbastion/pgbastion/ha/controller"
	"github.com/pgbastion/pgbastion/ha/fsm"
)

// Config is the HA part of pgbastion.yaml. Start from DefaultConfig and decode the YAML into it
// (absent keys keep their defaults); then call Validate.
type Config struct {
	Raft     RaftConfig     `yaml:"raft"`
	Failover FailoverConfig `yaml:"failover"`
	Health   HealthConfig   `yaml:"health"`
	// Tags are this node's tags (nofailover, failover_priority, nosync, noloadbalance).
	Tags fsm.Tags `yaml:"tags"`
}

// Peer is one initial member of the Raft group.
type Peer struct {
	Name    string `yaml:"name"`
	Address string `yaml:"address"`
}

// RaftConfig configures the embedded Raft group and its port.
type RaftConfig struct {
	// ClusterName names the cluster in events and callbacks (Patroni's scope; default
	// pgbastion). It has no effect on Raft.
	ClusterName string `yaml:"cluster_name"`
	// NodeName is this node's unique name: its Raft server ID and its member name.
	NodeName string `yaml:"node_name"`
	// Bind is the Raft listener (default 0.0.0.0:8300); Advertise the address peers dial
	// (default: Bind, which must then be a concrete address).
	Bind      string `yaml:"bind"`
	Advertise string `yaml:"advertise"`
	// Peers are the initial voters. A node whose data_dir holds no Raft state and which is
	// listed here bootstraps the cluster with exactly this list (every initial node does, with
	// the same list, and Raft treats the identical bootstraps as one). A node not listed
	// waits to be added with Node.AddVoter.
	Peers   []Peer `yaml:"peers"`
	DataDir string `yaml:"data_dir"`

	TLSEnabled bool   `yaml:"tls_enabled"`
	TLSCert    string `yaml:"tls_cert"`
	TLSKey     string `yaml:"tls_key"`
	// TLSCA turns on mutual TLS: peers must present a certificate signed by it.
	TLSCA string `yaml:"tls_ca"`

	// Timings: see reference/libraries.md §3.5. The LAN defaults elect a new leader in about
	// 0.75-1.3 s.
	HeartbeatTimeout   time.Duration `yaml:"heartbeat_timeout"`
	ElectionTimeout    time.Duration `yaml:"election_timeout"`
	LeaderLeaseTimeout time.Duration `yaml:"leader_lease_timeout"`
	CommitTimeout      time.Duration `yaml:"commit_timeout"`
	SnapshotInterval   time.Duration `yaml:"snapshot_interval"`
	SnapshotThreshold  uint64        `yaml:"snapshot_threshold"`
}

// FailoverConfig configures failure detection, fencing and the write lease.
type FailoverConfig struct {
	// FencingEnabled: FENCE the old primary before promoting another node; without an
	// acknowledgement the promotion waits until the old primary's lease has certainly expired.
	FencingEnabled bool `yaml:"fencing_enabled"`
	// SplitBrainProtection: a primary that has heard from no Raft quorum for
	// QuorumLossTimeout stops its PostgreSQL. (The write lease itself is always on.)
	SplitBrainProtection bool          `yaml:"split_brain_protection"`
	QuorumLossTimeout    time.Duration `yaml:"quorum_loss_timeout"`
	// LeaseTimeout: how long a node routes writes after sending a lease renewal that a Raft
	// quorum then committed. Renewals go out every LeaseTimeout/4.
	LeaseTimeout time.Duration `yaml:"lease_timeout"`
	// PrimaryTimeout: a primary that renewed no lease for this long is lost, and no node can
	// still be routing writes on a grant this old. Must exceed LeaseTimeout; see Validate.
	PrimaryTimeout time.Duration `yaml:"primary_timeout"`
	// MaxClockDrift bounds how much faster or slower any node's clock may run than real time,
	// as a fraction (0.05 = 5%).
	MaxClockDrift float64 `yaml:"max_clock_drift"`
	// SafetyMargin covers the time between a lease running out and the proxy having closed
	// its server connections to the old primary.
	SafetyMargin time.Duration `yaml:"safety_margin"`
	// MaximumLagOnFailover: an automatic failover never promotes a replica further behind than
	// this (bytes). Patroni's default: 1 MiB.
	MaximumLagOnFailover uint64 `yaml:"maximum_lag_on_failover"`
	// DirectiveTimeout: directives not acknowledged in this time expire.
	DirectiveTimeout time.Duration `yaml:"directive_timeout"`
	// SwitchoverTimeout bounds a switchover; DrainTimeout how long it waits, with writes
	// paused, for in-flight write transactions.
	SwitchoverTimeout time.Duration `yaml:"switchover_timeout"`
	DrainTimeout      time.Duration `yaml:"drain_timeout"`
	// Synchronous replication: "off", "on" (FIRST n) or "quorum" (ANY n). In "on" and
	// "quorum" PGBastion manages the primary's synchronous_standby_names and only a standby
	// proven to hold every acknowledged transaction is promoted automatically; n is
	// SynchronousNodeCount. Strict: commits wait for a standby rather than run asynchronously
	// when none is left.
	SynchronousMode       string `yaml:"synchronous_mode"`
	SynchronousNodeCount  int    `yaml:"synchronous_node_count"`
	SynchronousModeStrict bool   `yaml:"synchronous_mode_strict"`
}

// HealthConfig configures the agent's probe of its own PostgreSQL.
type HealthConfig struct {
	Interval time.Duration `yaml:"interval"`
	Timeout  time.Duration `yaml:"timeout"`
	// FailureThreshold consecutive failed probes mark PostgreSQL down.
	FailureThreshold int `yaml:"failure_threshold"`
	// MaxBackoff caps the exponential backoff between probes after repeated failures.
	MaxBackoff time.Duration `yaml:"max_backoff"`
}

// Default values.
const (
	DefaultRaftPort             = 8300
	DefaultMaximumLagOnFailover = 1 << 20
)

// DefaultConfig returns the LAN defaults. NodeName, Peers and DataDir have none.
func DefaultConfig() Config {
	var c Config
	c.Failover.FencingEnabled = true
	c.Failover.SplitBrainProtection = true
	c.Tags.FailoverPriority = 1
	c.ApplyDefaults()
	return c
}

// ApplyDefaults fills every field whose zero value is not valid with its default. Booleans
// cannot be told apart from "unset"; their defaults (fencing_enabled and
// split_brain_protection true) come from DefaultConfig.
func (c *Config) ApplyDefaults() {
	r := &c.Raft
	setStr(&r.ClusterName, "pgbastion")
	setStr(&r.Bind, fmt.Sprintf("0.0.0.0:%d", DefaultRaftPort))
	setDur(&r.HeartbeatTimeout, 500*time.Millisecond)
	setDur(&r.ElectionTimeout, 500*time.Millisecond)
	setDur(&r.LeaderLeaseTimeout, 250*time.Millisecond)
	setDur(&r.CommitTimeout, 50*time.Millisecond)
	setDur(&r.SnapshotInterval, 120*time.Second)
	if r.SnapshotThreshold == 0 {
		r.SnapshotThreshold = 8192
	}
	f := &c.Failover
	setDur(&f.QuorumLossTimeout, 30*time.Second)
	setDur(&f.LeaseTimeout, 2*time.Second)
	setDur(&f.PrimaryTimeout, 3*time.Second)
	if f.MaxClockDrift == 0 {
		f.MaxClockDrift = 0.05
	}
	setDur(&f.SafetyMargin, 500*time.Millisecond)
	if f.MaximumLagOnFailover == 0 {
		f.MaximumLagOnFailover = DefaultMaximumLagOnFailover
	}
	setDur(&f.DirectiveTimeout, 60*time.Second)
	setDur(&f.SwitchoverTimeout, 60*time.Second)
	setDur(&f.DrainTimeout, 5*time.Second)
	setStr(&f.SynchronousMode, "off")
	if f.SynchronousNodeCount == 0 {
		f.SynchronousNodeCount = 1
	}
	h := &c.Health
	setDur(&h.Interval, time.Second)
	setDur(&h.Timeout, 2*time.Second)
	if h.FailureThreshold == 0 {
		h.FailureThreshold = 2
	}
	setDur(&h.MaxBackoff, 8*time.Second)
}

func setDur(d *time.Duration, v time.Duration) {
	if *d == 0 {
		*d = v
	}
}

func setStr(s *string, v string) {
	if *s == "" {
		*s = v
	}
}

// Validate checks the configuration without touching the network or the disk. It returns all
// problems, joined.
func (c Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	r := c.Raft
	if r.NodeName == "" || strings.ContainsAny(r.NodeName, " \t\n/") {
		bad("raft.node_name %q: required, without spaces or slashes", r.NodeName)
	}
	if _, _, err := net.SplitHostPort(r.Bind); err != nil {
		bad("raft.bind %q: %v", r.Bind, err)
	}
	if r.Advertise != "" {
		if _, _, err := net.SplitHostPort(r.Advertise); err != nil {
			bad("raft.advertise %q: %v", r.Advertise, err)
		}
	}
	if r.DataDir == "" {
		bad("raft.data_dir is required")
	}
	seen := map[string]bool{}
	for _, p := range r.Peers {
		if p.Name == "" || p.Address == "" {
			bad("raft.peers: each peer needs a name and an address (got %+v)", p)
		} else if _, _, err := net.SplitHostPort(p.Address); err != nil {
			bad("raft.peers: %s address %q: %v", p.Name, p.Address, err)
		}
		if seen[p.Name] {
			bad("raft.peers: %q listed twice", p.Name)
		}
		seen[p.Name] = true
	}
	if r.TLSEnabled && (r.TLSCert == "" || r.TLSKey == "") {
		bad("raft.tls_enabled needs raft.tls_cert and raft.tls_key")
	}
	if !r.TLSEnabled && (r.TLSCert != "" || r.TLSCA != "") {
		bad("raft.tls_cert/tls_ca are set but raft.tls_enabled is false")
	}
	// hashicorp/raft's own rules (raft.ValidateConfig), stated here with our key names.
	const minTimeout = 5 * time.Millisecond
	for name, d := range map[string]time.Duration{
		"raft.heartbeat_timeout": r.HeartbeatTimeout, "raft.election_timeout": r.ElectionTimeout,
		"raft.leader_lease_timeout": r.LeaderLeaseTimeout, "raft.commit_timeout": r.CommitTimeout,
	} {
		if d < minTimeout {
			bad("%s %s: at least %s", name, d, minTimeout)
		}
	}
	if r.LeaderLeaseTimeout > r.HeartbeatTimeout {
		bad("raft.leader_lease_timeout %s must not exceed raft.heartbeat_timeout %s", r.LeaderLeaseTimeout, r.HeartbeatTimeout)
	}
	if r.ElectionTimeout < r.HeartbeatTimeout {
		bad("raft.election_timeout %s must be at least raft.heartbeat_timeout %s", r.ElectionTimeout, r.HeartbeatTimeout)
	}
	if r.SnapshotInterval < minTimeout {
		bad("raft.snapshot_interval %s: at least %s", r.SnapshotInterval, minTimeout)
	}
	if r.SnapshotThreshold == 0 {
		bad("raft.snapshot_threshold must be positive")
	}
	errs = append(errs, c.Failover.validate(r)...)
	h := c.Health
	if h.Interval <= 0 || h.Timeout <= 0 || h.FailureThreshold < 1 || h.MaxBackoff < h.Interval {
		bad("health: interval %s and timeout %s must be positive, failure_threshold %d at least 1, max_backoff %s at least the interval",
			h.Interval, h.Timeout, h.FailureThreshold, h.MaxBackoff)
	}
	if 2*h.Interval > c.Failover.PrimaryTimeout {
		bad("health.interval %s: at most half of failover.primary_timeout %s, or replicas' reports are never fresh enough to promote them",
			h.Interval, c.Failover.PrimaryTimeout)
	}
	if c.Tags.ReplicateFrom != "" && c.Tags.ReplicateFrom == r.NodeName {
		bad("tags.replicatefrom %q names this node itself; name another member to stream from, or leave it empty to stream from the primary", c.Tags.ReplicateFrom)
	}
	if c.Tags.FailoverPriority < 0 {
		bad("tags.failover_priority %d must not be negative", c.Tags.FailoverPriority)
	}
	return errors.Join(errs...)
}

func (f FailoverConfig) validate(r RaftConfig) []error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if f.MaxClockDrift < 0 || f.MaxClockDrift >= 0.5 {
		bad("failover.max_clock_drift %g: must be in [0, 0.5)", f.MaxClockDrift)
	}
	if f.LeaseTimeout <= 0 || f.PrimaryTimeout <= 0 || f.SafetyMargin < 0 {
		bad("failover.lease_timeout %s and failover.primary_timeout %s must be positive, safety_margin %s not negative",
			f.LeaseTimeout, f.PrimaryTimeout, f.SafetyMargin)
		return errs
	}
	// The split-brain inequality (invariant 1).
	//
	// A node routes writes for at most L = lease_timeout, measured on its own clock, after it
	// sent a lease renewal; the renewal commits, and the leader stamps its time T, only after it
	// was sent. The controller on the leader treats the lease as over, and may promote another
	// node, only once F = primary_timeout has passed on the leader's clock since T (or since its
	// own election, for renewals stamped by an earlier leader, which committed earlier still).
	// With clocks whose rate may differ from real time by at most ρ = max_clock_drift, the
	// lease lasts at most L·(1+ρ) real time and the leader's wait at least F·(1−ρ); after the
	// lease ends the proxy still needs up to M = safety_margin to close its connections. So a
	// promotion can never meet a node still routing writes to the old primary if
	//
	//	L·(1+ρ) + M < F·(1−ρ)
	//
	// Patroni's rule loop_wait + 2·retry_timeout <= ttl plays the same role.
	rho := f.MaxClockDrift
	lease := time.Duration(float64(f.LeaseTimeout)*(1+rho)) + f.SafetyMargin
	promote := time.Duration(float64(f.PrimaryTimeout) * (1 - rho))
	if lease >= promote {
		bad("failover: lease_timeout %s ×(1+%g) + safety_margin %s = %s must be shorter than primary_timeout %s ×(1−%g) = %s, "+
			"or a replica could be promoted while the old primary still takes writes; raise primary_timeout or lower lease_timeout",
			f.LeaseTimeout, rho, f.SafetyMargin, lease, f.PrimaryTimeout, rho, promote)
	}
	// A lease that lapses during every Raft election would make writes flap; renewals need a
	// leader, and electing one takes up to about two heartbeat timeouts.
	if f.LeaseTimeout < 2*r.HeartbeatTimeout {
		bad("failover.lease_timeout %s: at least twice raft.heartbeat_timeout %s, or the lease lapses during every Raft election",
			f.LeaseTimeout, r.HeartbeatTimeout)
	}
	if f.QuorumLossTimeout < f.LeaseTimeout {
		bad("failover.quorum_loss_timeout %s must be at least failover.lease_timeout %s", f.QuorumLossTimeout, f.LeaseTimeout)
	}
	if f.DirectiveTimeout <= 0 || f.SwitchoverTimeout <= 0 || f.DrainTimeout < 0 {
		bad("failover.directive_timeout %s and switchover_timeout %s must be positive, drain_timeout %s not negative",
			f.DirectiveTimeout, f.SwitchoverTimeout, f.DrainTimeout)
	}
	switch f.SynchronousMode {
	case "off", "on", "quorum":
	default:
		bad("failover.synchronous_mode %q: off, on or quorum", f.SynchronousMode)
	}
	if f.SynchronousNodeCount < 1 {
		bad("failover.synchronous_node_count %d: at least 1", f.SynchronousNodeCount)
	}
	return errs
}

// controllerConfig is what the failover controller needs.
func (c Config) controllerConfig() controller.Config {
	f := c.Failover
	return controller.Config{
		FencingEnabled:    f.FencingEnabled,
		LeaseTimeout:      f.LeaseTimeout,
		PrimaryTimeout:    f.PrimaryTimeout,
		MaxLagOnFailover:  f.MaximumLagOnFailover,
		DirectiveTimeout:  f.DirectiveTimeout,
		SwitchoverTimeout: f.SwitchoverTimeout,
		DrainTimeout:      f.DrainTimeout,
		SynchronousMode:   f.SynchronousMode,
		SyncNodeCount:     f.SynchronousNodeCount,
		SyncStrict:        f.SynchronousModeStrict,
	}
}
