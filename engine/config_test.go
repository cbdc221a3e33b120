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

func TestDatabaseAndUserOverrides(t *testing.T) {
	n := func(v int) *int { return &v }
	cfg := engine.DefaultConfig()
	cfg.Pool.DefaultPoolSize, cfg.Pool.MinPoolSize, cfg.Pool.MaxDBConnections = 20, 2, 50
	cfg.Databases = map[string]engine.DatabasePool{"reports": {PoolSize: n(4), MaxDBConnections: n(6), MinPoolSize: n(0)}}
	cfg.Users = map[string]engine.UserPool{"batch": {PoolSize: n(1), MaxUserConnections: 3}}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		db, user       string
		size, min, max int
	}{
		{"app", "web", 20, 2, 50},
		{"reports", "web", 4, 0, 6},
		{"reports", "batch", 1, 0, 6}, // the user's pool_size wins over the database's
		{"app", "batch", 1, 1, 50},    // min_pool_size never above the size
	} {
		l := cfg.PoolLimits(c.db, c.user)
		if l.Size != c.size || l.Min != c.min || cfg.MaxDBConnections(c.db) != c.max {
			t.Errorf("%s/%s: size %d min %d max_db %d, want %d %d %d", c.db, c.user, l.Size, l.Min, cfg.MaxDBConnections(c.db), c.size, c.min, c.max)
		}
	}
	if cfg.MaxUserConnections("batch") != 3 || cfg.MaxUserConnections("web") != 0 {
		t.Error("max_user_connections")
	}
	cfg.Databases["bad"] = engine.DatabasePool{PoolSize: n(0)}
	cfg.Users["worse"] = engine.UserPool{MaxUserConnections: -1}
	err := cfg.Validate()
	for _, want := range []string{"proxy.databases.bad.pool_size: 0 must be at least 1", "proxy.users.worse.max_user_connections"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v, want one saying %q", err, want)
		}
	}
}

func TestUnixSocketSettings(t *testing.T) {
	cfg := engine.DefaultConfig()
	cfg.ListenRW, cfg.ListenRO = "127.0.0.1:6432", "127.0.0.1:6433"
	cfg.UnixSocketDir = "/var/run/pgbastion"
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if rw, ro := cfg.UnixSocketPaths(); rw != "/var/run/pgbastion/.s.PGSQL.6432" || ro != "/var/run/pgbastion/.s.PGSQL.6433" {
		t.Fatalf("socket paths %q %q", rw, ro)
	}
	for want, mutate := range map[string]func(*engine.Config){
		"is not an absolute path":     func(c *engine.Config) { c.UnixSocketDir = "run" },
		"is not an octal permission":  func(c *engine.Config) { c.UnixSocketMode = "rw-rw----" },
		"the kernel allows 107":       func(c *engine.Config) { c.UnixSocketDir = "/" + strings.Repeat("d", 100) },
		"need proxy.unix_socket_dir":  func(c *engine.Config) { c.UnixSocketDir, c.UnixSocketGroup = "", "app" },
		"is not an octal permission ": func(c *engine.Config) { c.UnixSocketMode = "1777" },
	} {
		c := cfg
		mutate(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), strings.TrimSpace(want)) {
			t.Errorf("%s: %v", want, err)
		}
	}
}
