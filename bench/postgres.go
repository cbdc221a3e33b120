package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgbastion/pgbastion/ha/pgctl"
)

// Superuser is the role every client and proxy logs in as.
const Superuser = "postgres"

// postgresServer is the one PostgreSQL server every target routes to.
type postgresServer struct {
	inst     *pgctl.Instance
	binDir   string
	port     int
	password string
	dataDir  string
	// socketDir holds PostgreSQL's Unix socket (.s.PGSQL.<port>).
	socketDir string
}

// postgresSettings are tuned for a read-mostly benchmark on a small machine: the data set
// (pgbench scale 10 is about 160 MB) fits in shared_buffers, durability is off because
// nothing here needs to survive a crash, and max_connections leaves room for 1,000 direct
// pgbench clients next to the proxies' pools.
func postgresSettings() map[string]string {
	return map[string]string{
		"max_connections":                "1300",
		"shared_buffers":                 "1GB",
		"effective_cache_size":           "4GB",
		"work_mem":                       "4MB",
		"maintenance_work_mem":           "256MB",
		"fsync":                          "off",
		"synchronous_commit":             "off",
		"full_page_writes":               "off",
		"checkpoint_timeout":             "30min",
		"max_wal_size":                   "4GB",
		"autovacuum":                     "off",
		"huge_pages":                     "off",
		"log_min_messages":               "warning",
		"log_connections":                "off",
		"log_disconnections":             "off",
		"superuser_reserved_connections": "3",
	}
}

// freePort asks the kernel for a free TCP port on 127.0.0.1.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// startPostgres initialises a cluster under dir (which it hands to the postgres OS user when
// run as root) and starts it on a free port.
func startPostgres(ctx context.Context, dir, binDir, password, tlsCert, tlsKey string, log *slog.Logger) (*postgresServer, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	settings := postgresSettings()
	if tlsCert != "" {
		// For the server-tls scenario; every other client and proxy says sslmode=disable.
		settings["ssl"], settings["ssl_cert_file"], settings["ssl_key_file"] = "on", tlsCert, tlsKey
	}
	dataDir := filepath.Join(dir, "pgdata")
	inst, err := pgctl.New(pgctl.Config{
		BinDir:     binDir,
		DataDir:    dataDir,
		Host:       "127.0.0.1",
		Port:       port,
		Superuser:  Superuser,
		Password:   password,
		Parameters: settings,
	}, log)
	if err != nil {
		return nil, err
	}
	if err := inst.InitDB(ctx); err != nil {
		return nil, err
	}
	// Trust on loopback: with SCRAM every new connection costs PostgreSQL several
	// milliseconds of CPU on a small machine, which would eat most of a short run for 1,000
	// direct clients (pgbench's -T clock includes connecting) and says nothing about the
	// proxies' steady state. initdb made the file; rewriting it keeps its owner.
	hba := "# written by the PGBastion benchmark harness\n" +
		"local all all trust\n" +
		"host all all 127.0.0.1/32 trust\n"
	if err := os.WriteFile(filepath.Join(dataDir, "pg_hba.conf"), []byte(hba), 0o600); err != nil {
		return nil, err
	}
	if err := inst.Start(ctx); err != nil {
		return nil, err
	}
	return &postgresServer{inst: inst, binDir: inst.Config().BinDir, port: port, password: password, dataDir: dataDir,
		socketDir: inst.Config().SocketDir}, nil
}

func (pg *postgresServer) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	_ = pg.inst.Stop(ctx, pgctl.Fast)
}

// postmasterPID reads postmaster.pid.
func (pg *postgresServer) postmasterPID() int {
	b, err := os.ReadFile(filepath.Join(pg.dataDir, "postmaster.pid"))
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, _ := strconv.Atoi(strings.TrimSpace(line))
	return pid
}

// pgbenchInit loads the pgbench tables at the given scale.
func (pg *postgresServer) pgbenchInit(ctx context.Context, scale int, out io.Writer) error {
	cmd := exec.CommandContext(ctx, filepath.Join(pg.binDir, "pgbench"), "-i", "-q", "-s", strconv.Itoa(scale),
		"-h", "127.0.0.1", "-p", strconv.Itoa(pg.port), "-U", Superuser, "postgres")
	cmd.Env = pgEnv(pg.password)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("pgbench -i -s %d: %w", scale, err)
	}
	return nil
}

// pgEnv is the environment of a libpq client program: no PG* variables of the caller leak in.
func pgEnv(password string) []string {
	env := []string{"PATH=" + os.Getenv("PATH"), "LC_ALL=C", "TZ=UTC", "PGPASSWORD=" + password,
		"PGSSLMODE=disable", "PGCONNECT_TIMEOUT=30"}
	return env
}

// ping logs in to addr as the superuser and runs SELECT 1: the readiness check of every target,
// and proof that its setup lets a client through to PostgreSQL.
func ping(ctx context.Context, addr, password string) error {
	host, port, _ := net.SplitHostPort(addr)
	cfg, err := pgconn.ParseConfig(fmt.Sprintf("host=%s port=%s user=%s dbname=postgres sslmode=disable connect_timeout=5", host, port, Superuser))
	if err != nil {
		return err
	}
	cfg.Password = password
	c, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer c.Close(context.Background())
	_, err = c.Exec(ctx, "SELECT 1").ReadAll()
	return err
}

// waitReady pings addr until it answers, the process exits, or the timeout passes.
func waitReady(ctx context.Context, addr, password string, p *process, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		if p != nil {
			if done, err := p.exited(); done {
				return fmt.Errorf("%s exited during start-up (%v):\n%s", p.name, err, p.logTail())
			}
		}
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		last = ping(pctx, addr, password)
		cancel()
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s did not answer within %s: %v", addr, timeout, last)
}
