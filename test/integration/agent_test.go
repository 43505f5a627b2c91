package integration

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	"github.com/titus-agent/titus-agent/pkg/task"
	"github.com/titus-agent/titus-agent/test/testenv"
)

const (
	stFinished = agentv1.TaskState_TASK_STATE_FINISHED
	stFailed   = agentv1.TaskState_TASK_STATE_FAILED
	stKilled   = agentv1.TaskState_TASK_STATE_KILLED
	stRunning  = agentv1.TaskState_TASK_STATE_RUNNING
)

func TestAgentRunToCompletion(t *testing.T) {
	begin(t)
	e := newAgentEnv(t)
	events := e.watch()
	e.launch(e.spec("ok", "sh", "-c", "echo hello-out; echo hello-err >&2"))
	e.launch(e.spec("fails", "sh", "-c", "exit 3"))
	wantState(t, e.waitFinal("ok"), stFinished, task.ReasonCompleted, 0)
	wantState(t, e.waitFinal("fails"), stFailed, task.ReasonNonZeroExit, 3)

	// WatchEvents streamed every transition of both tasks, in order, with
	// the exit code on the final one.
	lifecycle := []agentv1.TaskState{agentv1.TaskState_TASK_STATE_ACCEPTED, agentv1.TaskState_TASK_STATE_PREPARING,
		agentv1.TaskState_TASK_STATE_STARTING, stRunning}
	for id, want := range map[string]struct {
		final agentv1.TaskState
		exit  int32
	}{"ok": {stFinished, 0}, "fails": {stFailed, 3}} {
		evs := events.until(id, want.final)
		var got []agentv1.TaskState
		for _, ev := range evs {
			got = append(got, ev.GetTransition().GetState())
		}
		if diff := cmp.Diff(append(slices.Clone(lifecycle), want.final), got); diff != "" {
			t.Errorf("events of %s (-want +got):\n%s", id, diff)
		}
		if last := evs[len(evs)-1]; last.GetExitCode() != want.exit || last.GetTransition().GetTime() == nil {
			t.Errorf("final event of %s: exit %d time %v, want exit %d and a time", id, last.GetExitCode(), last.GetTransition().GetTime(), want.exit)
		}
	}

	// Logs via the API (what `task logs` prints).
	out, err := e.cli("task", "logs", "ok")
	if err != nil || !strings.Contains(out, "hello-out") || !strings.Contains(out, "hello-err") {
		t.Fatalf("logs = %q, %v", out, err)
	}
	// Every transition has a timestamp, in order.
	tk := e.get("ok")
	var prev time.Time
	for _, tr := range tk.GetTransitions() {
		if tr.GetTime().AsTime().Before(prev) {
			t.Fatalf("transitions out of order: %v", tk.GetTransitions())
		}
		prev = tr.GetTime().AsTime()
	}
	e.assertNoLeftovers()
}

func TestAgentKillGraceThenSIGKILL(t *testing.T) {
	begin(t)
	e := newAgentEnv(t)
	s := e.spec("stubborn", "sh", "-c", "trap '' TERM; echo ready; while true; do sleep 1; done")
	s.KillGracePeriodSeconds = 1
	e.launch(s)
	e.waitState("stubborn", stRunning, 30*time.Second)
	e.waitLog("stubborn", "ready")
	start := time.Now()
	if _, err := e.client.KillTask(e.ctx(), &agentv1.KillTaskRequest{Id: "stubborn"}); err != nil {
		t.Fatal(err)
	}
	tk := e.waitFinal("stubborn")
	wantState(t, tk, stKilled, task.ReasonKilledByUser, 137)
	if time.Since(start) < time.Second {
		t.Fatalf("SIGKILL came before the 1s grace period")
	}
	// A process that honours SIGTERM exits with 143 without waiting.
	s = e.spec("polite", "sh", "-c", "trap 'exit 0' TERM; echo ready; while true; do sleep 0.1; done")
	s.KillGracePeriodSeconds = 30
	e.launch(s)
	e.waitState("polite", stRunning, 30*time.Second)
	e.waitLog("polite", "ready") // its trap is set: a TERM before it would end it with 143
	if _, err := e.client.KillTask(e.ctx(), &agentv1.KillTaskRequest{Id: "polite"}); err != nil {
		t.Fatal(err)
	}
	wantState(t, e.waitFinal("polite"), stKilled, task.ReasonKilledByUser, 0)
	e.assertNoLeftovers()
}

