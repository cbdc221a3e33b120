package container

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

const (
	image   = "localhost/pgbastion:container-test"
	network = "pgbastion-container-test"
	subnet  = "198.19.77.0/24"
	// password and token go to the containers' environment.
	password = `pg secret: #1 'q' \b`
	token    = "api-token-for-the-test"
)

// Podman on this kind of machine: crun cannot set the container's rlimits above conmon's (no
// CAP_SYS_RESOURCE here) and the cgroups are a v1/v2 hybrid crun refuses; runc with limits
// within the current ones works.
var runtimeFlags = []string{"--runtime", "runc", "--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"}

type node struct {
	name, container, ip string
}

func (n node) api() string { return "http://" + n.ip + ":8080" }

func TestImageRunsACluster(t *testing.T) {
	requireTools(t)
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	example := filepath.Join(root, "docs/container/pgbastion.yaml")
	baseImages(t)
	buildImage(t, root)

	prefix := fmt.Sprintf("pgbt%d-", os.Getpid())
	nodes := []node{{"node1", prefix + "node1", "198.19.77.11"}, {"node2", prefix + "node2", "198.19.77.12"}, {"node3", prefix + "node3", "198.19.77.13"}}
	_ = exec.Command("podman", "network", "rm", "-f", network).Run() // a previous run's, if it died
	podman(t, "network", "create", "--subnet", subnet, "--gateway", "198.19.77.1", network)
	t.Cleanup(func() { _ = exec.Command("podman", "network", "rm", "-f", network).Run() })
	for i, n := range nodes {
		t.Cleanup(func() {
			if t.Failed() {
				out, _ := exec.Command("podman", "logs", "--tail", "60", n.container).CombinedOutput()
				t.Logf("%s's last log lines:\n%s", n.name, out)
			}
			_ = exec.Command("podman", "rm", "-f", "-v", n.container).Run()
			_ = exec.Command("podman", "volume", "rm", "-f", n.container).Run()
		})
		run(t, n, example, i == 0)
	}

	// The image's HEALTHCHECK passes on every node once its daemon serves its API.
	for _, n := range nodes {
		await(t, 2*time.Minute, n.name+"'s HEALTHCHECK passes", func() error {
			return exec.Command("podman", "healthcheck", "run", n.container).Run()
		})
	}
	primary := awaitCluster(t, nodes, "", 3*time.Minute)
	t.Logf("cluster up: %s is the primary", primary.name)

	// Writes through any node's proxy reach the primary.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	other := pick(nodes, func(n node) bool { return n != primary })
	exec1(t, ctx, other.ip+":5432", "CREATE TABLE boxed (id int); INSERT INTO boxed SELECT generate_series(1, 500)")

	// ctl health inside the containers: only the primary passes --check primary.
	for _, n := range nodes {
		out, err := exec.Command("podman", "exec", n.container, "pgbastion", "ctl", "health", "--check", "primary").CombinedOutput()
		if (err == nil) != (n == primary) {
			t.Fatalf("ctl health --check primary on %s (primary %s): %v\n%s", n.name, primary.name, err, out)
		}
	}

	// A switchover with the CLI inside a container: it finds the token in the environment.
	cand := other
	if out, err := exec.Command("podman", "exec", primary.container, "pgbastion", "ctl", "switchover", "--candidate", cand.name).CombinedOutput(); err != nil {
		t.Fatalf("ctl switchover --candidate %s: %v\n%s", cand.name, err, out)
	}
	old := primary
	primary = awaitCluster(t, nodes, "", 2*time.Minute)
	if primary != cand {
		t.Fatalf("after the switchover the primary is %s, want %s", primary.name, cand.name)
	}
	t.Logf("switchover: %s → %s", old.name, primary.name)

	// Stopping the primary's container hands over to a replica and stops its PostgreSQL
	// cleanly; the new primary has every row.
	stopped := primary
	start := time.Now()
	podman(t, "stop", "-t", "60", stopped.container)
	t.Logf("podman stop %s took %v", stopped.name, time.Since(start).Round(time.Millisecond))
	logs, _ := exec.Command("podman", "logs", stopped.container).CombinedOutput()
	if !strings.Contains(string(logs), "postgresql.stop_on_exit: PostgreSQL stopped") {
		t.Fatalf("%s's log does not say PostgreSQL stopped cleanly:\n%s", stopped.name, tail(string(logs), 30))
	}
	// The example sets switchover_on_exit: the primary handed over before it stopped.
	if !strings.Contains(string(logs), "postgresql.switchover_on_exit: switchover finished") {
		t.Fatalf("%s's log does not show a switchover before the stop:\n%s", stopped.name, tail(string(logs), 30))
	}
	alive := []node{}
	for _, n := range nodes {
		if n != stopped {
			alive = append(alive, n)
		}
	}
	next := awaitPrimary(t, alive, stopped.name, 2*time.Minute)
	t.Logf("%s took over %v after the stop began", next.name, time.Since(start).Round(time.Millisecond))
	var rows int
	await(t, time.Minute, "the rows through the new primary", func() error {
		c, err := connect(ctx, next.ip+":5432")
		if err != nil {
			return err
		}
		defer c.Close(ctx)
		return c.QueryRow(ctx, "SELECT count(*) FROM boxed").Scan(&rows)
	})
	if rows != 500 {
		t.Fatalf("the new primary %s has %d rows of 500", next.name, rows)
	}
	// It comes back as a new container at another address, with its data: the others find it
	// under its name.
	podman(t, "rm", stopped.container)
	moved := stopped
	moved.ip = "198.19.77.2" + strings.TrimPrefix(stopped.name, "node")
	run(t, moved, example, false)
	for i := range nodes {
		if nodes[i] == stopped {
			nodes[i] = moved
		}
	}
	if p := awaitCluster(t, nodes, moved.name, 3*time.Minute); p != next {
		t.Fatalf("after %s came back the primary is %s, want %s", moved.name, p.name, next.name)
	}
	t.Logf("%s rejoined from %s (was %s)", moved.name, moved.ip, stopped.ip)
}

