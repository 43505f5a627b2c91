package integration

import (
	"context"
	"crypto/sha256"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	taskv3 "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/ttrpc"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	"github.com/titus-agent/titus-agent/pkg/isolation"
	"github.com/titus-agent/titus-agent/test/testenv"
)

// TestAgentOrphansAfterKillMidLaunch kills -9 the agent at varying points
// of launches and restarts it each time; after every restart no shim of
// this containerd and namespace may survive that containerd does not know,
// and no temporary snapshot mount of this containerd may stay mounted.
// Before the last restart it also plants exactly what a cut-short create
// leaves: a shim daemon whose bundle is gone and a containerd-mount*
// overlay of a removed snapshot, plus a look-alike mount of another
// containerd's layers that must survive.
func TestAgentOrphansAfterKillMidLaunch(t *testing.T) {
	begin(t)
	e := newAgentEnv(t)
	e.launch(e.spec("warm", "true")) // pull the image once
	e.waitFinal("warm")

	// Task ids unique to the run: runc's state dir (/run/containerd/runc/titus)
	// is shared by every containerd on the host.
	runID := strconv.FormatInt(time.Now().UnixNano()%1e9, 36)
	const rounds = 8
	for i := range rounds {
		id := fmt.Sprintf("mid%d-%s", i, runID)
		e.launch(e.spec(id, "sleep", "1000"))
		time.Sleep(time.Duration(i) * 40 * time.Millisecond) // different points of the launch
		e.kill9()
		if i == rounds-1 {
			shimPid, socket := e.plantLeakedShim("leaked-shim")
			if !processAlive(shimPid) {
				t.Fatalf("planted shim %d is not running", shimPid)
			}
			if _, err := os.Lstat(socket); err != nil {
				t.Fatalf("planted shim's socket: %v", err)
			}
			snapshots := filepath.Join(e.ctd.Root, "io.containerd.snapshotter.v1.overlayfs", "snapshots")
			stale := plantOverlay(t, "/tmp", snapshots, true) // left by an agent before UseTempMountDir
			ownStale := plantOverlay(t, filepath.Join(e.dir, "state", "tmpmounts"), snapshots, false)
			foreign := plantOverlay(t, "/tmp", t.TempDir(), false)
			e.start()
			e.waitNoOrphans(runID)
			if processAlive(shimPid) {
				t.Errorf("planted shim %d survived", shimPid)
			}
			if _, err := os.Lstat(socket); err == nil {
				t.Errorf("planted shim's socket %s survived\n%s", socket, e.agent.Log())
			}
			for _, mp := range []string{stale, ownStale} {
				if mounted(mp) {
					t.Errorf("stale temporary mount %s survived", mp)
				}
			}
			if !mounted(foreign) {
				t.Errorf("another containerd's temporary mount %s was unmounted", foreign)
			}
		} else {
			e.start()
			e.waitNoOrphans(runID)
		}
		tk := e.waitState(id, stRunning, 60*time.Second)
		if tk.GetState() == stRunning {
			if _, err := e.client.KillTask(e.ctx(), &agentv1.KillTaskRequest{Id: id}); err != nil {
				t.Fatal(err)
			}
		}
		// Any final state will do (a launch may also fail as the agent
		// dies); what matters here is what is left on the host.
		e.waitFinal(id)
	}
	e.assertNoLeftovers()
	e.waitNoOrphans(runID)
}