func TestAgentOOMKilled(t *testing.T) {
	begin(t)
	e := newAgentEnv(t)
	s := e.spec("hog", "sh", "-c", "dd if=/dev/zero of=/dev/null bs=256M count=1")
	s.Resources.MemoryMib = 32
	e.launch(s)
	tk := e.waitFinal("hog")
	if tk.GetState() != stFailed || tk.GetReason() != string(task.ReasonOOMKilled) {
		t.Fatalf("hog = %s/%s exit %d, want Failed/OOMKilled", tk.GetState(), tk.GetReason(), tk.GetExitCode())
	}
	if !strings.Contains(tk.GetMessage(), "limit of 32 MiB (peak ") {
		t.Fatalf("OOM message %q does not report the peak usage", tk.GetMessage())
	}
	e.assertNoLeftovers()
}

func TestAgentImageNotFound(t *testing.T) {
	begin(t)
	e := newAgentEnv(t)
	s := e.spec("noimage", "true")
	s.Image = e.reg.Host + "/does-not-exist:latest"
	e.launch(s)
	tk := e.waitFinal("noimage")
	if tk.GetState() != stFailed || tk.GetReason() != string(task.ReasonImageNotFound) {
		t.Fatalf("got %s/%s (%s), want Failed/ImageNotFound", tk.GetState(), tk.GetReason(), tk.GetMessage())
	}
	// A registry that is not allowed plain HTTP is refused, not tried.
	s = e.spec("notallowed", "true")
	s.Image = "127.0.0.2:1/busybox:latest"
	e.launch(s)
	tk = e.waitFinal("notallowed")
	if tk.GetState() != stFailed || tk.GetReason() != string(task.ReasonImagePullFailed) {
		t.Fatalf("got %s/%s (%s), want Failed/ImagePullFailed", tk.GetState(), tk.GetReason(), tk.GetMessage())
	}
	e.assertNoLeftovers()
}

func TestAgentRejectsInvalidSpecs(t *testing.T) {
	begin(t)
	e := newAgentEnv(t)
	tests := []struct {
		name   string
		mutate func(*agentv1.TaskSpec)
		field  string
	}{
		{"no owner", func(s *agentv1.TaskSpec) { s.OwnerEmail = "" }, "owner_email"},
		{"bad id", func(s *agentv1.TaskSpec) { s.Id = "../../etc/passwd" }, "id"},
		{"no image", func(s *agentv1.TaskSpec) { s.Image = "" }, "image"},
		{"huge env", func(s *agentv1.TaskSpec) {
			s.Env = map[string]string{}
			for i := 0; i < 600; i++ {
				s.Env[fmt.Sprintf("K%d", i)] = "v"
			}
		}, "env"},
		{"huge command", func(s *agentv1.TaskSpec) { s.Command = []string{strings.Repeat("x", 70000)} }, "command"},
		{"negative memory", func(s *agentv1.TaskSpec) { s.Resources.MemoryMib = -1 }, "resources.memory_mib"},
		{"bad sg", func(s *agentv1.TaskSpec) { s.Network = &agentv1.NetworkRequest{SecurityGroupIds: []string{"default"}} }, "network.security_group_ids[0]"},
		{"absurd grace", func(s *agentv1.TaskSpec) { s.KillGracePeriodSeconds = 1 << 60 }, "kill_grace_period_seconds"},
		{"absurd max runtime", func(s *agentv1.TaskSpec) { s.MaxRuntimeSeconds = -1 }, "max_runtime_seconds"},
		{"huge env value", func(s *agentv1.TaskSpec) { s.Env = map[string]string{"BIG": strings.Repeat("v", 1<<20)} }, "env[BIG]"},
		{"too many args", func(s *agentv1.TaskSpec) { s.Command = make([]string, 1000) }, "command"},
		{"too many labels", func(s *agentv1.TaskSpec) {
			s.Labels = map[string]string{}
			for i := 0; i < 1000; i++ {
				s.Labels[fmt.Sprintf("k%d", i)] = "v"
			}
		}, "labels"},
		{"huge label value", func(s *agentv1.TaskSpec) { s.Labels = map[string]string{"app": strings.Repeat("x", 100000)} }, "labels[app]"},
		{"huge label key", func(s *agentv1.TaskSpec) { s.Labels = map[string]string{strings.Repeat("k", 5000): "v"} }, "labels[" + strings.Repeat("k", 32) + "…]"},
		{"reserved label", func(s *agentv1.TaskSpec) { s.Labels = map[string]string{"titus.agent/managed": "false"} }, "labels[titus.agent/managed]"},
	}
	for _, tt := range tests {
		s := e.spec("bad-"+strings.ReplaceAll(tt.name, " ", "-"), "true")
		tt.mutate(s)
		_, err := e.client.LaunchTask(e.ctx(), &agentv1.LaunchTaskRequest{Spec: s})
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tt.field+":") {
			t.Errorf("%s: err = %v, want InvalidArgument naming %s", tt.name, err, tt.field)
		}
	}
	// Nothing was recorded for a rejected spec.
	list, err := e.client.ListTasks(e.ctx(), &agentv1.ListTasksRequest{All: true})
	if err != nil || len(list.GetTasks()) != 0 {
		t.Fatalf("rejected specs left tasks behind: %v %v", list.GetTasks(), err)
	}
	// A duplicate id is refused and the first task is untouched.
	e.launch(e.spec("dup", "sleep", "30"))
	_, err = e.client.LaunchTask(e.ctx(), &agentv1.LaunchTaskRequest{Spec: e.spec("dup", "true")})
	if status.Code(err) != codes.AlreadyExists {
		t.Fatalf("duplicate launch: %v, want AlreadyExists", err)
	}
	e.client.KillTask(e.ctx(), &agentv1.KillTaskRequest{Id: "dup"})
	e.waitFinal("dup")
	e.assertNoLeftovers()
}

