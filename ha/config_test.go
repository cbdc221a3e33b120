package ha

import (
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"gopkg.in/yaml.v3"
)

func validConfig() Config {
	c := DefaultConfig()
	c.Raft.NodeName = "n1"
	c.Raft.Bind = "10.0.0.1:8300"
	c.Raft.DataDir = "/var/lib/pgbastion/raft"
	c.Raft.Peers = []Peer{{"n1", "10.0.0.1:8300"}, {"n2", "10.0.0.2:8300"}, {"n3", "10.0.0.3:8300"}}
	return c
}

func TestDefaultsAreTheLANTimings(t *testing.T) {
	c := DefaultConfig()
	r, f, h := c.Raft, c.Failover, c.Health
	if r.HeartbeatTimeout != 500*time.Millisecond || r.ElectionTimeout != 500*time.Millisecond ||
		r.LeaderLeaseTimeout != 250*time.Millisecond || r.Bind != "0.0.0.0:8300" {
		t.Errorf("raft defaults %+v", r)
	}
	if !f.FencingEnabled || !f.SplitBrainProtection || f.QuorumLossTimeout != 30*time.Second ||
		f.MaximumLagOnFailover != 1<<20 || f.DirectiveTimeout != 60*time.Second || f.SynchronousMode != "off" {
		t.Errorf("failover defaults %+v", f)
	}
	if h.Interval != time.Second || h.FailureThreshold < 1 || c.Tags.FailoverPriority != 1 {
		t.Errorf("health/tags defaults %+v %+v", h, c.Tags)
	}
	if err := validConfig().Validate(); err != nil {
		t.Fatalf("defaults do not validate: %v", err)
	}
}

func TestYAMLKeysAndDurations(t *testing.T) {
	doc := `
raft:
  node_name: db2
  bind: 0.0.0.0:8300
  advertise: 10.0.0.2:8300
  data_dir: /data/raft
  peers:
    - {name: db1, address: "10.0.0.1:8300"}
    - {name: db2, address: "10.0.0.2:8300"}
  tls_enabled: true
  tls_cert: /etc/pgbastion/node.crt
  tls_key: /etc/pgbastion/node.key
  tls_ca: /etc/pgbastion/ca.crt
  heartbeat_timeout: 1s
  election_timeout: 1500ms
  snapshot_threshold: 100
failover:
  fencing_enabled: false
  lease_timeout: 3s
  primary_timeout: 5s
  maximum_lag_on_failover: 2097152
  synchronous_mode: quorum
health:
  interval: 2s
  failure_threshold: 4
tags:
  nofailover: true
`
	c := DefaultConfig()
	if err := yaml.Unmarshal([]byte(doc), &c); err != nil {
		t.Fatal(err)
	}
	if c.Raft.NodeName != "db2" || len(c.Raft.Peers) != 2 || c.Raft.Peers[1].Address != "10.0.0.2:8300" ||
		c.Raft.TLSCA != "/etc/pgbastion/ca.crt" || c.Raft.ElectionTimeout != 1500*time.Millisecond || c.Raft.SnapshotThreshold != 100 {
		t.Errorf("raft %+v", c.Raft)
	}
	if c.Failover.FencingEnabled || c.Failover.LeaseTimeout != 3*time.Second || c.Failover.MaximumLagOnFailover != 2<<20 ||
		c.Failover.SynchronousMode != "quorum" {
		t.Errorf("failover %+v", c.Failover)
	}
	// Keys absent from the file keep their defaults.
	if !c.Failover.SplitBrainProtection || c.Raft.LeaderLeaseTimeout != 250*time.Millisecond || c.Health.Timeout != 2*time.Second {
		t.Errorf("defaults lost: %+v %+v", c.Failover, c.Health)
	}
	if !c.Tags.NoFailover || c.Tags.FailoverPriority != 1 || c.Health.Interval != 2*time.Second {
		t.Errorf("tags/health %+v %+v", c.Tags, c.Health)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("validate: %v", err)
	}
}

func TestValidateRejects(t *testing.T) {
	cases := map[string]struct {
		mutate func(c *Config)
		want   string
	}{
		"no node name":         {func(c *Config) { c.Raft.NodeName = "" }, "node_name"},
		"bad bind":             {func(c *Config) { c.Raft.Bind = "8300" }, "raft.bind"},
		"no data dir":          {func(c *Config) { c.Raft.DataDir = "" }, "data_dir"},
		"duplicate peer":       {func(c *Config) { c.Raft.Peers = append(c.Raft.Peers, Peer{"n1", "10.0.0.9:8300"}) }, "listed twice"},
		"peer without address": {func(c *Config) { c.Raft.Peers[1].Address = "" }, "name and an address"},
		"tls without cert":     {func(c *Config) { c.Raft.TLSEnabled = true }, "tls_cert"},
		"ca without tls":       {func(c *Config) { c.Raft.TLSCA = "/ca.pem" }, "tls_enabled is false"},
		"lease over heartbeat": {func(c *Config) { c.Raft.LeaderLeaseTimeout = time.Second }, "leader_lease_timeout"},
		"election below hb":    {func(c *Config) { c.Raft.ElectionTimeout = 100 * time.Millisecond }, "election_timeout"},
		"tiny heartbeat":       {func(c *Config) { c.Raft.HeartbeatTimeout = time.Millisecond }, "at least 5ms"},
		"lease too long":       {func(c *Config) { c.Failover.LeaseTimeout = 3 * time.Second }, "primary_timeout"},
		"lease below raft": {func(c *Config) {
			c.Failover.LeaseTimeout, c.Failover.PrimaryTimeout = 900*time.Millisecond, 2*time.Second
		}, "twice raft.heartbeat_timeout"},
		"quorum loss < lease": {func(c *Config) { c.Failover.QuorumLossTimeout = time.Second }, "quorum_loss_timeout"},
		"drift out of range":  {func(c *Config) { c.Failover.MaxClockDrift = 0.6 }, "max_clock_drift"},
		"sync mode":           {func(c *Config) { c.Failover.SynchronousMode = "always" }, "synchronous_mode"},
		"slow health":         {func(c *Config) { c.Health.Interval = 2 * time.Second }, "health.interval"},
		"threshold zero":      {func(c *Config) { c.Health.FailureThreshold = 0 }, "failure_threshold"},
		"negative priority":   {func(c *Config) { c.Tags.FailoverPriority = -1 }, "failover_priority"},
		"replicatefrom self":  {func(c *Config) { c.Tags.ReplicateFrom = c.Raft.NodeName }, "replicatefrom"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			c := validConfig()
			tc.mutate(&c)
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate() = %v, want an error mentioning %q", err, tc.want)
			}
		})
	}
}

