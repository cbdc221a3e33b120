package daemon

import (
	"net"
	"os"
	"strconv"
	"sync"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/pgbastion/pgbastion/engine"
	"github.com/pgbastion/pgbastion/test/pgtest"
)

// FileConfig mirrors the sections of pgbastion's configuration file that the tests use. It is
// marshalled to YAML as is, so every setting the daemon reads from it must survive a YAML round
// trip (durations are written as "1s").
type FileConfig struct {
	Proxy engine.Config `yaml:"proxy"`
	API   APIConfig     `yaml:"api"`
	Log   LogConfig     `yaml:"log"`
}

// APIConfig is the listener part of the file's api section (admin.Config, which nothing but
// cmd imports). Empty MetricsListen turns the separate metrics port off.
type APIConfig struct {
	Listen        string `yaml:"listen"`
	MetricsListen string `yaml:"metrics_listen"`
	Token         string `yaml:"token,omitempty"`
}

// LogConfig is the file's log section.
type LogConfig struct {
	Level  string `yaml:"level"`
	Format string `yaml:"format"`
}

// NewConfig returns a standalone proxy configuration in front of backends: the engine's
// defaults, listen_rw, listen_ro and the API on free loopback ports (no separate metrics
// port), two event loops, and the PostgreSQL superuser (with the first backend's password) as
// the server login. The log level is info, or debug when PGBASTION_TEST_DEBUG is set.
func NewConfig(t testing.TB, backends ...*pgtest.Instance) *FileConfig {
	t.Helper()
	c := &FileConfig{Proxy: engine.DefaultConfig(), Log: LogConfig{Level: "info", Format: "text"}}
	if os.Getenv("PGBASTION_TEST_DEBUG") != "" {
		c.Log.Level = "debug"
	}
	c.Proxy.ListenRW = FreeAddr(t)
	c.Proxy.ListenRO = FreeAddr(t)
	c.API.Listen = FreeAddr(t)
	c.Proxy.EventLoops = 2
	if len(backends) > 0 {
		c.Proxy.Server = engine.ServerConfig{User: pgtest.Superuser, Password: backends[0].Password()}
	}
	for _, b := range backends {
		c.Proxy.Backends = append(c.Proxy.Backends, engine.BackendConfig{Host: b.Host(), Port: b.Port(), Name: b.Name()})
	}
	return c
}

// Marshal returns the configuration as YAML.
func (c *FileConfig) Marshal() ([]byte, error) { return yaml.Marshal(c) }

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	// The kernel may hand out a port it just gave us again once the listener is closed; never
	// return the same one twice in a process (two listeners of one daemon got the same port).
	givenMu.Lock()
	defer givenMu.Unlock()
	for {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("daemon: free port: %v", err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if !given[port] {
			given[port] = true
			return port
		}
	}
}

var (
	givenMu sync.Mutex
	given   = map[int]bool{}
)

// FreeAddr returns "127.0.0.1:port" for a port that was free a moment ago.
func FreeAddr(t testing.TB) string {
	t.Helper()
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(FreePort(t)))
}