func TestAgentKill9ReadoptsRunningTasks(t *testing.T) {
	begin(t)
	agentKill9Readopts(t, 10, nil)
}

// agentKill9Readopts runs n long tasks and one that will exit while the
// agent is away, kills the agent -9, lets that task exit and plants a
// container labelled as the agent's that it never launched, and restarts
// it: the n are re-adopted with unchanged pids and cgroups and are still
// controllable, the exit is recorded with its code, the stranger reaped.
// long-0 and the task that exits have a disk quota: the restarted agent
// tears down the disk of the task that ended while it was away and keeps
// long-0's (loop-ext4 on the host, XFS project quotas in the VM lane).
// The VM lane runs it too (TestVMAgentKill9Readopts, cgroup v2, systemd).
// checkCgroup, when set, judges each long task's /proc/PID/cgroup.
func agentKill9Readopts(t *testing.T, n int, checkCgroup func(id, cg string) error) {
	e := newAgentEnv(t)
	pids := map[string]uint32{}
	cgroups := map[string]string{}
	for i := 0; i < n; i++ {
		s := e.spec(fmt.Sprintf("long-%d", i), "sleep", "1000")
		if i == 0 {
			s.Resources.DiskMib = 16
		}
		e.launch(s)
	}
	// One task will exit while the agent is away, with a known code.
	away := e.spec("exits-away", "sh", "-c", "while [ ! -f /tmp/go ]; do sleep 0.1; done; exit 42")
	away.Resources.DiskMib = 16
	e.launch(away)
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("long-%d", i)
		pids[id] = e.waitState(id, stRunning, 60*time.Second).GetPid()
		cgroups[id] = procCgroup(t, pids[id])
		if checkCgroup != nil {
			if err := checkCgroup(id, cgroups[id]); err != nil {
				t.Fatalf("%s: %v", id, err)
			}
		}
	}
	e.waitState("exits-away", stRunning, 60*time.Second)

	e.kill9()
	// While the agent is dead: let the task exit, and plant a container
	// labelled as ours that the agent never launched.
	if out, err := e.ctrExec("exits-away", "touch", "/tmp/go"); err != nil {
		t.Fatalf("poke task: %v %s", err, out)
	}
	e.plantOrphan("orphan")
	for id, pid := range pids {
		if err := syscall.Kill(int(pid), 0); err != nil {
			t.Fatalf("%s (pid %d) died when the agent was killed: %v", id, pid, err)
		}
	}
	time.Sleep(300 * time.Millisecond)

	e.start()
	for id, pid := range pids {
		tk := e.waitState(id, stRunning, 30*time.Second)
		if tk.GetState() != stRunning || tk.GetPid() != pid {
			t.Fatalf("%s after restart: %s pid %d, want Running pid %d", id, tk.GetState(), tk.GetPid(), pid)
		}
		if err := syscall.Kill(int(pid), 0); err != nil {
			t.Fatalf("%s pid %d not alive after re-adoption", id, pid)
		}
		if cg := procCgroup(t, pid); cg != cgroups[id] {
			t.Fatalf("%s cgroup after re-adoption:\n%s\nwant\n%s", id, cg, cgroups[id])
		}
	}
	wantState(t, e.waitFinal("exits-away"), stFailed, task.ReasonNonZeroExit, 42)
	e.waitNoContainer("orphan")
	e.waitNoDisk("exits-away")
	if left := e.diskLeft("long-0"); len(left) == 0 {
		t.Fatalf("long-0's disk is gone after the restart, want it kept for the running task")
	}

	// Re-adopted tasks are still controllable.
	for id := range pids {
		if _, err := e.client.KillTask(e.ctx(), &agentv1.KillTaskRequest{Id: id}); err != nil {
			t.Fatal(err)
		}
	}
	for id := range pids {
		if tk := e.waitFinal(id); tk.GetState() != stKilled || tk.GetReason() != string(task.ReasonKilledByUser) {
			t.Fatalf("%s = %s/%s, want Killed/KilledByUser", id, tk.GetState(), tk.GetReason())
		}
	}
	e.assertNoLeftovers()
	e.waitNoDisk("long-0")
}

