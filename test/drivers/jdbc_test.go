package drivers

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/pgbastion/pgbastion/test/pgtest"
)

// pgjdbcJar is Debian's libpostgresql-jdbc-java; PGJDBC_JAR overrides it.
func pgjdbcJar(t *testing.T) string {
	t.Helper()
	jar := os.Getenv("PGJDBC_JAR")
	if jar == "" {
		jar = "/usr/share/java/postgresql.jar"
	}
	if _, err := os.Stat(jar); err != nil {
		pgtest.Skip(t, "pgjdbc not found at %s (apt-get install libpostgresql-jdbc-java, or set PGJDBC_JAR)", jar)
	}
	return jar
}

// TestPgjdbc compiles java/JdbcClient.java and runs it: prepareThreshold=1 (server-side
// prepared statements from the first execution), batch inserts, transactions with
// savepoints, a few types, settings that follow the client. The JVM runs in a time zone other
// than the server's, which pgjdbc sends as a startup parameter.
func TestPgjdbc(t *testing.T) {
	t.Parallel()
	pgtest.Require(t, pgtest.Commands("java", "javac"))
	jar := pgjdbcJar(t)
	classes := t.TempDir()
	run(t, 2*time.Minute, "java", os.Environ(), "javac", "-d", classes, "-cp", jar, "JdbcClient.java")
	h := start(t, nil)
	h.pg.Exec(t, `CREATE TABLE jdbc_batch (client int, round int, n int CHECK (n >= 0), label text)`)
	h.pg.Exec(t, `CREATE TABLE jdbc_tx (client int, n int, committed bool)`)
	const rounds = 6
	s := runDriver(t, 2*time.Minute, "java", append(h.env(), "DRIVER_ROUNDS="+itoa(rounds)), "java",
		"-Duser.timezone=Asia/Tokyo", "-cp", classes+string(filepath.ListSeparator)+jar, "JdbcClient")
	s.verify(t, clients*rounds*20)
	for q, want := range map[string]string{
		`SELECT count(*) FROM jdbc_batch WHERE round >= 0`: itoa(clients * rounds * 20),
		`SELECT count(*) FROM jdbc_batch WHERE round < 0`:  "0",
		`SELECT count(*) FROM jdbc_tx WHERE committed`:     itoa(clients * rounds),
		`SELECT count(*) FROM jdbc_tx WHERE NOT committed`: "0",
	} {
		if got := h.pg.QueryString(t, q); got != want {
			t.Errorf("%s = %s, want %s", q, got, want)
		}
	}
	h.checkPool(t)
}
