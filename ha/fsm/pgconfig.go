package fsm

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

// Cluster-wide PostgreSQL configuration, Patroni's "dynamic configuration": parameters an
// operator sets once for every node. The FSM only records the wanted values and each node's
// report of applying them; every node's agent applies them to its own PostgreSQL with ALTER
// SYSTEM and a reload (package ha).
//
// Both commands are ignorable: a node of an older version skips them (and so does not apply
// the configuration) instead of stopping its state machine during a rolling upgrade.
const (
	TypeUpdatePGConfig CommandType = IgnorableFlag | 20
	TypeReportPGConfig CommandType = IgnorableFlag | 21
)

// Limits on the cluster-wide configuration, checked before a change is committed.
const (
	MaxPGParams         = 200  // parameters set at once
	MaxPGParamValue     = 4096 // bytes in one value
	maxPGParamName      = 63   // NAMEDATALEN-1, as PostgreSQL truncates longer names
	maxPGConfigResets   = 256  // remembered reset names (see PGConfig.Reset)
	maxPendingRestart   = 64   // names kept in one node's report
	maxPGConfigErrorLen = 2048 // bytes of one node's apply error
)

// PGConfig is the cluster-wide PostgreSQL configuration.
type PGConfig struct {
	// Version counts changes, starting at 1; a node's report names the version it applied.
	Version uint64 `json:"version"`
	// Params are the wanted values, by parameter name (lower case).
	Params map[string]string `json:"parameters"`
	// Reset lists, sorted, parameters that were removed from Params: agents run ALTER SYSTEM
	// RESET for them, so a node that was down when one was removed still drops it.
	Reset     []string  `json:"reset,omitempty"`
	UpdatedAt time.Time `json:"updated_at"`
	// UpdatedIndex is the log index of the last change.
	UpdatedIndex uint64 `json:"updated_index"`
	// Nodes holds each node's last report of applying the configuration.
	Nodes map[string]PGConfigStatus `json:"nodes,omitempty"`
}

// PGConfigStatus is one node's report of applying the cluster-wide configuration.
type PGConfigStatus struct {
	// Version is the configuration version the node applied (with or without errors).
	Version uint64 `json:"version"`
	// PendingRestart lists the parameters whose new value PostgreSQL takes only at its next
	// restart (pg_settings.pending_restart), sorted.
	PendingRestart []string `json:"pending_restart,omitempty"`
	// Error says what PostgreSQL refused, "" when every parameter was applied.
	Error      string    `json:"error,omitempty"`
	ReportedAt time.Time `json:"reported_at"`
}

// UpdatePGConfig changes the cluster-wide configuration: Set adds or changes parameters,
// Reset removes them. IfVersion, when not 0, makes the change conditional on the current
// version (an editor's optimistic lock).
type UpdatePGConfig struct {
	Set       map[string]string `json:"set,omitempty"`
	Reset     []string          `json:"reset,omitempty"`
	IfVersion uint64            `json:"if_version,omitempty"`
}

// ReportPGConfig is a node's report of applying configuration Version.
type ReportPGConfig struct {
	Node           string   `json:"node"`
	Version        uint64   `json:"version"`
	PendingRestart []string `json:"pending_restart,omitempty"`
	Error          string   `json:"error,omitempty"`
}

func (UpdatePGConfig) CommandType() CommandType { return TypeUpdatePGConfig }
func (ReportPGConfig) CommandType() CommandType { return TypeReportPGConfig }
func (UpdatePGConfig) CommandVersion() uint8    { return 1 }
func (ReportPGConfig) CommandVersion() uint8    { return 1 }

// protectedPGParams are the parameters PGBastion sets itself on every node, or that differ by
// node; the cluster-wide configuration may not touch them. The value says where they belong.
var protectedPGParams = map[string]string{
	"listen_addresses":          "postgresql.host in the node's YAML",
	"port":                      "postgresql.port in the node's YAML",
	"unix_socket_directories":   "postgresql.socket_dir in the node's YAML",
	"data_directory":            "postgresql.data_dir in the node's YAML",
	"config_file":               "the node's own files",
	"hba_file":                  "the node's own files",
	"ident_file":                "the node's own files",
	"external_pid_file":         "the node's own files",
	"hot_standby":               "PGBastion (always on: replicas serve reads)",
	"primary_conninfo":          "PGBastion (it points each standby at the primary)",
	"primary_slot_name":         "PGBastion (one slot per member)",
	"recovery_target_timeline":  "PGBastion (latest, to follow promotions)",
	"synchronous_standby_names": "PGBastion (failover.synchronous_mode)",
}

// StandbyMinimums are the parameters a hot standby must run with at least the primary's value
// of: it refuses to start otherwise. Raising them is safe in any order (replicas first, then
// the primary through a switchover); lowering them below what the primary runs with would
// leave a restarted standby unable to start, so the API refuses it.
var StandbyMinimums = map[string]bool{
	"max_connections":           true,
	"max_prepared_transactions": true,
	"max_locks_per_transaction": true,
	"max_wal_senders":           true,
	"max_worker_processes":      true,
}

