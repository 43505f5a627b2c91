package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	"github.com/titus-agent/titus-agent/pkg/task"
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
	e.launch(e.spec("ok", "sh", "-c", "echo hello-out; echo hello-err >&2"))
	e.launch(e.spec("fails", "sh", "-c", "exit 3"))
	wantState(t, e.waitFinal("ok"), stFinished, task.ReasonCompleted, 0)
	wantState(t, e.waitFinal("fails"), stFailed, task.ReasonNonZeroExit, 3)

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
	s = e.spec("polite", "sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.1; done")
	s.KillGracePeriodSeconds = 30
	e.launch(s)
	e.waitState("polite", stRunning, 30*time.Second)
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
	e := newAgentEnv(t)
	const n = 10
	pids := map[string]uint32{}
	for i := 0; i < n; i++ {
		e.launch(e.spec(fmt.Sprintf("long-%d", i), "sleep", "1000"))
	}
	// One task will exit while the agent is away, with a known code.
	e.launch(e.spec("exits-away", "sh", "-c", "while [ ! -f /tmp/go ]; do sleep 0.1; done; exit 42"))
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("long-%d", i)
		pids[id] = e.waitState(id, stRunning, 60*time.Second).GetPid()
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
	}
	wantState(t, e.waitFinal("exits-away"), stFailed, task.ReasonNonZeroExit, 42)
	e.waitNoContainer("orphan")

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
	// containerd restarts: the agent reconnects and carries on.
	e.ctd.Restart(t)
	e.launch(e.spec("after-ctd-restart", "true"))
	wantState(t, e.waitFinal("after-ctd-restart"), stFinished, task.ReasonCompleted, 0)
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
	// A caller that is neither root nor in the group is refused.
	cmd = exec.Command(titusAgentBinary(t), "--socket", e.socket, "task", "ls")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	b, err = cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(b), "permission denied") {
		t.Fatalf("unprivileged caller: %v %q", err, b)
	}
	e.assertNoLeftovers()
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
