package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/pgbastion/pgbastion/admin"
	"github.com/pgbastion/pgbastion/engine"
	"github.com/pgbastion/pgbastion/ha"
	"github.com/pgbastion/pgbastion/ha/fsm"
	"github.com/pgbastion/pgbastion/ha/notify"
	"github.com/pgbastion/pgbastion/ha/pgctl"
	"github.com/pgbastion/pgbastion/ha/tracing"
	"github.com/pgbastion/pgbastion/netlink"
)

// Config is the whole configuration file. Each section belongs to the package that owns it;
// this file only composes them. Without a raft section PGBastion is a standalone proxy.
type Config struct {
	// ConfigVersion is the file's schema version (absent: 1). A file written for a newer
	// schema is refused as a whole, with what to do, before any key is read.
	ConfigVersion int               `yaml:"config_version"`
	Proxy         engine.Config     `yaml:"proxy"`
	API           admin.Config      `yaml:"api"`
	Raft          *ha.RaftConfig    `yaml:"raft"`
	Failover      ha.FailoverConfig `yaml:"failover"`
	Health        ha.HealthConfig   `yaml:"health"`
	Tags          fsm.Tags          `yaml:"tags"`
	PostgreSQL    PostgreSQLConfig  `yaml:"postgresql"`
	VIP           netlink.Config    `yaml:"vip"`
	// Webhooks receive the cluster's events (a new primary, a failover, a node down...),
	// sent by the Raft leader.
	Webhooks []notify.Webhook `yaml:"webhooks"`
	Log      LogConfig        `yaml:"log"`
	// Tracing exports OpenTelemetry spans (API requests, failovers and switchovers across
	// the cluster, directives and the PostgreSQL programs they run) to a collector.
	Tracing tracing.Config `yaml:"tracing"`
}

// PostgreSQLConfig is the local PostgreSQL server this node manages (HA mode).
type PostgreSQLConfig struct {
	pgctl.Config `yaml:",inline"`
	// Bootstrap lets this node initialise a new cluster (initdb) when its data directory is
	// empty and no primary exists. Set it on exactly one node.
	Bootstrap bool `yaml:"bootstrap"`
	// AdvertiseHost is how other nodes reach this PostgreSQL (default: host).
	AdvertiseHost string `yaml:"advertise_host"`
	// SlotCleanupInterval is how often the primary drops inactive physical replication slots
	// that belong to no member (default 1h). Slots of removed members go at once.
	SlotCleanupInterval time.Duration `yaml:"slot_cleanup_interval"`
	// PermanentSlots are physical replication slots PGBastion never drops (for tools such as
	// pg_receivewal or a backup system).
	PermanentSlots []string `yaml:"permanent_slots"`
	// Callbacks are programs run when this node's PostgreSQL starts, stops, restarts or
	// changes role (Patroni's postgresql.callbacks).
	Callbacks notify.Callbacks `yaml:"callbacks"`
	// PrePromote is a program run on this node just before its PostgreSQL is promoted
	// (Patroni's pre_promote): a fencing hook — power off the old primary, take a cloud
	// lock, move a DNS name. Exit 0 lets the promotion go ahead; anything else refuses it,
	// and another candidate is tried (failover) or the switchover ends. Bounded by
	// postgresql.callbacks.timeout.
	PrePromote string `yaml:"pre_promote"`
	// StopOnExit stops PostgreSQL (fast mode: a shutdown checkpoint, every connected replica
	// sent the last WAL) when pgbastion stops. Off by default: PostgreSQL outlives a restart or
	// upgrade of pgbastion, which adopts it. Set it in a container, where PostgreSQL dies with
	// the container's init: without it, stopping the container is a crash of PostgreSQL.
	StopOnExit bool `yaml:"stop_on_exit"`
	// SwitchoverOnExit: when pgbastion stops on the primary (SIGTERM, SIGINT) and the cluster
	// is not paused, it first switches over to the best replica (up to 30 s), so that a
	// container's stop or a rolling update costs clients a second of held writes, not a
	// failover's refused ones.
	SwitchoverOnExit bool `yaml:"switchover_on_exit"`
}

// HA returns the HA core's configuration, or false for a standalone proxy.
func (c *Config) HA() (ha.Config, bool) {
	if c.Raft == nil {
		return ha.Config{}, false
	}
	hc := ha.Config{Raft: *c.Raft, Failover: c.Failover, Health: c.Health, Tags: c.Tags}
	hc.ApplyDefaults()
	return hc, true
}

// LogConfig configures logging.
type LogConfig struct {
	// Level is debug, info, warn or error.
	Level string `yaml:"level"`
	// Format is text or json.
	Format string `yaml:"format"`
}

// DefaultConfig returns every section's defaults.
func DefaultConfig() Config {
	hd := ha.DefaultConfig()
	return Config{Proxy: engine.DefaultConfig(), API: admin.DefaultConfig(), Failover: hd.Failover, Health: hd.Health,
		Tags: hd.Tags, PostgreSQL: PostgreSQLConfig{Config: pgctl.Config{Superuser: "postgres", Port: 5434}, SlotCleanupInterval: time.Hour},
		VIP: netlink.DefaultConfig(), Log: LogConfig{Level: "info", Format: "text"}}
}