// run starts node n's container: the example file as it is, the environment saying which node
// (the others reach it by its network alias, its name), its data in a volume named after it.
// The test itself reaches it at its fixed address.
func run(t *testing.T, n node, example string, bootstrap bool) {
	t.Helper()
	args := append([]string{"run", "-d", "--name", n.container, "--hostname", n.name,
		"--network", network, "--network-alias", n.name, "--ip", n.ip,
		"-v", example + ":/etc/pgbastion/pgbastion.yaml:ro", "-v", n.container + ":/var/lib/pgbastion",
		"-e", "PGBASTION_NODE_NAME=" + n.name, "-e", "PGBASTION_NODE_ADDRESS=" + n.name,
		"-e", fmt.Sprintf("PGBASTION_BOOTSTRAP=%t", bootstrap),
		"-e", "PGBASTION_PG_PASSWORD=" + password, "-e", "PGBASTION_API_TOKEN=" + token}, runtimeFlags...)
	podman(t, append(args, image)...)
}

// view is the part of GET /nodes the test reads.
type view struct {
	CaughtUp bool   `json:"caught_up"`
	Primary  string `json:"primary"`
	Nodes    []struct {
		Name   string `json:"name"`
		Status struct {
			Role     string `json:"role"`
			Healthy  bool   `json:"healthy"`
			Timeline uint32 `json:"timeline"`
		} `json:"status"`
		StatusAge *float64 `json:"status_age_seconds"`
	} `json:"nodes"`
}

func getView(n node) (view, error) {
	var v view
	c := &http.Client{Timeout: 3 * time.Second}
	resp, err := c.Get(n.api() + "/nodes")
	if err != nil {
		return v, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return v, fmt.Errorf("GET /nodes on %s: %s", n.name, resp.Status)
	}
	return v, json.NewDecoder(resp.Body).Decode(&v)
}

// awaitCluster waits until every node's view names the same primary, that primary takes
// writes through its proxy, and every other node is a healthy replica on its timeline.
// must, when set, names a node that must be among the replicas (one that came back).
func awaitCluster(t *testing.T, nodes []node, must string, timeout time.Duration) node {
	t.Helper()
	var primary node
	await(t, timeout, "one primary and healthy replicas", func() error {
		var name string
		for _, n := range nodes {
			v, err := getView(n)
			if err != nil {
				return err
			}
			if !v.CaughtUp || v.Primary == "" || (name != "" && v.Primary != name) {
				return fmt.Errorf("%s sees primary %q (caught up %v)", n.name, v.Primary, v.CaughtUp)
			}
			name = v.Primary
			var tl uint32
			for _, m := range v.Nodes {
				if m.Name == name {
					tl = m.Status.Timeline
				}
			}
			for _, m := range v.Nodes {
				if m.Name == name {
					continue
				}
				if m.Status.Role != "replica" || !m.Status.Healthy || m.Status.Timeline != tl || (m.StatusAge != nil && *m.StatusAge > 5) {
					return fmt.Errorf("%s: %s healthy %v timeline %d (primary's %d)", m.Name, m.Status.Role, m.Status.Healthy, m.Status.Timeline, tl)
				}
			}
			if len(v.Nodes) != len(nodes) {
				return fmt.Errorf("%d members, want %d", len(v.Nodes), len(nodes))
			}
		}
		if must != "" && must == name {
			return fmt.Errorf("%s is the primary, want it a replica", must)
		}
		primary = pick(nodes, func(n node) bool { return n.name == name })
		return writable(primary)
	})
	return primary
}

// writable checks that a write transaction succeeds through n's proxy (txid_current fails on a
// standby).
func writable(n node) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := connect(ctx, n.ip+":5432")
	if err != nil {
		return err
	}
	defer c.Close(ctx)
	if _, err := c.Exec(ctx, "SELECT txid_current()"); err != nil {
		return fmt.Errorf("%s's proxy: %w", n.name, err)
	}
	return nil
}

