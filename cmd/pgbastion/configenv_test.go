package main

import (
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// withEnv makes ParseConfig see env as the environment for the test.
func withEnv(t *testing.T, env map[string]string) {
	t.Helper()
	old := lookupEnv
	lookupEnv = func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	t.Cleanup(func() { lookupEnv = old })
}

// TestConfigEnvironmentReferences: ${NAME} and ${NAME:-default} in values take the
// environment's values, typed as if written in the file when they stand unquoted, strings
// exactly as given when they need quoting or were quoted; comments, keys and $${ are left.
func TestConfigEnvironmentReferences(t *testing.T) {
	withEnv(t, map[string]string{
		"NODE": "db2", "NODE_IP": "10.0.0.12", "PG_PORT": "5434", "EMPTY": "",
		"PW": `p@ss: w#rd "quoted" 'single' \ and ${NOT_EXPANDED}`, "TOKEN": "0123",
	})
	text := `# node ${UNSET_IN_A_COMMENT} is fine
proxy:
  listen_rw: 0.0.0.0:5432
  server: {user: postgres, password: "${PW}"}
api:
  token: '${TOKEN}'
raft:
  node_name: ${NODE}
  advertise: ${NODE_IP}:8300
  data_dir: /var/lib/${NODE}/raft
  peers:
    - {name: db1, address: "10.0.0.11:8300"}
    - {name: db2, address: "${NODE_IP:-10.0.0.99}:8300"}
postgresql:
  data_dir: /var/lib/${NODE}/pgdata
  port: ${PG_PORT}
  host: ${LISTEN:-0.0.0.0}
  advertise_host: ${EMPTY:-10.0.0.12}
  password: ${PW}
  superuser: $${literal}
`
	cfg, err := ParseConfig("env.yaml", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	hc, _ := cfg.HA()
	pw := `p@ss: w#rd "quoted" 'single' \ and ${NOT_EXPANDED}`
	for _, c := range []struct{ name, got, want string }{
		{"node_name", hc.Raft.NodeName, "db2"},
		{"advertise", hc.Raft.Advertise, "10.0.0.12:8300"},
		{"raft data_dir", hc.Raft.DataDir, "/var/lib/db2/raft"},
		{"peer address", hc.Raft.Peers[1].Address, "10.0.0.12:8300"},
		{"host (default)", cfg.PostgreSQL.Host, "0.0.0.0"},
		{"advertise_host (empty: default)", cfg.PostgreSQL.AdvertiseHost, "10.0.0.12"},
		{"password (needs quoting)", cfg.PostgreSQL.Password, pw},
		{"server password (quoted)", cfg.Proxy.Server.Password, pw},
		{"token (quoted: stays a string)", cfg.API.Token, "0123"},
		{"$${ escape", cfg.PostgreSQL.Superuser, "${literal}"},
	} {
		if c.got != c.want {
			t.Errorf("%s: %q, want %q", c.name, c.got, c.want)
		}
	}
	if cfg.PostgreSQL.Port != 5434 {
		t.Errorf("port: %d (an unquoted reference is typed as if written)", cfg.PostgreSQL.Port)
	}

	// An unset variable without a default names the file, line and variable.
	_, err = ParseConfig("env.yaml", []byte("raft:\n  node_name: db1\n  advertise: ${MISSING_IP}:8300\n"))
	if err == nil || !strings.Contains(err.Error(), "env.yaml:3: environment variable MISSING_IP is not set") {
		t.Fatalf("unset variable: %v", err)
	}
	// Lines stay where they were: an error after an expansion names the file's line.
	_, err = ParseConfig("env.yaml", []byte("postgresql:\n  password: ${PW}\n  port: ${PG_PORT}\n  prot: 1\n"))
	if err == nil || !strings.Contains(err.Error(), `env.yaml:4: unknown key "prot"`) {
		t.Fatalf("line numbers after expansion: %v", err)
	}
	// A reference that makes a number field a word is a type error on its line.
	withEnv(t, map[string]string{"PG_PORT": "fivefour"})
	_, err = ParseConfig("env.yaml", []byte("postgresql:\n  port: ${PG_PORT}\n"))
	if err == nil || !strings.Contains(err.Error(), "env.yaml:2:") {
		t.Fatalf("a word for a port: %v", err)
	}
}

// FuzzExpandEnv: expansion never panics, and whatever the variables hold (here a value made to
// break YAML), a file that parsed before expansion parses after it: a value cannot inject
// structure.
func FuzzExpandEnv(f *testing.F) {
	f.Add("a: ${X}\n", "v")
	f.Add("a: {b: \"${X}\", c: '${Y:-d}'}\nl: [${X}]\n", "x: y\n- z")
	f.Add("k: |\n  ${X}\n", "\"")
	f.Add("a: b${X}c${X}\n# ${Z}\n", "#")
	f.Fuzz(func(t *testing.T, text, value string) {
		var before any
		if yaml.Unmarshal([]byte(text), &before) != nil {
			return
		}
		out, err := expandEnv("f.yaml", []byte(text), func(string) (string, bool) { return value, true })
		if err != nil {
			return
		}
		var after any
		if err := yaml.Unmarshal(out, &after); err != nil {
			t.Fatalf("%q with %q expanded to %q, which does not parse: %v", text, value, out, err)
		}
	})
}
