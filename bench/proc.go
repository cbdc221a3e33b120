package bench

import (
	"bufio"
	"bytes"
	"fmt"
	"math"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// clockTicks is USER_HZ, the unit of the times in /proc/PID/stat. It is 100 on every Linux
// architecture Go supports (sysconf(_SC_CLK_TCK)).
const clockTicks = 100

// process is a long-running child (a proxy) whose CPU time and memory the harness samples.
type process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	err     error // exit status, valid once done is closed
}

// startProcess starts bin with args, output to logPath. cred, when set, runs it as another OS
// user (PgBouncer refuses to run as root); env is added to the harness's environment. The
// child is killed if the harness dies.
func startProcess(name, logPath string, cred *syscall.Credential, env []string, bin string, args ...string) (*process, error) {
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = filepath.Dir(logPath)
	cmd.Stdout, cmd.Stderr = lf, lf
	if len(env) > 0 {
		cmd.Env = append(os.Environ(), env...)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		lf.Close()
		close(p.done)
	}()
	return p, nil
}

// Pid returns the process id.
func (p *process) Pid() int { return p.cmd.Process.Pid }

// exited reports whether the process has ended, with its status.
func (p *process) exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// stop sends SIGTERM, waits up to timeout, then kills the process group.
func (p *process) stop(timeout time.Duration) {
	if done, _ := p.exited(); done {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(timeout):
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
}

// logTail returns the last lines of the process's log, for error messages.
func (p *process) logTail() string { return tailFile(p.logPath, 15) }

func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// procTimes is the CPU time of a process in clock ticks.
type procTimes struct {
	self     int64 // utime + stime of all its threads
	children int64 // cutime + cstime: children it has waited for
}

// readProcTimes reads /proc/PID/stat.
func readProcTimes(pid int) (procTimes, int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procTimes{}, 0, err
	}
	// The command name (field 2) is in parentheses and may hold spaces: split after it.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procTimes{}, 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state): field n is f[n-3].
	if len(f) < 15 {
		return procTimes{}, 0, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	num := func(field int) int64 { v, _ := strconv.ParseInt(f[field-3], 10, 64); return v }
	return procTimes{self: num(14) + num(15), children: num(16) + num(17)}, int(num(4)), nil
}

// cpuTicks returns a process's own CPU time in clock ticks.
func cpuTicks(pid int) int64 {
	t, _, err := readProcTimes(pid)
	if err != nil {
		return 0
	}
	return t.self
}

// treeTicks returns the CPU time of a forking server (the postmaster): its own time, that of the
// children it has reaped, and that of its live children. Backends that exit during a run are
// counted through the postmaster's cutime once reaped.
func treeTicks(root int) int64 {
	t, _, err := readProcTimes(root)
	if err != nil {
		return 0
	}
	total := t.self + t.children
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == root {
			continue
		}
		ct, ppid, err := readProcTimes(pid)
		if err == nil && ppid == root {
			total += ct.self
		}
	}
	return total
}

// childCount counts the processes whose parent is root, zombies included (they are not yet
// reaped, so their CPU time is not yet in root's cutime).
func childCount(root int) int {
	n := 0
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == root {
			continue
		}
		if _, ppid, err := readProcTimes(pid); err == nil && ppid == root {
			n++
		}
	}
	return n
}

// waitSettled waits until root's children stop exiting: the count has not changed for 100 ms,
// or timeout has passed. After direct clients disconnect, their backends exit and are reaped
// over a few milliseconds; sampling in the middle of that would lose the CPU time of backends
// reaped between reading root's cutime and scanning its children.
func waitSettled(root int, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	last, stable := childCount(root), 0
	for stable < 5 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
		n := childCount(root)
		if n == last {
			stable++
		} else {
			last, stable = n, 0
		}
	}
}

// memKiB returns VmRSS and VmHWM (peak RSS) of a process in KiB.
func memKiB(pid int) (rss, hwm int64) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		var dst *int64
		switch {
		case strings.HasPrefix(line, "VmRSS:"):
			dst = &rss
		case strings.HasPrefix(line, "VmHWM:"):
			dst = &hwm
		default:
			continue
		}
		fs := strings.Fields(line)
		if len(fs) >= 2 {
			*dst, _ = strconv.ParseInt(fs[1], 10, 64)
		}
	}
	return rss, hwm
}

// hostCPU is a sample of /proc/stat's aggregate line, in clock ticks: busy is everything but
// idle and iowait; tasks is the time charged to processes (user, nice, system), which unlike
// interrupt time can be compared with the processes' own times.
type hostCPU struct{ busy, tasks, total int64 }

func readHostCPU() hostCPU {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return hostCPU{}
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 6 || f[0] != "cpu" {
		return hostCPU{}
	}
	var h hostCPU
	for i, s := range f[1:] {
		v, _ := strconv.ParseInt(s, 10, 64)
		// user nice system idle iowait irq softirq steal guest guest_nice; guest time is
		// already inside user and nice.
		if i >= 8 {
			break
		}
		h.total += v
		if i != 3 && i != 4 {
			h.busy += v
		}
		if i <= 2 {
			h.tasks += v
		}
	}
	return h
}

// busyFraction returns the share of all cores that was busy between two samples.
func busyFraction(a, b hostCPU) float64 {
	if b.total <= a.total {
		return 0
	}
	return float64(b.busy-a.busy) / float64(b.total-a.total)
}

// foreignFraction returns the share of all cores that processes other than the ones measured
// (own, in clock ticks) used between two samples: other work on the machine that competed with
// the benchmark.
func foreignFraction(a, b hostCPU, own int64) float64 {
	if b.total <= a.total {
		return 0
	}
	return math.Max(0, float64(b.tasks-a.tasks-own)/float64(b.total-a.total))
}

// osCredential returns the credential to run a program as name when the harness runs as root
// (nil otherwise), with the uid and gid to chown files to.
func osCredential(name string) (*syscall.Credential, int, int, error) {
	if os.Geteuid() != 0 {
		return nil, os.Getuid(), os.Getgid(), nil
	}
	u, err := user.Lookup(name)
	if err != nil {
		return nil, 0, 0, fmt.Errorf("the harness runs as root, so PostgreSQL and PgBouncer run as OS user %q, which does not exist: %w", name, err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}, uid, gid, nil
}

// raiseFileLimit lifts RLIMIT_NOFILE so that the harness (10,000 idle clients) and its
// children (which inherit it: pgbench with 1,000 clients, PgBouncer, the proxies) have room.
func raiseFileLimit(want uint64) (uint64, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, err
	}
	if lim.Cur >= want {
		return lim.Cur, nil
	}
	if lim.Max < want {
		if b, err := os.ReadFile("/proc/sys/fs/nr_open"); err == nil {
			if n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64); err == nil && n < want {
				want = n
			}
		}
		nl := syscall.Rlimit{Cur: want, Max: want}
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &nl); err == nil {
			return want, nil
		}
		want = lim.Max
	}
	nl := syscall.Rlimit{Cur: want, Max: lim.Max}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &nl); err != nil {
		return lim.Cur, err
	}
	return want, nil
}
