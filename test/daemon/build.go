package daemon

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgbastion/pgbastion/test/pgtest"
)

// modulePath is the module whose cmd/pgbastion Binary builds.
const modulePath = "github.com/pgbastion/pgbastion"

// build is the one build of the binary per test binary.
var build struct {
	once sync.Once
	dir  string // temporary directory holding the binary; "" for PGBASTION_BIN
	path string
	race bool
	took time.Duration
	err  error
	skip bool // err is a missing prerequisite, not a build failure
}

// Binary returns the path of the pgbastion binary, building it on the first call (go build
// -tags hashicorpmetrics ./cmd/pgbastion, plus -race when the test binary has the race
// detector). PGBASTION_BIN names a prebuilt binary to use instead; PGBASTION_DAEMON_RACE=0 or
// =1 overrides the race choice. A missing go tool skips the test (fails it when CI=true); a
// failing build fails it.
func Binary(t testing.TB) string {
	t.Helper()
	build.once.Do(doBuild)
	if build.err != nil {
		if build.skip {
			pgtest.Skip(t, "%v", build.err)
		}
		t.Fatalf("daemon: %v", build.err)
	}
	return build.path
}

// RaceBinary reports whether Binary built the daemon with the race detector.
func RaceBinary() bool { return build.race }

func doBuild() {
	if p := os.Getenv("PGBASTION_BIN"); p != "" {
		if _, err := os.Stat(p); err != nil {
			build.err = fmt.Errorf("PGBASTION_BIN: %w", err)
			return
		}
		build.path = p
		return
	}
	goBin, err := goTool()
	if err != nil {
		build.err, build.skip = err, true
		return
	}
	root, err := moduleRoot()
	if err != nil {
		build.err = err
		return
	}
	dir, err := os.MkdirTemp("", "pgbastion-bin-")
	if err != nil {
		build.err = err
		return
	}
	build.dir = dir
	build.path = filepath.Join(dir, "pgbastion")
	build.race = raceEnabled
	switch os.Getenv("PGBASTION_DAEMON_RACE") {
	case "0":
		build.race = false
	case "1":
		build.race = true
	}
	args := []string{"build", "-tags", "hashicorpmetrics", "-o", build.path}
	if build.race {
		args = append(args, "-race")
	}
	args = append(args, "./cmd/pgbastion")
	cmd := exec.Command(goBin, args...)
	cmd.Dir = root
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	if err := cmd.Run(); err != nil {
		build.err = fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out.String())
	}
	build.took = time.Since(start)
}

// goTool finds the go command: on PATH, else in GOROOT or the usual install directory.
func goTool() (string, error) {
	if p, err := exec.LookPath("go"); err == nil {
		return p, nil
	}
	cands := []string{"/usr/local/go/bin/go"}
	if r := os.Getenv("GOROOT"); r != "" {
		cands = append([]string{filepath.Join(r, "bin", "go")}, cands...)
	}
	for _, c := range cands {
		if _, err := os.Stat(c); err == nil {
			return c, nil
		}
	}
	return "", errors.New("the go tool is needed to build pgbastion (not on PATH, not in GOROOT or /usr/local/go); or set PGBASTION_BIN")
}

// moduleRoot walks up from the working directory (a test runs in its package directory) to the
// directory whose go.mod declares modulePath.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.Contains(b, []byte("module "+modulePath+"\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod of %s above the working directory", modulePath)
		}
		dir = parent
	}
}

// Main runs the package's tests and then removes the built binary. Call it from TestMain.
func Main(m *testing.M) {
	code := m.Run()
	if build.dir != "" {
		_ = os.RemoveAll(build.dir)
	}
	os.Exit(code)
}
