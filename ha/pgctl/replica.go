package pgctl

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// BaseBackupMethod is the built-in way to create a replica: pg_basebackup from the primary.
const BaseBackupMethod = "basebackup"

// ReplicaMethod is one way to create a replica's data directory (Patroni's
// create_replica_methods). Methods are tried in order until one leaves a data directory;
// basebackup is pg_basebackup from the primary. Any other method runs Command, for example a
// restore from pgBackRest or WAL-G, which spares the primary the copy of a large database.
type ReplicaMethod struct {
	Name string `yaml:"name"`
	// Command is a program with arguments, split on spaces (no shell), run as os_user. Unless
	// NoParams, it gets --scope=CLUSTER --datadir=DIR --role=replica --connstring=CONNINFO
	// (the primary, without the password, which is in PGPASSWORD) as Patroni passes them.
	Command string `yaml:"command"`
	// KeepData leaves the old data directory in place for the command (pgBackRest --delta);
	// otherwise it starts from an empty one.
	KeepData bool `yaml:"keep_data"`
	NoParams bool `yaml:"no_params"`
}

func validateReplicaMethods(ms []ReplicaMethod) error {
	var errs []error
	seen := map[string]bool{}
	for k, m := range ms {
		at := fmt.Sprintf("postgresql.replica_methods[%d]", k)
		switch {
		case m.Name == "":
			errs = append(errs, fmt.Errorf("%s.name: required (basebackup, or a name for your command)", at))
			continue
		case seen[m.Name]:
			errs = append(errs, fmt.Errorf("%s.name: %q is listed twice", at, m.Name))
		}
		seen[m.Name] = true
		if m.Name == BaseBackupMethod {
			if m.Command != "" || m.KeepData || m.NoParams {
				errs = append(errs, fmt.Errorf("%s: basebackup is built in and takes no command, keep_data or no_params", at))
			}
			continue
		}
		f := strings.Fields(m.Command)
		if len(f) == 0 {
			errs = append(errs, fmt.Errorf("%s.command: required for method %q", at, m.Name))
			continue
		}
		switch fi, err := os.Stat(f[0]); {
		case !filepath.IsAbs(f[0]):
			errs = append(errs, fmt.Errorf("%s.command: %q must be an absolute path (no shell, no PATH)", at, f[0]))
		case err != nil:
			errs = append(errs, fmt.Errorf("%s.command: %v", at, err))
		case fi.IsDir() || fi.Mode()&0o111 == 0:
			errs = append(errs, fmt.Errorf("%s.command: %s is not an executable file", at, f[0]))
		}
	}
	return errors.Join(errs...)
}

// CreateReplica fills the data directory with a copy of the primary at host:port using the
// configured methods in order (default: basebackup alone). A method that fails, or succeeds
// without leaving a data directory, is logged and the next one is tried.
func (i *Instance) CreateReplica(ctx context.Context, host string, port int, appName, slot string) error {
	// Never replace the data directory under a running server.
	if i.PostmasterAlive() {
		pid, _ := i.pidFilePID()
		return fmt.Errorf("refusing to replace the data directory %s: a postmaster (PID %d) still runs on it; stop it first", i.cfg.DataDir, pid)
	}
	methods := i.cfg.ReplicaMethods
	if len(methods) == 0 {
		methods = []ReplicaMethod{{Name: BaseBackupMethod}}
	}
	var errs []error
	for k, m := range methods {
		start := time.Now()
		var err error
		if m.Name == BaseBackupMethod {
			err = i.BaseBackup(ctx, host, port, appName, slot)
		} else {
			err = i.runReplicaMethod(ctx, m, host, port, appName)
		}
		if err == nil {
			i.log.Info("replica data directory created", "method", m.Name, "took", time.Since(start).Round(time.Millisecond))
			return nil
		}
		if ctx.Err() != nil {
			return err
		}
		errs = append(errs, fmt.Errorf("method %s: %w", m.Name, err))
		if k < len(methods)-1 {
			i.log.Warn("replica creation method failed; trying the next", "method", m.Name, "next", methods[k+1].Name, "error", err)
		}
	}
	return fmt.Errorf("no replica creation method succeeded (postgresql.replica_methods): %w", errors.Join(errs...))
}

func (i *Instance) runReplicaMethod(ctx context.Context, m ReplicaMethod, host string, port int, appName string) error {
	if err := i.mkdirOwned(filepath.Dir(i.cfg.DataDir), 0o755); err != nil {
		return err
	}
	if !m.KeepData {
		if err := os.RemoveAll(i.cfg.DataDir); err != nil {
			return err
		}
	}
	if err := i.mkdirOwned(i.cfg.DataDir, 0o700); err != nil {
		return err
	}
	f := strings.Fields(m.Command)
	args := f[1:]
	if !m.NoParams {
		conn := fmt.Sprintf("host=%s port=%d user=%s application_name=%s", conninfoValue(host), port, conninfoValue(i.cfg.ReplicationUser), conninfoValue(appName))
		args = append(args, "--scope="+i.cfg.Scope, "--datadir="+i.cfg.DataDir, "--role=replica", "--connstring="+conn)
	}
	cmd := i.commandAt(ctx, f[0], args...)
	cmd.Env = append(cmd.Env, "PGPASSWORD="+i.cfg.ReplicationPassword, "PGHOST="+host, fmt.Sprintf("PGPORT=%d", port),
		"PGUSER="+i.cfg.ReplicationUser, "PGDATA="+i.cfg.DataDir)
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	var out tail
	out.max = 4096
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w\n%s", f[0], err, strings.TrimSpace(out.String()))
	}
	if !i.HasData() {
		return fmt.Errorf("%s exited 0 but left no PostgreSQL data directory (no PG_VERSION) in %s", f[0], i.cfg.DataDir)
	}
	return i.writeSettings()
}

// tail keeps the last max bytes written to it (a restore tool's last words say why it failed).
type tail struct {
	b   bytes.Buffer
	max int
}

func (t *tail) Write(p []byte) (int, error) {
	t.b.Write(p)
	if over := t.b.Len() - t.max; over > 0 {
		t.b.Next(over)
	}
	return len(p), nil
}

func (t *tail) String() string { return t.b.String() }