// diskLeft lists what is left of task id's disk in the agent's disk
// directory (an entry named for it under mnt, images or projects, for
// either backend) and in the mount table.
func (e *agentEnv) diskLeft(id string) []string {
	var left []string
	dir := filepath.Join(e.dir, "disks")
	subs, _ := os.ReadDir(dir)
	for _, sub := range subs {
		ents, _ := os.ReadDir(filepath.Join(dir, sub.Name()))
		for _, en := range ents {
			if n := en.Name(); n == id || strings.HasPrefix(n, id+".") {
				left = append(left, filepath.Join(sub.Name(), n))
			}
		}
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	for line := range strings.Lines(string(mi)) {
		if strings.Contains(line, filepath.Join(dir, "mnt", id)+"/") || strings.Contains(line, filepath.Join(dir, "mnt", id)+" ") {
			left = append(left, "mount "+strings.Fields(line)[4])
		}
	}
	return left
}

// waitNoDisk waits until nothing of task id's disk is left.
func (e *agentEnv) waitNoDisk(id string) {
	e.t.Helper()
	deadline := time.Now().Add(testenv.Scaled(30 * time.Second))
	for {
		left := e.diskLeft(id)
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%s's disk left behind: %v", id, left)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// procCgroup is /proc/PID/cgroup.
func procCgroup(t *testing.T, pid uint32) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func TestAgentGracefulStopLeavesTasksRunning(t *testing.T) {
	begin(t)
	e := newAgentEnv(t)
	e.launch(e.spec("survivor", "sleep", "1000"))
	pid := e.waitState("survivor", stRunning, 30*time.Second).GetPid()
	e.stop()
	if err := syscall.Kill(int(pid), 0); err != nil {
		t.Fatalf("graceful agent stop killed the task: %v", err)
	}
	e.start()
	if tk := e.get("survivor"); tk.GetState() != stRunning || tk.GetPid() != pid {
		t.Fatalf("after restart: %s pid %d, want Running pid %d", tk.GetState(), tk.GetPid(), pid)
	}
	// containerd restarts: the agent reconnects and carries on. A task that
	// exits after the restart still gets its exit code, the survivor keeps
	// its pid, and new launches work.
	e.launch(e.spec("exits-after-ctd", "sh", "-c", "while [ ! -f /tmp/go ]; do sleep 0.1; done; exit 42"))
	e.waitState("exits-after-ctd", stRunning, 30*time.Second)
	e.ctd.Restart(t)
	if out, err := e.ctrExec("exits-after-ctd", "touch", "/tmp/go"); err != nil {
		t.Fatalf("poke task: %v %s", err, out)
	}
	wantState(t, e.waitFinal("exits-after-ctd"), stFailed, task.ReasonNonZeroExit, 42)
	e.launch(e.spec("after-ctd-restart", "true"))
	wantState(t, e.waitFinal("after-ctd-restart"), stFinished, task.ReasonCompleted, 0)
	if tk := e.get("survivor"); tk.GetState() != stRunning || tk.GetPid() != pid {
		t.Fatalf("after containerd restart: %s pid %d, want Running pid %d", tk.GetState(), tk.GetPid(), pid)
	}
	if err := syscall.Kill(int(pid), 0); err != nil {
		t.Fatalf("survivor pid %d died with containerd: %v", pid, err)
	}
	if _, err := e.client.KillTask(e.ctx(), &agentv1.KillTaskRequest{Id: "survivor"}); err != nil {
		t.Fatal(err)
	}
	e.waitFinal("survivor")
	e.assertNoLeftovers()
}

func TestAgentCLI(t *testing.T) {
	begin(t)
	e := newAgentEnv(t)
	out, err := e.cli("task", "run", "--owner", "me@example.com", "--id", "cli-1", "--wait", e.image, "--", "sh", "-c", "echo from-cli")
	if err != nil || !strings.Contains(out, "FINISHED") {
		t.Fatalf("task run --wait: %v\n%s", err, out)
	}
	out, err = e.cli("task", "run", "--owner", "me@example.com", "--id", "cli-2", "--grace", "1s", e.image, "--", "sleep", "1000")
	if err != nil || strings.TrimSpace(out) != "cli-2" {
		t.Fatalf("task run: %v\n%s", err, out)
	}
	e.waitState("cli-2", stRunning, 30*time.Second)
	out, err = e.cli("task", "ls")
	if err != nil || !strings.Contains(out, "cli-2") || strings.Contains(out, "cli-1") {
		t.Fatalf("task ls: %v\n%s", err, out)
	}
	out, err = e.cli("task", "ls", "-a", "-o", "json")
	if err != nil || !strings.Contains(out, `"cli-1"`) {
		t.Fatalf("task ls -a -o json: %v\n%s", err, out)
	}
	out, err = e.cli("task", "exec", "cli-2", "--", "sh", "-c", "echo in-task; exit 5")
	if !strings.Contains(out, "in-task") || exitStatus(err) != 5 {
		t.Fatalf("task exec: %v\n%s", err, out)
	}
	out, err = e.cli("task", "get", "cli-2")
	if err != nil || !strings.Contains(out, "RUNNING") {
		t.Fatalf("task get: %v\n%s", err, out)
	}
	// -o json is one JSON document, for scripts.
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"task", "get", "cli-2", "-o", "json"}, "TASK_STATE_RUNNING"},
		{[]string{"task", "ls", "-a", "-o", "json"}, "cli-1"},
		{[]string{"health", "-o", "json"}, "containerd"},
		{[]string{"version", "-o", "json"}, "2."},
	} {
		out, err := e.cli(tt.args...)
		var doc map[string]any
		if err != nil || json.Unmarshal([]byte(out), &doc) != nil || !strings.Contains(out, tt.want) {
			t.Fatalf("%v: %v, not JSON with %q:\n%s", tt.args, err, tt.want, out)
		}
	}
	// logs -f follows until the task ends.
	_, err = e.cli("task", "run", "--owner", "me@example.com", "--id", "cli-3", e.image, "--", "sh", "-c", "for i in 1 2 3; do echo line$i; sleep 0.3; done")
	if err != nil {
		t.Fatal(err)
	}
	followOut, _ := e.cli("task", "logs", "-f", "cli-3")
	if !strings.Contains(followOut, "line3") {
		t.Fatalf("logs -f missed output: %q", followOut)
	}
	out, err = e.cli("task", "kill", "--wait", "cli-2")
	if err != nil || !strings.Contains(out, "KILLED") {
		t.Fatalf("task kill: %v\n%s", err, out)
	}
	out, err = e.cli("task", "run", "--id", "no-owner", e.image)
	if err == nil || !strings.Contains(out, "owner_email: is required") || strings.Count(strings.TrimSpace(out), "\n") != 0 {
		t.Fatalf("invalid spec via CLI: %v\n%s", err, out)
	}
	out, err = e.cli("health")
	if err != nil || !strings.Contains(out, "containerd") {
		t.Fatalf("health: %v\n%s", err, out)
	}
	out, err = e.cli("version")
	if err != nil || !strings.Contains(out, "containerd: 2.") {
		t.Fatalf("version: %v\n%s", err, out)
	}
	// Unreachable daemon: one clear line.
	cmd := exec.Command(titusAgentBinary(t), "--socket", e.dir+"/nope.sock", "task", "ls")
	b, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(b), "cannot reach the agent") || strings.Count(strings.TrimSpace(string(b)), "\n") != 0 {
		t.Fatalf("unreachable daemon: %v %q", err, b)
	}
	e.assertNoLeftovers()
}

