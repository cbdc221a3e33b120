package pgtest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"testing"
)

// InCI reports whether the environment says this is a CI run (CI=true), in which every skip is
// a failure.
func InCI() bool { return os.Getenv("CI") == "true" }

// Skip skips the test with the reason, or fails it when CI=true: in CI a missing prerequisite is
// a broken machine, not a reason to pass.
func Skip(t testing.TB, format string, args ...any) {
	t.Helper()
	reason := fmt.Sprintf(format, args...)
	if InCI() {
		t.Fatalf("CI=true, refusing to skip: %s", reason)
	} else {
		t.Skip(reason)
	}
}

// A Requirement checks one prerequisite of a test and returns why it is not met, or nil.
type Requirement func() error

// Require checks every requirement and skips the test (fails it when CI=true) naming all that
// are missing.
func Require(t testing.TB, reqs ...Requirement) {
	t.Helper()
	var errs []error
	for _, r := range reqs {
		if err := r(); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		Skip(t, "%v", errors.Join(errs...))
	}
}

// PostgreSQL requires the PostgreSQL server programs (initdb, postgres, pg_ctl) and, when the
// test runs as root, the OS user to run them as.
func PostgreSQL() Requirement {
	return func() error {
		if err := Programs("initdb", "postgres", "pg_ctl")(); err != nil {
			return err
		}
		_, err := lookupOSUser()
		return err
	}
}

// Programs requires the named PostgreSQL programs (pg_basebackup, pg_rewind, pgbench, psql, ...)
// in the PostgreSQL binary directory.
func Programs(names ...string) Requirement {
	return func() error {
		dir, err := BinDir()
		if err != nil {
			return err
		}
		for _, n := range names {
			if _, err := os.Stat(filepath.Join(dir, n)); err != nil {
				return fmt.Errorf("PostgreSQL program %s not found in %s", n, dir)
			}
		}
		return nil
	}
}

// Commands requires the named programs on PATH.
func Commands(names ...string) Requirement {
	return func() error {
		for _, n := range names {
			if _, err := exec.LookPath(n); err != nil {
				return fmt.Errorf("%s not found on PATH", n)
			}
		}
		return nil
	}
}

// Root requires the test to run as root.
func Root() Requirement {
	return func() error {
		if os.Geteuid() != 0 {
			return errors.New("test needs root")
		}
		return nil
	}
}

// BinDir returns the PostgreSQL binary directory: $PG_BINDIR when set, else the bin directory of
// the newest major version under /usr/lib/postgresql.
func BinDir() (string, error) {
	if d := os.Getenv("PG_BINDIR"); d != "" {
		if _, err := os.Stat(filepath.Join(d, "postgres")); err != nil {
			return "", fmt.Errorf("PG_BINDIR=%s has no postgres binary", d)
		}
		return d, nil
	}
	const root = "/usr/lib/postgresql"
	entries, err := os.ReadDir(root)
	if err != nil {
		return "", fmt.Errorf("PostgreSQL not installed (no %s; set PG_BINDIR)", root)
	}
	var versions []int
	for _, e := range entries {
		if v, err := strconv.Atoi(e.Name()); err == nil {
			if _, err := os.Stat(filepath.Join(root, e.Name(), "bin", "postgres")); err == nil {
				versions = append(versions, v)
			}
		}
	}
	if len(versions) == 0 {
		return "", fmt.Errorf("no PostgreSQL server binaries under %s (set PG_BINDIR)", root)
	}
	sort.Ints(versions)
	return filepath.Join(root, strconv.Itoa(versions[len(versions)-1]), "bin"), nil
}

// Program returns the path of a PostgreSQL program such as "pgbench" or "psql", skipping the
// test (failing it in CI) when it is missing.
func Program(t testing.TB, name string) string {
	t.Helper()
	Require(t, Programs(name))
	dir, _ := BinDir()
	return filepath.Join(dir, name)
}

// osUser is the account PostgreSQL programs run as. When the test is not root it is the current
// user and no credential switch happens.
type osUser struct {
	name     string
	uid, gid uint32
	switchTo bool // run children with this uid/gid (the test is root)
}

func lookupOSUser() (osUser, error) {
	if os.Geteuid() != 0 {
		u := osUser{uid: uint32(os.Getuid()), gid: uint32(os.Getgid())}
		if cur, err := user.Current(); err == nil {
			u.name = cur.Username
		}
		return u, nil
	}
	name := os.Getenv("PGTEST_OSUSER")
	if name == "" {
		name = "postgres"
	}
	u, err := user.Lookup(name)
	if err != nil {
		return osUser{}, fmt.Errorf("running as root and OS user %q (PGTEST_OSUSER) does not exist: PostgreSQL refuses to run as root", name)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return osUser{}, fmt.Errorf("OS user %q has a non-numeric uid or gid", name)
	}
	if uid == 0 {
		return osUser{}, fmt.Errorf("OS user %q is uid 0: PostgreSQL refuses to run as root", name)
	}
	return osUser{name: name, uid: uint32(uid), gid: uint32(gid), switchTo: true}, nil
}
