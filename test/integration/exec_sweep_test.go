package integration

import (
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/titus-agent/titus-agent/test/testenv"
)

// TestExecSessionsOfAKilledAgentAreSwept: an exec session lives as long
// as the agent process relaying it; an agent killed with a session open
// left the session's processes running in the task, in their own cgroup,
// with no client and nobody to end them, for the task's whole life. The
// next agent ends them at start (everything in the session's cgroup, the
// cgroup itself), and leaves the task and its own processes alone.
func TestExecSessionsOfAKilledAgentAreSwept(t *testing.T) {
	begin(t)
	e := newAgentEnv(t)
	e.launch(e.spec("box", "sh", "-c", "sleep 1030 & exec sleep 100000"))
	e.waitState("box", stRunning, 60*time.Second)
	taskPid := e.containerPid("box")
	e.waitProcs("box", `sleep 1030`, true)

	client := exec.Command(titusAgentBinary(t), "--socket", e.socket, "task", "exec", "box", "--", "sh", "-c", "setsid sleep 1031 & exec sleep 1032")
	if err := client.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Process.Kill(); _ = client.Wait() })
	e.waitProcs("box", `sleep 1031`, true)
	e.waitProcs("box", `sleep 1032`, true)
	if sub := execCgroups(t, taskPid); len(sub) != 1 {
		t.Fatalf("exec session cgroups: %v, want one", sub)
	}

	e.kill9()
	_ = client.Process.Kill()
	_ = client.Wait()
	// What the dead agent leaves: the session runs on, client gone.
	if left := hostProcsLike(`^sleep 103[12]$`); len(left) != 2 {
		t.Fatalf("after the agent's kill -9 the session's processes are %v, want both still running (the leak this test is about)", left)
	}

	e.start()
	e.waitState("box", stRunning, 60*time.Second)
	deadline := time.Now().Add(testenv.Scaled(15 * time.Second))
	for (len(hostProcsLike(`^sleep 103[12]$`)) > 0 || len(execCgroups(t, taskPid)) > 0) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if left := hostProcsLike(`^sleep 103[12]$`); len(left) > 0 {
		t.Fatalf("the dead agent's session still runs after the restart: %v\nagent log:\n%s", left, tailLog(e.agent.Log()))
	}
	if sub := execCgroups(t, taskPid); len(sub) != 0 {
		t.Fatalf("exec session cgroups left: %v", sub)
	}
	if !strings.Contains(e.agent.Log(), "ended exec sessions of an earlier agent process") {
		t.Errorf("the agent did not say it ended the sessions:\n%s", tailLog(e.agent.Log()))
	}
	// The task and its own processes are untouched; exec works again.
	if pid := e.containerPid("box"); pid != taskPid {
		t.Fatalf("the task's init is %q, was %s", pid, taskPid)
	}
	if pid, _ := strconv.Atoi(taskPid); !processAlive(pid) {
		t.Fatalf("the task's init %s is gone", taskPid)
	}
	e.waitProcs("box", `sleep 1030`, true)
	if out, err := e.cli("task", "exec", "box", "--", "echo", "again"); err != nil || !strings.Contains(out, "again") {
		t.Fatalf("exec after the sweep: %q %v", out, err)
	}
}