// TestAgentSocketPermissions: the socket is 0660 and owned by the configured
// group; members get in, others are refused by the file mode and, should the
// mode be opened up, by SO_PEERCRED — each with one clear line.
func TestAgentSocketPermissions(t *testing.T) {
	begin(t)
	const group = 65533 // numeric: no /etc/group entry needed
	e := newAgentEnv(t, "--socket-group", fmt.Sprint(group))
	fi, err := os.Stat(e.socket)
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); fi.Mode().Perm() != 0o660 || st.Gid != group || st.Uid != 0 {
		t.Fatalf("socket mode %v owner %d:%d, want 0660 root:%d", fi.Mode().Perm(), st.Uid, st.Gid, group)
	}
	// Let others reach the socket file itself (the test's dir is 0700).
	if err := os.Chmod(e.dir, 0o711); err != nil {
		t.Fatal(err)
	}
	as := func(uid, gid uint32, groups ...uint32) (string, error) {
		cmd := exec.Command(titusAgentBinary(t), "--socket", e.socket, "task", "ls")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: groups}}
		b, err := cmd.CombinedOutput()
		return string(b), err
	}
	oneDeniedLine := func(what, out string, err error) {
		t.Helper()
		if exitStatus(err) != 4 || !strings.Contains(out, "permission denied") || strings.Count(strings.TrimSpace(out), "\n") != 0 {
			t.Fatalf("%s: exit %d, output %q; want exit 4 and one line saying permission denied", what, exitStatus(err), out)
		}
	}
	if out, err := as(65534, group); err != nil {
		t.Fatalf("member by primary group refused: %v %q", err, out)
	}
	if out, err := as(65534, 65534, group); err != nil {
		t.Fatalf("member by supplementary group refused: %v %q", err, out)
	}
	out, err := as(65534, 65534)
	oneDeniedLine("non-member, socket 0660", out, err)

	// With the file mode opened up, the kernel's peer credentials still
	// keep a non-member out, whatever it asks for.
	if err := os.Chmod(e.socket, 0o666); err != nil {
		t.Fatal(err)
	}
	out, err = as(65534, 65534)
	oneDeniedLine("non-member, socket 0666 (SO_PEERCRED)", out, err)
	if !strings.Contains(out, "uid 65534") {
		t.Fatalf("SO_PEERCRED refusal does not come from the agent: %q", out)
	}
	cmd := exec.Command(titusAgentBinary(t), "--socket", e.socket, "task", "run", "--owner", "x@example.com", "--id", "sneaky", e.image, "--", "true")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	b, err := cmd.CombinedOutput()
	oneDeniedLine("non-member launching", string(b), err)
	if list, err := e.client.ListTasks(e.ctx(), &agentv1.ListTasksRequest{All: true}); err != nil || len(list.GetTasks()) != 0 {
		t.Fatalf("a refused caller launched something: %v %v", list.GetTasks(), err)
	}
	// Root is always let in.
	if out, err := e.cli("task", "ls"); err != nil {
		t.Fatalf("root refused: %v %q", err, out)
	}
}