// Validate checks every section.
func (c *Config) Validate() error {
	var errs []error
	if err := c.Proxy.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := c.API.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := c.VIP.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := c.Tracing.Validate(); err != nil {
		errs = append(errs, err)
	}
	if hc, ok := c.HA(); ok {
		if err := hc.Validate(); err != nil {
			errs = append(errs, err)
		}
		if err := c.PostgreSQL.Validate(); err != nil {
			errs = append(errs, err)
		}
		if c.PostgreSQL.SlotCleanupInterval <= 0 {
			errs = append(errs, fmt.Errorf("postgresql.slot_cleanup_interval %s: must be positive (default 1h)", c.PostgreSQL.SlotCleanupInterval))
		}
		if err := c.PostgreSQL.Callbacks.Validate("postgresql.callbacks"); err != nil {
			errs = append(errs, err)
		}
		if p := c.PostgreSQL.PrePromote; p != "" {
			if err := notify.ValidateProgram("postgresql.pre_promote", p); err != nil {
				errs = append(errs, err)
			}
		}
		for i := range c.Webhooks {
			if err := c.Webhooks[i].Validate(fmt.Sprintf("webhooks[%d]", i)); err != nil {
				errs = append(errs, err)
			}
		}
		if len(c.Proxy.Backends) > 0 {
			errs = append(errs, errors.New("proxy.backends must be empty with a raft section: the cluster state says where the primary and replicas are"))
		}
	} else {
		if c.Proxy.LocalSocket {
			errs = append(errs, errors.New("proxy.local_socket applies to cluster members (with a raft section); a standalone proxy reaches a backend through its Unix socket when the backend's host is the socket directory, e.g. {host: /var/run/postgresql, port: 5432}"))
		}
		if c.VIP.Enabled() {
			errs = append(errs, errors.New("vip needs a raft section: only a cluster member with a write lease may hold the floating IP"))
		}
		if len(c.Webhooks) > 0 || c.PostgreSQL.Callbacks.Any() {
			errs = append(errs, errors.New("webhooks and postgresql.callbacks need a raft section: a standalone proxy has no cluster events"))
		}
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("log.level: %q is not one of debug, info, warn, error", c.Log.Level))
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		errs = append(errs, fmt.Errorf("log.format: %q is not text or json", c.Log.Format))
	}
	return errors.Join(errs...)
}

var yamlLine = regexp.MustCompile(`line (\d+): (.*)`)

// LoadConfig reads a YAML file strictly: unknown keys and type mismatches are errors that name
// the file and line.
func LoadConfig(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("reading configuration: %w", err)
	}
	return ParseConfig(path, data)
}

// ConfigVersion is the newest configuration schema this binary reads. Raise it only for a
// change that an older binary would misread; new keys alone do not need it (an older binary
// refuses unknown keys).
const ConfigVersion = 1

// ParseConfig parses configuration text; name is used in error messages.
func ParseConfig(name string, data []byte) (Config, error) {
	data, err := expandEnv(name, data, lookupEnv)
	if err != nil {
		return Config{}, err
	}
	// The schema version first: a newer file's keys would otherwise be reported one by one
	// as unknown.
	var head struct {
		ConfigVersion any `yaml:"config_version"`
	}
	if err := yaml.Unmarshal(data, &head); err == nil && head.ConfigVersion != nil {
		v, ok := head.ConfigVersion.(int)
		switch {
		case !ok || v < 1:
			return Config{}, fmt.Errorf("%s: config_version %v: want a whole number, %d for this release", name, head.ConfigVersion, ConfigVersion)
		case v > ConfigVersion:
			return Config{}, fmt.Errorf("%s: config_version %d is newer than this pgbastion (%s) reads (%d): upgrade pgbastion on this host, or use a file written for version %d",
				name, v, version, ConfigVersion, ConfigVersion)
		}
	}
	cfg := DefaultConfig()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) {
		return Config{}, yamlError(name, err)
	}
	if err := cfg.Validate(); err != nil {
		return Config{}, fmt.Errorf("%s: invalid configuration:\n  %s", name, strings.ReplaceAll(err.Error(), "\n", "\n  "))
	}
	return cfg, nil
}

// yamlError rewrites yaml.v3's errors as "file:line: message" lines.
func yamlError(name string, err error) error {
	var te *yaml.TypeError
	if errors.As(err, &te) {
		lines := make([]string, 0, len(te.Errors))
		for _, e := range te.Errors {
			lines = append(lines, rewriteYAMLLine(name, e))
		}
		return errors.New(strings.Join(lines, "\n"))
	}
	return errors.New(rewriteYAMLLine(name, strings.TrimPrefix(err.Error(), "yaml: ")))
}

var notFound = regexp.MustCompile(`field (\S+) not found in type (\S+)`)

func rewriteYAMLLine(name, msg string) string {
	m := yamlLine.FindStringSubmatch(msg)
	if m == nil {
		return name + ": " + msg
	}
	text := m[2]
	if nf := notFound.FindStringSubmatch(text); nf != nil {
		text = fmt.Sprintf("unknown key %q (in %s); check the spelling against the documented settings", nf[1], nf[2])
	}
	return fmt.Sprintf("%s:%s: %s", name, m[1], text)
}
