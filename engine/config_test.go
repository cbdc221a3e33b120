package engine_test

import (
	"strings"
	"testing"

	"github.com/pgbastion/pgbastion/engine"
	"github.com/pgbastion/pgbastion/pool"
)

func TestAutoEventLoops(t *testing.T) {
	for _, c := range []struct {
		mode       pool.Mode
		cpus, want int
	}{
		{pool.ModeSession, 1, 1}, {pool.ModeSession, 2, 2}, {pool.ModeSession, 3, 3}, {pool.ModeSession, 64, 4},
		{pool.ModeTransaction, 1, 1}, {pool.ModeTransaction, 2, 2}, {pool.ModeTransaction, 5, 4}, {pool.ModeTransaction, 64, 4},
	} {
		if got := engine.AutoEventLoops(c.mode, c.cpus); got != c.want {
			t.Errorf("AutoEventLoops(%s, %d) = %d, want %d", c.mode, c.cpus, got, c.want)
		}
	}
}

func TestEventLoopsSetting(t *testing.T) {
	cfg := engine.DefaultConfig()
	if cfg.EventLoops != 0 {
		t.Fatalf("default event_loops = %d, want 0 (automatic)", cfg.EventLoops)
	}
	for _, n := range []int{0, 1, 256} {
		cfg.EventLoops = n
		if err := cfg.Validate(); err != nil {
			t.Errorf("event_loops %d: %v", n, err)
		}
	}
	for _, n := range []int{-1, 257} {
		cfg.EventLoops = n
		err := cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), "proxy.event_loops") {
			t.Errorf("event_loops %d: error %v, want one naming proxy.event_loops", n, err)
		}
	}
}

func TestAuthQuerySettings(t *testing.T) {
	for _, c := range []struct {
		auth engine.AuthConfig
		want string // "" when valid
	}{
		{engine.AuthConfig{Method: "scram-sha-256", AuthUser: "pgbastion_auth"}, ""},
		{engine.AuthConfig{Method: "md5", AuthFile: "/etc/users", AuthUser: "a", AuthQuery: "SELECT u, p FROM f($1)", AuthDBName: "auth"}, ""},
		{engine.AuthConfig{Method: "scram-sha-256"}, "auth_user"},
		{engine.AuthConfig{Method: "trust", AuthUser: "a"}, "trust does not"},
		{engine.AuthConfig{Method: "md5", AuthFile: "/etc/users", AuthQuery: "SELECT 1"}, "only with auth_user"},
		{engine.AuthConfig{Method: "md5", AuthUser: "a", AuthQuery: "SELECT u, p FROM users WHERE u = 'x'"}, "$1"},
		{engine.AuthConfig{Method: "hba", HBAFile: "/etc/hba.conf", AuthFile: "/etc/users"}, ""},
		{engine.AuthConfig{Method: "hba"}, "needs proxy.auth.hba_file"},
		{engine.AuthConfig{Method: "md5", AuthFile: "/etc/users", HBAFile: "/etc/hba.conf"}, "only with proxy.auth.method hba"},
	} {
		cfg := engine.DefaultConfig()
		cfg.Auth = c.auth
		err := cfg.Validate()
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%+v: %v", c.auth, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%+v: error %v, want one saying %q", c.auth, err, c.want)
		}
	}
}