func exitStatus(err error) int {
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	if err == nil {
		return 0
	}
	return -1
}

func TestAgentDiskQuotaCoversLogs(t *testing.T) {
	begin(t)
	e := newAgentEnv(t)
	// 40 MiB of output into a 24 MiB disk: the log stops growing at the
	// quota, the task is not hurt, and the log survives the disk.
	s := e.spec("chatty", "sh", "-c", "yes 0123456789abcdef0123456789abcdef | head -c 41943040; echo survived-the-flood >&2; exit 0")
	s.Resources.DiskMib = 24
	e.launch(s)
	wantState(t, e.waitFinal("chatty"), stFinished, task.ReasonCompleted, 0)
	e.assertNoLeftovers()
	out, err := e.cli("task", "logs", "chatty", "--tail", "3")
	if err != nil || !strings.Contains(out, "0123456789abcdef") {
		t.Fatalf("logs after the disk is gone: %v %q", err, out)
	}
	var total int64
	entries, _ := os.ReadDir(filepath.Join(e.dir, "logs", "chatty"))
	for _, en := range entries {
		if fi, err := en.Info(); err == nil {
			total += fi.Size()
		}
	}
	if total == 0 || total > 24<<20 {
		t.Fatalf("kept log size %d, want > 0 and within the 24 MiB quota", total)
	}
}

