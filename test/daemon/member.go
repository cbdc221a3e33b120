package daemon

import (
	"fmt"
	"maps"
	"os"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Member is the configuration of one member of a PGBastion cluster, the settings the cluster
// tests (test/cluster on loopback, test/e2e in network namespaces) vary. YAML renders the whole
// configuration file; what is not set here is pgbastion's default.
type Member struct {
	// Name is raft.node_name.
	Name string
	// ListenRW, ListenRO and API are the proxy's and the REST API's listen addresses.
	ListenRW, ListenRO, API string
	// Token protects the API's mutations.
	Token string
	// Raft is this member's Raft address (bind and advertise); Peers every member's, this one
	// included, in bootstrap order.
	Raft  string
	Peers []Peer
	// Dir holds raft/ (Raft's data) and pgdata/ (PostgreSQL's data directory).
	Dir string
	// PGHost and PGPort are where this member's PostgreSQL listens (the other members stream
	// from it there).
	PGHost string
	PGPort int
	// Password is the PostgreSQL superuser's (postgres) password, also the proxy's server login.
	Password string
	// Bootstrap: this member runs initdb; the others clone it.
	Bootstrap bool
	// PoolMode is session or transaction (default transaction); QueryWaitTimeout bounds how
	// long the proxy holds a client without a server (default 30 s).
	PoolMode         string
	QueryWaitTimeout time.Duration
	// Parameters are added to PostgreSQL's (fsync is always off: the tests' data is throwaway).
	Parameters map[string]string
	// VIPAddress and VIPInterface configure the floating IP (none when VIPAddress is empty).
	VIPAddress, VIPInterface string
	// Extra is YAML text with further top-level sections (failover:, health:, ...), appended.
	Extra string
}

// Peer is one entry of raft.peers.
type Peer struct {
	Name    string `yaml:"name"`
	Address string `yaml:"address"`
}

// YAML renders the member's configuration file. The log level is info, or debug when
// PGBASTION_TEST_DEBUG is set.
func (m Member) YAML() string {
	poolMode := m.PoolMode
	if poolMode == "" {
		poolMode = "transaction"
	}
	wait := m.QueryWaitTimeout
	if wait == 0 {
		wait = 30 * time.Second
	}
	params := map[string]string{"fsync": "off", "wal_keep_size": "512MB"}
	maps.Copy(params, m.Parameters)
	level := "info"
	if os.Getenv("PGBASTION_TEST_DEBUG") != "" {
		level = "debug"
	}
	doc := map[string]any{
		"proxy": map[string]any{
			"listen_rw":   m.ListenRW,
			"listen_ro":   m.ListenRO,
			"event_loops": 2,
			"pool": map[string]any{"enabled": true, "mode": poolMode, "default_pool_size": 10,
				"query_wait_timeout": wait.String()},
			"server": map[string]any{"user": "postgres", "password": m.Password},
		},
		"api": map[string]any{"listen": m.API, "metrics_listen": "", "token": m.Token, "operation_wait": "2m"},
		"raft": map[string]any{"node_name": m.Name, "bind": m.Raft, "advertise": m.Raft,
			"data_dir": m.Dir + "/raft", "peers": m.Peers},
		"postgresql": map[string]any{
			"data_dir": m.Dir + "/pgdata", "host": m.PGHost, "port": m.PGPort,
			"superuser": "postgres", "password": m.Password, "bootstrap": m.Bootstrap,
			"remove_data_directory_on_rewind_failure": true,
			"parameters": params,
		},
		"log": map[string]any{"level": level},
	}
	if m.VIPAddress != "" {
		doc["vip"] = map[string]any{"address": m.VIPAddress, "interface": m.VIPInterface}
	}
	b, err := yaml.Marshal(doc)
	if err != nil {
		panic(fmt.Sprintf("daemon: rendering %s's configuration: %v", m.Name, err)) // maps of strings and numbers
	}
	if m.Extra == "" {
		return string(b)
	}
	return string(b) + strings.TrimSuffix(m.Extra, "\n") + "\n"
}