// awaitPrimary waits until the nodes agree on a primary other than gone that takes writes.
func awaitPrimary(t *testing.T, nodes []node, gone string, timeout time.Duration) node {
	t.Helper()
	var primary node
	await(t, timeout, "a new primary", func() error {
		v, err := getView(nodes[0])
		if err != nil {
			return err
		}
		if v.Primary == "" || v.Primary == gone {
			return fmt.Errorf("primary %q", v.Primary)
		}
		primary = pick(nodes, func(n node) bool { return n.name == v.Primary })
		return writable(primary)
	})
	return primary
}

func connect(ctx context.Context, addr string) (*pgx.Conn, error) {
	host, port, _ := strings.Cut(addr, ":")
	cfg, err := pgx.ParseConfig(fmt.Sprintf("host=%s port=%s user=postgres dbname=postgres sslmode=disable connect_timeout=5", host, port))
	if err != nil {
		return nil, err
	}
	cfg.Password = password
	return pgx.ConnectConfig(ctx, cfg)
}

func exec1(t *testing.T, ctx context.Context, addr, sql string) {
	t.Helper()
	c, err := connect(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	if _, err := c.Exec(ctx, sql); err != nil {
		t.Fatal(err)
	}
}

func pick(nodes []node, f func(node) bool) node {
	for _, n := range nodes {
		if f(n) {
			return n
		}
	}
	return node{}
}

// await polls f until it succeeds; a container cluster offers no notification to wait on.
func await(t *testing.T, timeout time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting %v for %s: %v", timeout, what, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func podman(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("podman", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("podman %s: %v\n%s", strings.Join(args, " "), err, tail(string(out), 40))
	}
	return string(out)
}

func requireTools(t *testing.T) {
	t.Helper()
	var missing []string
	for _, tool := range []string{"podman", "buildah", "runc", "debootstrap"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	switch {
	case runtime.GOOS != "linux":
		t.Skip("containers are tested on Linux only")
	case os.Geteuid() != 0:
		missing = append(missing, "root")
	}
	if len(missing) == 0 {
		return
	}
	msg := "the container test needs " + strings.Join(missing, ", ") + " (apt-get install podman buildah runc debootstrap; .ci/run does)"
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// baseImages makes the Dockerfile's two base images when they are not there. With a registry
// in reach, podman would pull them; here they are stand-ins built under the same names.
func baseImages(t *testing.T) {
	t.Helper()
	const debian, golang = "docker.io/library/debian:bookworm-slim", "docker.io/library/golang:1.26-bookworm"
	if exec.Command("podman", "image", "exists", debian).Run() != nil {
		rootfs := filepath.Join(t.TempDir(), "rootfs")
		sh(t, "debootstrap --variant=minbase bookworm "+rootfs+" http://deb.debian.org/debian")
		sh(t, `set -e; c=$(buildah from scratch); m=$(buildah mount "$c"); cp -a `+rootfs+`/. "$m"/; buildah umount "$c";
			buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd bash "$c";
			buildah commit -q "$c" `+debian+`; buildah rm "$c"`)
	}
	if exec.Command("podman", "image", "exists", golang).Run() != nil {
		goroot, err := exec.Command("go", "env", "GOROOT").Output()
		if err != nil {
			t.Fatal(err)
		}
		// The host's CA bundle: this machine reaches the Go module proxy through a TLS
		// interception proxy whose CA only the host's bundle has.
		sh(t, `set -e; c=$(buildah from --pull-never `+debian+`);
			buildah run --isolation chroot --network host "$c" -- sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ca-certificates >/dev/null && rm -rf /var/lib/apt/lists/*';
			buildah copy -q "$c" /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt >/dev/null;
			buildah copy -q "$c" `+strings.TrimSpace(string(goroot))+` /usr/local/go >/dev/null;
			buildah config --env PATH=/usr/local/go/bin:/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env GOPATH=/go --env GOTOOLCHAIN=local "$c";
			buildah commit -q "$c" `+golang+`; buildah rm "$c"`)
	}
}

func buildImage(t *testing.T, root string) {
	t.Helper()
	start := time.Now()
	args := append([]string{"build", "--format", "docker", "--pull=never", "-f", "docs/container/Dockerfile", "-t", image}, runtimeFlags...)
	cmd := exec.Command("podman", append(args, ".")...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("podman build: %v\n%s", err, tail(string(out), 60))
	}
	t.Logf("image built in %v", time.Since(start).Round(time.Second))
	var hc []struct {
		Healthcheck *struct{ Test []string }
		Config      struct{ User string }
	}
	if err := json.Unmarshal([]byte(podman(t, "image", "inspect", image)), &hc); err != nil || len(hc) != 1 || hc[0].Healthcheck == nil {
		t.Fatalf("the image has no HEALTHCHECK (inspect: %v)", err)
	}
	if hc[0].Config.User != "postgres" {
		t.Fatalf("the image runs as %q, want postgres", hc[0].Config.User)
	}
}

func sh(t *testing.T, script string) {
	t.Helper()
	out, err := exec.Command("sh", "-c", script).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", script, err, tail(string(out), 40))
	}
}