// waitNoOrphans waits until every shim of this containerd in the agent's
// namespace serves a task containerd knows, no runc state of the run's
// tasks (ids ending in -runID) outlives its task, and no containerd-mount* is
// made of this containerd's layers (in /tmp or in the agent's own
// temporary mount dir); a teardown still running may take a moment.
func (e *agentEnv) waitNoOrphans(runID string) {
	e.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		left := e.orphans(runID)
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("left behind after the agent restart: %v\nagent log:\n%s", left, e.agent.Log())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (e *agentEnv) orphans(runID string) []string {
	out, err := e.ctr("tasks", "ls", "-q")
	if err != nil {
		e.t.Fatalf("ctr tasks ls: %v %s", err, out)
	}
	known := map[string]bool{}
	for _, id := range strings.Fields(out) {
		known[id] = true
	}
	var left []string
	ents, _ := os.ReadDir("/proc")
	for _, ent := range ents {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if !strings.HasPrefix(filepath.Base(args[0]), "containerd-shim") || flagValue(args, "-address") != e.ctd.Address ||
			flagValue(args, "-namespace") != "titus" || flagValue(args, "-id") == "" || args[len(args)-1] == "start" || args[len(args)-1] == "delete" {
			continue
		}
		if id := flagValue(args, "-id"); !known[id] && processAlive(pid) {
			left = append(left, fmt.Sprintf("shim %d of %s", pid, id))
		}
	}
	// A reaped shim's runc container (state, cgroup) goes with it.
	if runID != "" {
		runc, _ := filepath.Glob("/run/containerd/runc/titus/*-" + runID)
		for _, d := range runc {
			if !known[filepath.Base(d)] {
				left = append(left, "runc state "+d)
			}
		}
		left = append(left, taskCgroupsLeft(runID, known)...)
	}
	tmpmounts := filepath.Join(e.dir, "state", "tmpmounts") + "/"
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	for _, line := range strings.Split(string(mi), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		mp := f[4]
		if strings.HasPrefix(mp, tmpmounts) ||
			strings.HasPrefix(mp, "/tmp/containerd-mount") && strings.Contains(line, e.ctd.Root+"/") {
			left = append(left, "mount "+mp)
		}
	}
	return left
}

// taskCgroupsLeft lists the cgroups of the run's tasks (ids ending in
// -runID) in namespace titus that containerd does not know: the cgroupfs
// driver's /titus/<id> (v2, or in any v1 hierarchy) and the systemd
// driver's task slice titus-titus-<id>.slice (with its scope) or, as
// agents before task slices made it, scope titus-<id>.scope.
func taskCgroupsLeft(runID string, known map[string]bool) []string {
	ours := map[string]bool{}
	for id := range known {
		ours[id], ours["titus-"+id+".scope"], ours["titus-titus-"+strings.ReplaceAll(id, "-", `\x2d`)+".slice"] = true, true, true
	}
	dirs, _ := filepath.Glob("/sys/fs/cgroup/*/titus")
	dirs = append(dirs, "/sys/fs/cgroup/titus", "/sys/fs/cgroup/titus.slice", "/sys/fs/cgroup/titus.slice/titus-titus.slice")
	var left []string
	for _, d := range dirs {
		ents, _ := os.ReadDir(d)
		for _, ent := range ents {
			n := ent.Name()
			run := strings.HasSuffix(n, "-"+runID) || strings.HasSuffix(n, "-"+runID+".scope") || strings.HasSuffix(n, `\x2d`+runID+".slice")
			if ent.IsDir() && run && !ours[n] {
				left = append(left, "cgroup "+filepath.Join(d, n))
			}
		}
	}
	return left
}

func flagValue(args []string, name string) string {
	for i, a := range args {
		if a == name && i+1 < len(args) {
			return args[i+1]
		}
	}
	return ""
}

// processAlive says whether pid runs (a zombie does not).
func processAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return len(f) > 0 && f[0] != "Z"
}