// TestLeaseInequality checks the split-brain rule at its boundary:
// lease·(1+drift) + margin < primary_timeout·(1−drift).
func TestLeaseInequality(t *testing.T) {
	cases := []struct {
		lease, primary, margin time.Duration
		drift                  float64
		ok                     bool
	}{
		{2 * time.Second, 3 * time.Second, 500 * time.Millisecond, 0.05, true},                  // defaults: 2.6s < 2.85s
		{2 * time.Second, 2500 * time.Millisecond, 500 * time.Millisecond, 0, false},            // equal: not strictly shorter
		{2 * time.Second, 2501 * time.Millisecond, 500 * time.Millisecond, 0, true},             // just shorter
		{2 * time.Second, 2700 * time.Millisecond, 500 * time.Millisecond, 0.05, false},         // ok without drift, not with it
		{2 * time.Second, 3 * time.Second, 1000 * time.Millisecond, 0, false},                   // the margin counts
		{1200 * time.Millisecond, 2 * time.Second, 300 * time.Millisecond, 0.1, true},           // 1.62s < 1.8s
		{1200 * time.Millisecond, 2 * time.Second, 300 * time.Millisecond, 0.2, false},          // 1.74s ≥ 1.6s
		{1200 * time.Millisecond, 1200 * time.Millisecond, 0, 0, false},                         // a lease as long as the wait
		{2 * time.Second, 10 * time.Second, 500 * time.Millisecond, 0.05, true},                 // conservative
		{2 * time.Second, 2 * time.Second, 0, 0.01, false},                                      // any drift breaks equality
		{1200 * time.Millisecond, 1800 * time.Millisecond, 500 * time.Millisecond, 0.05, false}, // 1.76s ≥ 1.71s
	}
	for _, tc := range cases {
		c := validConfig()
		c.Failover.LeaseTimeout, c.Failover.PrimaryTimeout = tc.lease, tc.primary
		c.Failover.SafetyMargin, c.Failover.MaxClockDrift = tc.margin, tc.drift
		err := c.Validate()
		if (err == nil) != tc.ok {
			t.Errorf("lease %s primary %s margin %s drift %g: Validate() = %v, want ok=%v", tc.lease, tc.primary, tc.margin, tc.drift, err, tc.ok)
		}
		if err != nil && !strings.Contains(err.Error(), "primary_timeout") {
			t.Errorf("unexpected error: %v", err)
		}
	}
}

// Whatever Validate accepts, hashicorp/raft accepts too.
func TestValidateAgreesWithRaft(t *testing.T) {
	for _, mutate := range []func(*Config){
		func(c *Config) {},
		func(c *Config) {
			c.Raft.HeartbeatTimeout, c.Raft.ElectionTimeout, c.Raft.LeaderLeaseTimeout = time.Second, time.Second, time.Second
		},
		func(c *Config) { c.Raft.CommitTimeout = 5 * time.Millisecond },
	} {
		c := validConfig()
		mutate(&c)
		if err := c.Validate(); err != nil {
			t.Fatalf("Validate: %v", err)
		}
		rc := raft.DefaultConfig()
		rc.LocalID = "n1"
		rc.HeartbeatTimeout, rc.ElectionTimeout = c.Raft.HeartbeatTimeout, c.Raft.ElectionTimeout
		rc.LeaderLeaseTimeout, rc.CommitTimeout = c.Raft.LeaderLeaseTimeout, c.Raft.CommitTimeout
		rc.SnapshotInterval, rc.SnapshotThreshold = c.Raft.SnapshotInterval, c.Raft.SnapshotThreshold
		if err := raft.ValidateConfig(rc); err != nil {
			t.Fatalf("raft rejects what Validate accepted: %v", err)
		}
	}
}

func TestControllerConfigCarriesTheSettings(t *testing.T) {
	c := validConfig()
	cc := c.controllerConfig()
	if !cc.FencingEnabled || cc.PrimaryTimeout != c.Failover.PrimaryTimeout || cc.LeaseTimeout != c.Failover.LeaseTimeout ||
		cc.MaxLagOnFailover != 1<<20 || cc.SynchronousMode != "off" || cc.DirectiveTimeout != time.Minute {
		t.Fatalf("%+v", cc)
	}
}