// TestAgentMaxRuntimeExceeded: a task past its maximum runtime is killed
// with RuntimeLimitExceeded, also when the deadline passes across an agent
// restart; a task that ends in time is not affected.
func TestAgentMaxRuntimeExceeded(t *testing.T) {
	begin(t)
	e := newAgentEnv(t)
	s := e.spec("overtime", "sleep", "1000")
	s.MaxRuntimeSeconds, s.KillGracePeriodSeconds = 2, 1
	e.launch(s)
	s = e.spec("in-time", "true")
	s.MaxRuntimeSeconds = 600
	e.launch(s)
	s = e.spec("overtime-restart", "sleep", "1000")
	s.MaxRuntimeSeconds, s.KillGracePeriodSeconds = 4, 1
	e.launch(s)
	// All three have started before the agent dies (a restart during a
	// launch is TestAgentHalfCreatedTaskCleanedAfterRestart's subject).
	for _, id := range []string{"overtime", "in-time", "overtime-restart"} {
		e.waitState(id, stRunning, 60*time.Second)
	}
	e.kill9()
	e.start()

	wantState(t, e.waitFinal("in-time"), stFinished, task.ReasonCompleted, 0)
	for id, limit := range map[string]time.Duration{"overtime": 2 * time.Second, "overtime-restart": 4 * time.Second} {
		tk := e.waitFinal(id)
		if tk.GetState() != stKilled || tk.GetReason() != string(task.ReasonRuntimeLimitExceeded) {
			t.Fatalf("%s = %s/%s (%s), want Killed/RuntimeLimitExceeded", id, tk.GetState(), tk.GetReason(), tk.GetMessage())
		}
		var running, killing time.Time
		for _, tr := range tk.GetTransitions() {
			switch tr.GetState() {
			case stRunning:
				running = tr.GetTime().AsTime()
			case agentv1.TaskState_TASK_STATE_KILLING:
				killing = tr.GetTime().AsTime()
				if tr.GetReason() != string(task.ReasonRuntimeLimitExceeded) {
					t.Fatalf("%s: Killing transition reason %q", id, tr.GetReason())
				}
			}
		}
		if running.IsZero() || killing.IsZero() || killing.Sub(running) < limit {
			t.Fatalf("%s: running at %v, killing at %v: killed before its %v limit", id, running, killing, limit)
		}
	}
	e.assertNoLeftovers()
}

// TestAgentLogRotation: task output rotates by size into at most a few
// files of the configured size; the newest lines stay readable.
func TestAgentLogRotation(t *testing.T) {
	begin(t)
	e := newAgentEnvConfig(t, "logs:\n  maxSizeMiB: 1\n  maxFiles: 2\n")
	// ~8 MiB of numbered lines (each 64 bytes + newline), then a marker.
	const lines = 130000
	// The logger prunes old files in the background after each rotation:
	// the task lingers a moment so that the last pruning is not cut short.
	e.launch(e.spec("loud", "sh", "-c", fmt.Sprintf("seq -w 1 %d | sed 's/$/ %s/'; echo last-line-marker; sleep 1", lines, strings.Repeat("x", 56))))
	wantState(t, e.waitFinal("loud"), stFinished, task.ReasonCompleted, 0)
	e.assertNoLeftovers()

	dir := filepath.Join(e.dir, "logs", "loud")
	deadline := time.Now().Add(30 * time.Second)
	for {
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		var total int64
		var sizes []string
		tooBig := false
		for _, en := range entries {
			fi, err := en.Info()
			if err != nil {
				continue // removed by rotation meanwhile
			}
			total += fi.Size()
			sizes = append(sizes, fmt.Sprintf("%s=%d", en.Name(), fi.Size()))
			tooBig = tooBig || fi.Size() > 1<<20
		}
		if tooBig {
			t.Fatalf("a log file outgrew 1 MiB: %v", sizes)
		}
		// The current file plus maxFiles backups (one more if the last
		// pruning was cut short); most of the 8 MiB written is dropped.
		if len(entries) >= 2 && len(entries) <= 4 && total <= 4<<20 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("log files %v (total %d bytes), want 2-4 files within 4 MiB", sizes, total)
		}
		time.Sleep(200 * time.Millisecond)
	}
	out, err := e.cli("task", "logs", "loud", "--tail", "2")
	if err != nil || !strings.Contains(out, "last-line-marker") || !strings.Contains(out, fmt.Sprint(lines)) {
		t.Fatalf("tail of the rotated log: %v %q", err, out)
	}
}