// plantLeakedShim makes what containerd leaves when the client's task
// create is cancelled during `shim start`: the shim daemon runs, its
// bundle is gone and containerd never registered it. It returns the
// daemon's pid and its socket.
func (e *agentEnv) plantLeakedShim(id string) (int, string) {
	t := e.t
	bundle := filepath.Join(e.ctd.State, "io.containerd.runtime.v2.task", "titus", id)
	if err := os.MkdirAll(bundle, 0o711); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), []byte("{}"), 0o600); err != nil {
		t.Fatal(err)
	}
	// containerd reads the shim's log fifo.
	logFifo := filepath.Join(bundle, "log")
	if err := syscall.Mkfifo(logFifo, 0o700); err != nil {
		t.Fatal(err)
	}
	shimLog, err := os.OpenFile(logFifo, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Held open for the test: a shim dies of SIGPIPE when it logs to a fifo
	// nobody reads, and this one must live until the agent reaps it.
	t.Cleanup(func() { shimLog.Close() })
	cmd := exec.Command(testenv.LookPath(t, "containerd-shim-runc-v2"), "-namespace", "titus", "-address", e.ctd.Address,
		"-publish-binary", testenv.LookPath(t, "containerd"), "-id", id, "start")
	cmd.Dir = bundle
	cmd.Env = append(os.Environ(), "TTRPC_ADDRESS="+e.ctd.Address+".ttrpc")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("shim start: %v\n%s", err, out)
	}
	// The shim's socket: sha256 of address/namespace/id under the shim state dir.
	socket := fmt.Sprintf("/run/containerd/s/%x", sha256.Sum256([]byte(filepath.Join(e.ctd.Address, "titus", id))))
	if !strings.Contains(string(out), "unix://"+socket+`"`) {
		t.Fatalf("shim answered %q, want its socket %s", out, socket)
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		// The socket accepts before the daemon serves: ask it, so that the
		// bundle goes only once the daemon is up (as after a real start).
		if pid := shimServes(socket, id); pid != 0 {
			if err := os.RemoveAll(bundle); err != nil {
				t.Fatal(err)
			}
			return pid, socket
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no shim daemon serving %s", socket)
	return 0, ""
}

// shimServes asks the shim on socket for its pid; 0 if it does not answer.
func shimServes(socket, id string) int {
	conn, err := net.Dial("unix", socket)
	if err != nil {
		return 0
	}
	c := ttrpc.NewClient(conn)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	resp, err := taskv3.NewTTRPCTaskClient(c).Connect(namespaces.WithNamespace(ctx, "titus"), &taskv3.ConnectRequest{ID: id})
	if err != nil {
		return 0
	}
	return int(resp.GetShimPid())
}

// plantOverlay mounts a read-only overlay on a containerd-mount* directory
// of parent with two layers made under dir, as the client's temporary mount
// does; removed removes the layers afterwards (a snapshot deleted under a
// mount left by a killed agent). It is unmounted at cleanup.
func plantOverlay(t *testing.T, parent, dir string, removed bool) string {
	t.Helper()
	mp, err := os.MkdirTemp(parent, "containerd-mount")
	if err != nil {
		t.Fatal(err)
	}
	layers, err := os.MkdirTemp(dir, "orphan-test")
	if err != nil {
		t.Fatal(err)
	}
	lower := []string{filepath.Join(layers, "2", "fs"), filepath.Join(layers, "1", "fs")}
	for _, l := range lower {
		if err := os.MkdirAll(l, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		_ = syscall.Unmount(mp, syscall.MNT_DETACH)
		_ = os.Remove(mp)
		_ = os.RemoveAll(layers)
	})
	if err := syscall.Mount("overlay", mp, "overlay", syscall.MS_RDONLY, "lowerdir="+strings.Join(lower, ":")); err != nil {
		t.Fatalf("mount overlay on %s: %v", mp, err)
	}
	if removed {
		if err := os.RemoveAll(layers); err != nil {
			t.Fatal(err)
		}
	}
	return mp
}

func mounted(mp string) bool {
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	for _, line := range strings.Split(string(mi), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == mp {
			return true
		}
	}
	return false
}

// TestAgentUserNSTeardownSurvivesStop: a user-namespace task with a disk
// and a VPC address is killed and the agent is stopped gracefully (SIGTERM
// to its process group, as a terminal's Ctrl-C or the harness does) while
// the task's teardown runs; the agent waits for the teardown, which must
// complete: no mount, loop device or netns of the task may be left.
func TestAgentUserNSTeardownSurvivesStop(t *testing.T) {
	begin(t)
	e, parent := newUserNSNetAgent(t)
	for i := range 10 {
		id := fmt.Sprintf("web%d", i)
		s := e.spec(id, "sh", "-c", "echo started; exec httpd -f -p 8080 -h /")
		s.Labels, s.Resources.DiskMib = map[string]string{isolation.LabelUserNS: "true"}, 32
		e.launch(s)
		e.waitState(id, stRunning, 60*time.Second)
		e.waitLog(id, "started")
		if _, err := e.client.KillTask(e.ctx(), &agentv1.KillTaskRequest{Id: id, GracePeriodSeconds: 1}); err != nil {
			t.Fatal(err)
		}
		e.waitFinal(id)
		// The container goes first in the teardown: stop as the disk and
		// network teardown begin (as a test that ends once its containers
		// are gone does), at slightly different points.
		e.waitNoContainer(id)
		time.Sleep(time.Duration(i%5) * 10 * time.Millisecond)
		e.stop()
		if left := leftUnder(parent); len(left) > 0 {
			t.Fatalf("round %d: left after a graceful stop during teardown: %v\nagent log:\n%s", i, left, e.agent.Proc.Log())
		}
		e.start()
	}
}

// leftUnder lists mounts and loop devices under dir.
func leftUnder(dir string) []string {
	var left []string
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	for _, line := range strings.Split(string(mi), "\n") {
		if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			left = append(left, "mount "+f[4])
		}
	}
	files, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, f := range files {
		if b, _ := os.ReadFile(f); strings.HasPrefix(string(b), dir+"/") {
			left = append(left, "loop "+filepath.Base(filepath.Dir(filepath.Dir(f))))
		}
	}
	return left
}
