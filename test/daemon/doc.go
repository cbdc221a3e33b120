// Package daemon runs the real pgbastion binary for end-to-end tests.
//
// It owns: building cmd/pgbastion once per test binary (Binary; with the race detector when the
// test binary has it, so races in the daemon fail the test too), writing its YAML configuration
// (FileConfig mirrors the file's sections), starting it in its own process group with its output
// in a log file, waiting until its listeners accept connections, and the process controls fault
// tests need (Kill, Stop, Pause, Resume, PID, RSS). FreeAddr and FreePort pick loopback ports.
//
// # Lifecycle
//
// Every daemon is killed and reaped in t.Cleanup, also when the test fails; a failed test gets
// the tail of the daemon's log in its output, and a daemon whose log shows a Go panic or a data
// race fails the test that started it. The built binary lives in a temporary directory that
// Main removes after the package's tests; a package that uses this one should call it from
// TestMain:
//
//	func TestMain(m *testing.M) { daemon.Main(m) }
//
// Methods that take a testing.TB call t.Fatal and must run on the test's goroutine; Signal,
// PID, RSS, Exited and Log are safe from any goroutine.
//
// Tests that need what the machine lacks (the go tool, PostgreSQL) skip with pgtest.Skip, which
// fails them when CI=true.
//
// daemon must never be imported by non-test code.
package daemon