// ValidPGParamName reports whether name has the form of a PostgreSQL parameter name: a
// lower-case identifier, or two joined by a dot (an extension's custom parameter).
func ValidPGParamName(name string) bool {
	if name == "" || len(name) > maxPGParamName {
		return false
	}
	parts := strings.Split(name, ".")
	if len(parts) > 2 {
		return false
	}
	for _, p := range parts {
		if p == "" || (p[0] >= '0' && p[0] <= '9') {
			return false
		}
		for i := 0; i < len(p); i++ {
			c := p[i]
			if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '_' {
				return false
			}
		}
	}
	return true
}

// CheckPGParam returns why name cannot be part of the cluster-wide configuration, or nil.
// value is checked when set is true.
func CheckPGParam(name, value string, set bool) error {
	if !ValidPGParamName(name) {
		return fmt.Errorf("%q is not a PostgreSQL parameter name (lower-case letters, digits and _, at most %d bytes; extension.name for a custom one)", name, maxPGParamName)
	}
	if where, ok := protectedPGParams[name]; ok || strings.HasPrefix(name, "recovery_target") {
		if !ok {
			where = "PGBastion (recovery targets would stop a standby)"
		}
		return fmt.Errorf("%s cannot be set cluster-wide: it is managed by %s", name, where)
	}
	if !set {
		return nil
	}
	if len(value) > MaxPGParamValue {
		return fmt.Errorf("the value of %s is %d bytes; at most %d", name, len(value), MaxPGParamValue)
	}
	if strings.ContainsAny(value, "\x00\n\r") {
		return fmt.Errorf("the value of %s contains a NUL byte or a line break", name)
	}
	if name == "wal_level" && strings.EqualFold(strings.TrimSpace(value), "minimal") {
		return fmt.Errorf("wal_level = minimal would stop replication; use replica or logical")
	}
	return nil
}

func (s *State) updatePGConfig(c UpdatePGConfig, m Meta) Result {
	if len(c.Set) == 0 && len(c.Reset) == 0 {
		return fail(CodeInvalid, "nothing to change: name parameters to set or reset")
	}
	cur := s.PGConfig
	var version uint64
	if cur != nil {
		version = cur.Version
	}
	if c.IfVersion != 0 && c.IfVersion != version {
		return fail(CodeConflict, "the configuration is at version %d, not %d: it changed meanwhile; read it again", version, c.IfVersion)
	}
	for name, v := range c.Set {
		if err := CheckPGParam(name, v, true); err != nil {
			return fail(CodeInvalid, "%v", err)
		}
	}
	for _, name := range c.Reset {
		if err := CheckPGParam(name, "", false); err != nil {
			return fail(CodeInvalid, "%v", err)
		}
		if _, both := c.Set[name]; both {
			return fail(CodeInvalid, "%s is both set and reset in one change", name)
		}
	}
	n := &PGConfig{Version: version + 1, UpdatedAt: m.At, UpdatedIndex: m.Index, Params: map[string]string{}}
	if cur != nil {
		n.Params = maps.Clone(cur.Params)
		n.Reset = slices.Clone(cur.Reset)
		n.Nodes = cur.Nodes // reports are replaced, never modified in place
	}
	for _, name := range c.Reset {
		if _, ok := n.Params[name]; ok {
			delete(n.Params, name)
		}
		if i, found := slices.BinarySearch(n.Reset, name); !found {
			n.Reset = slices.Insert(n.Reset, i, name)
		}
	}
	for name, v := range c.Set {
		n.Params[name] = v
		if i, found := slices.BinarySearch(n.Reset, name); found {
			n.Reset = slices.Delete(n.Reset, i, i+1)
		}
	}
	if len(n.Params) > MaxPGParams {
		return fail(CodeInvalid, "%d cluster-wide parameters; at most %d", len(n.Params), MaxPGParams)
	}
	if len(n.Reset) > maxPGConfigResets {
		// The oldest resets have been applied by every node that was up for a long while.
		n.Reset = n.Reset[len(n.Reset)-maxPGConfigResets:]
	}
	s.PGConfig = n
	return Result{ID: n.Version}
}

func (s *State) reportPGConfig(c ReportPGConfig, m Meta) Result {
	if _, ok := s.Members[c.Node]; !ok {
		return fail(CodeNotFound, "member %q is not registered", c.Node)
	}
	if s.PGConfig == nil || c.Version == 0 || c.Version > s.PGConfig.Version {
		return fail(CodeInvalid, "configuration version %d does not exist", c.Version)
	}
	pending := slices.Clone(c.PendingRestart)
	slices.Sort(pending)
	pending = slices.Compact(pending)
	if len(pending) > maxPendingRestart {
		pending = pending[:maxPendingRestart]
	}
	msg := c.Error
	if len(msg) > maxPGConfigErrorLen {
		msg = msg[:maxPGConfigErrorLen]
	}
	n := *s.PGConfig
	n.Nodes = maps.Clone(n.Nodes)
	if n.Nodes == nil {
		n.Nodes = map[string]PGConfigStatus{}
	}
	n.Nodes[c.Node] = PGConfigStatus{Version: c.Version, PendingRestart: pending, Error: msg, ReportedAt: m.At}
	s.PGConfig = &n
	return Result{}
}