// TestAgentHalfCreatedTaskCleanedAfterRestart: the agent dies while a task
// is still being prepared, after containerd already holds a container for
// it (a create the agent never got to record). The next agent gives the
// task its final state and removes the container, snapshot and mounts.
// TestAgentResumesLaunchCutShortByRestart: an agent killed while a task is
// being prepared (its image pull hangs) leaves the launch half done, and
// containerd may hold a half-made container of it. The restarted agent
// removes that container and resumes the launch, which now runs; a task
// that was running is untouched.
func TestAgentResumesLaunchCutShortByRestart(t *testing.T) {
	begin(t)
	e := newAgentEnv(t)
	// A registry in front of the real one that holds every request until
	// opened: the pull, and so the task, stays in Preparing.
	var open atomic.Bool
	target, err := url.Parse("http://" + e.reg.Host)
	if err != nil {
		t.Fatal(err)
	}
	proxy := httputil.NewSingleHostReverseProxy(target)
	gate := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for !open.Load() {
			select {
			case <-r.Context().Done():
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(func() { open.Store(true); gate.Close() })
	gateHost := strings.TrimPrefix(gate.URL, "http://")
	e.agent.Args = append(e.agent.Args, "--plain-http-registry", gateHost)
	e.stop()
	e.start()

	s := e.spec("half", "sleep", "1000")
	s.Image = gateHost + "/busybox:latest"
	e.launch(s)
	e.waitState("half", agentv1.TaskState_TASK_STATE_PREPARING, 30*time.Second)
	e.launch(e.spec("steady", "sleep", "1000"))
	pid := e.waitState("steady", stRunning, 60*time.Second).GetPid()
	if tk := e.get("half"); tk.GetState() != agentv1.TaskState_TASK_STATE_PREPARING {
		t.Fatalf("half = %s, want it held in Preparing", tk.GetState())
	}

	e.kill9()
	// What a create that reached containerd but not the agent's records
	// leaves: a container labelled as the task's (from another image).
	e.plantOrphan("half")
	open.Store(true)
	e.start()

	tk := e.waitState("half", stRunning, 60*time.Second)
	if out, err := e.ctr("containers", "info", "half"); err != nil || !strings.Contains(out, gateHost+"/busybox:latest") {
		t.Fatalf("half runs in a container not made by the resumed launch (err %v):\n%s", err, out)
	}
	if tk.GetPid() == 0 {
		t.Fatalf("resumed task has no pid: %v", tk)
	}
	if tk := e.get("steady"); tk.GetState() != stRunning || tk.GetPid() != pid {
		t.Fatalf("steady after restart: %s pid %d, want Running pid %d", tk.GetState(), tk.GetPid(), pid)
	}
	for _, id := range []string{"half", "steady"} {
		e.client.KillTask(e.ctx(), &agentv1.KillTaskRequest{Id: id})
		e.waitFinal(id)
	}
	e.assertNoLeftovers()
}

// authRegistry fronts the test registry with HTTP basic auth and records
// the Authorization headers it was sent.
type authRegistry struct {
	srv      *httptest.Server
	mu       sync.Mutex
	ok, seen int
}

func newAuthRegistry(t *testing.T, upstream, user, pass string) *authRegistry {
	a := &authRegistry{}
	proxy := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: upstream})
	a.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, p, has := r.BasicAuth()
		a.mu.Lock()
		if r.Header.Get("Authorization") != "" {
			a.seen++
		}
		good := has && u == user && p == pass
		if good {
			a.ok++
		}
		a.mu.Unlock()
		if !good {
			w.Header().Set("WWW-Authenticate", `Basic realm="titus-test"`)
			http.Error(w, "authentication required", http.StatusUnauthorized)
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(a.srv.Close)
	return a
}

func (a *authRegistry) host() string { return a.srv.Listener.Addr().String() }

func (a *authRegistry) counts() (ok, seen int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.ok, a.seen
}

// TestAgentRegistryAuth: credentials from the config are sent to their own
// registry only; a registry that wants credentials the agent lacks fails
// the launch with ImagePullFailed.
func TestAgentRegistryAuth(t *testing.T) {
	begin(t)
	reg := testenv.StartRegistry(t)
	testenv.PushBusybox(t, reg, "busybox", "latest")
	private := newAuthRegistry(t, reg.Host, "titus", "s3cret")
	other := newAuthRegistry(t, reg.Host, "someone", "else")
	cfg := fmt.Sprintf("registries:\n  auth:\n    %q:\n      username: titus\n      password: s3cret\n", private.host())
	e := newAgentEnvConfig(t, cfg, "--plain-http-registry", private.host(), "--plain-http-registry", other.host())

	s := e.spec("authed", "true")
	s.Image = private.host() + "/busybox:latest"
	e.launch(s)
	wantState(t, e.waitFinal("authed"), stFinished, task.ReasonCompleted, 0)
	if ok, _ := private.counts(); ok == 0 {
		t.Fatalf("the private registry never saw the configured credentials")
	}

	s = e.spec("no-creds", "true")
	s.Image = other.host() + "/busybox:latest"
	e.launch(s)
	tk := e.waitFinal("no-creds")
	if tk.GetState() != stFailed || tk.GetReason() != string(task.ReasonImagePullFailed) {
		t.Fatalf("no-creds = %s/%s (%s), want Failed/ImagePullFailed", tk.GetState(), tk.GetReason(), tk.GetMessage())
	}
	if _, seen := other.counts(); seen != 0 {
		t.Fatalf("credentials were sent to a registry they are not configured for (%d requests)", seen)
	}
	e.assertNoLeftovers()
}
