package daemon_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgbastion/pgbastion/test/daemon"
)

// TestMemberYAML renders a member's configuration and has the real binary check it (strict
// loading: an unknown key or a wrong type fails), with the settings it varies and Extra.
func TestMemberYAML(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	m := daemon.Member{
		Name: "a", ListenRW: "127.0.0.1:15432", ListenRO: "127.0.0.1:15433", API: "127.0.0.1:18080", Token: "tok",
		Raft: "127.0.0.1:18300", Peers: []daemon.Peer{{Name: "a", Address: "127.0.0.1:18300"}, {Name: "b", Address: "127.0.0.1:18301"}},
		Dir: dir, PGHost: "127.0.0.1", PGPort: 15434, Password: "pw", Bootstrap: true,
		PoolMode: "session", QueryWaitTimeout: 2 * time.Second, Parameters: map[string]string{"synchronous_commit": "off"},
		VIPAddress: "198.18.0.200/24", VIPInterface: "eth0",
		Extra: "failover:\n  quorum_loss_timeout: 2s\n",
	}
	text := m.YAML()
	for _, want := range []string{"mode: session", "query_wait_timeout: 2s", "synchronous_commit: \"off\"", "fsync: \"off\"",
		"address: 198.18.0.200/24", "quorum_loss_timeout: 2s", "bootstrap: true"} {
		if !strings.Contains(text, want) {
			t.Errorf("configuration lacks %q:\n%s", want, text)
		}
	}
	path := filepath.Join(dir, "pgbastion.yaml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(daemon.Binary(t), "check", "-c", path).CombinedOutput()
	if err != nil {
		t.Fatalf("pgbastion check: %v\n%s\nconfiguration:\n%s", err, out, text)
	}
}
