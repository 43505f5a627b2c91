package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/titus-agent/titus-agent/test/testenv"
)

// TestRolloutPauseResumeUndoCLI drives `job rollout status|pause|resume|undo`
// through the real CLI against a real agent on containerd: a service of 3
// is updated to a new image, command and env; paused once the first new
// task is up, no further old task is replaced; resumed, the rollout
// completes; undone, revision 1 comes back on every task. The new
// revision's health check reads its env, so a task only counts as
// available if the env reached the container. (This fixture runs the
// scheduler without authz, so the other-tenant attack is covered by
// TestSchedulerAuthzTenantAttacks' fixture, not here.)
func TestRolloutPauseResumeUndoCLI(t *testing.T) {
	begin(t)
	sched := startSchedulerProc(t, "--agent-ttl", "3s")
	reg := testenv.StartRegistry(t)
	v1 := testenv.PushBusybox(t, reg, "busybox", "v1")
	v2 := testenv.PushBusybox(t, reg, "busybox", "v2")
	a := startLinkedAgent(t, testenv.StartContainerd(t), reg, sched, "host-a", "us-east-1a")
	waitUntil(t, "agent registered", 30*time.Second, func() (bool, string) {
		out, _ := sched.cli("agent", "ls")
		return strings.Contains(out, "connected"), out
	})
	cli := func(args ...string) string {
		t.Helper()
		out, err := sched.cli(args...)
		if err != nil {
			t.Fatalf("titus-scheduler %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	// Each revision's check passes only with its own REV in the env; two
	// passes 1s apart make a new task available ~2s after it starts,
	// which leaves the pause its window.
	jobFile := func(image, rev string, command string) string {
		return fmt.Sprintf(`name: ro
ownerEmail: tests@example.com
application: it
service:
  min: 3
  desired: 3
  max: 3
  update: {maxSurge: "0", maxUnavailable: "1", progressDeadlineSeconds: 3600}
task:
  image: %s
  command: %s
  env: {REV: "%s"}
  killGracePeriodSeconds: 1
  resources: {cpuMillicores: 100, memoryMib: 32}
  healthCheck: {kind: exec, command: [sh, -c, 'test "$REV" = %s'], interval: 1s, timeout: 900ms, healthyThreshold: 2, unhealthyThreshold: 3}
`, image, command, rev, rev)
	}
	type liveTask struct{ id, rev, state, health string }
	tasks := func(id string) []liveTask {
		t.Helper()
		var resp struct {
			Tasks []struct {
				ID       string `json:"id"`
				Revision any    `json:"revision"`
				State    string `json:"state"`
				Health   struct {
					Status string `json:"status"`
				} `json:"health"`
			} `json:"tasks"`
		}
		out := cli("task", "ls", "--job", id, "-o", "json")
		if err := json.Unmarshal([]byte(out), &resp); err != nil {
			t.Fatalf("task ls: %v\n%s", err, out)
		}
		var l []liveTask
		for _, tk := range resp.Tasks {
			l = append(l, liveTask{tk.ID, fmt.Sprint(tk.Revision), tk.State, tk.Health.Status})
		}
		return l
	}
	// byRev counts the running tasks by revision.
	byRev := func(id string) (map[string]int, string) {
		m := map[string]int{}
		l := tasks(id)
		for _, tk := range l {
			if tk.state == "TASK_STATE_RUNNING" {
				m[tk.rev]++
			}
		}
		return m, fmt.Sprint(l)
	}
	status := func(id string, want ...string) string {
		t.Helper()
		out := cli("job", "rollout", "status", id)
		for _, w := range want {
			if !strings.Contains(out, w) {
				t.Errorf("rollout status lacks %q:\n%s", w, out)
			}
		}
		return out
	}

	id := sched.submit(jobFile(v1, "1", `[sleep, "1000"]`))
	// Healthy first: an update replaces tasks that do not serve yet all at
	// once, at no cost to availability, and would leave nothing to pause.
	waitUntil(t, "3 healthy of revision 1", 90*time.Second, func() (bool, string) {
		n := 0
		l := tasks(id)
		for _, tk := range l {
			if tk.rev == "1" && tk.state == "TASK_STATE_RUNNING" && tk.health == "HEALTH_STATUS_HEALTHY" {
				n++
			}
		}
		return n == 3, fmt.Sprint(l)
	})
	status(id, "revision 1, no rollout yet")

	f := filepath.Join(sched.dir, "v2.yaml")
	if err := os.WriteFile(f, []byte(jobFile(v2, "2", `[sh, -c, "exec sleep 2000"]`)), 0o644); err != nil {
		t.Fatal(err)
	}
	cli("job", "update", id, "-f", f)
	waitUntil(t, "the first task of revision 2 running", 60*time.Second, func() (bool, string) {
		m, s := byRev(id)
		return m["2"] >= 1, s
	})
	out := cli("job", "rollout", "pause", id)
	if !strings.Contains(out, "rollout: PAUSED, revision 1 -> 2") {
		t.Fatalf("pause printed:\n%s", out)
	}
	// Once the new task is available the rollout would go on; paused, it
	// must not: the 2 old tasks stay for several health intervals.
	waitUntil(t, "the new task available", 30*time.Second, func() (bool, string) {
		out, _ := sched.cli("job", "rollout", "status", id)
		return strings.Contains(out, "tasks: 1 of 3 updated and available"), out
	})
	for range 8 {
		if m, s := byRev(id); m["1"] != 2 || m["2"] != 1 {
			t.Fatalf("paused, yet the tasks changed: %v (%s)", m, s)
		}
		time.Sleep(500 * time.Millisecond)
	}
	status(id, "rollout: PAUSED, revision 1 -> 2", "tasks: 1 of 3 updated and available, 2 of other revisions live")
	if out := cli("job", "ls"); !strings.Contains(out, "PAUSED 1->2 1/3 updated") {
		t.Errorf("job ls lacks the paused rollout:\n%s", out)
	}

	out = cli("job", "rollout", "resume", id)
	if !strings.Contains(out, "rollout: PROGRESSING, revision 1 -> 2") {
		t.Errorf("resume printed:\n%s", out)
	}
	waitUntil(t, "rollout to revision 2 complete", 90*time.Second, func() (bool, string) {
		out, _ := sched.cli("job", "rollout", "status", id)
		return strings.Contains(out, "rollout: COMPLETE, revision 1 -> 2"), out
	})
	status(id, "job "+id+": revision 2", "tasks: 3 of 3 updated and available, 0 of other revisions live")
	if m, s := byRev(id); m["2"] != 3 || len(m) != 1 {
		t.Fatalf("after resume: %v, want 3 of revision 2 (%s)", m, s)
	}
	// The agent runs the new template: image, command (env is proven by the check).
	for _, tk := range tasks(id) {
		spec := a.get(tk.id).GetSpec()
		if !strings.HasSuffix(spec.GetImage(), ":v2") || !slices.Equal(spec.GetCommand(), []string{"sh", "-c", "exec sleep 2000"}) || spec.GetEnv()["REV"] != "2" {
			t.Errorf("task %s on the agent: image %s command %v env %v", tk.id, spec.GetImage(), spec.GetCommand(), spec.GetEnv())
		}
	}

	out = cli("job", "rollout", "undo", id)
	if !strings.Contains(out, "revision 2 -> 1") {
		t.Errorf("undo printed:\n%s", out)
	}
	waitUntil(t, "undo complete", 90*time.Second, func() (bool, string) {
		out, _ := sched.cli("job", "rollout", "status", id)
		return strings.Contains(out, "rollout: COMPLETE, revision 2 -> 1"), out
	})
	status(id, "job "+id+": revision 1", "tasks: 3 of 3 updated and available, 0 of other revisions live")
	waitUntil(t, "3 running of revision 1 alone", 30*time.Second, func() (bool, string) {
		m, s := byRev(id)
		return m["1"] == 3 && len(m) == 1, s
	})
	for _, tk := range tasks(id) {
		spec := a.get(tk.id).GetSpec()
		if !strings.HasSuffix(spec.GetImage(), ":v1") || !slices.Equal(spec.GetCommand(), []string{"sleep", "1000"}) || spec.GetEnv()["REV"] != "1" {
			t.Errorf("task %s after undo: image %s command %v env %v", tk.id, spec.GetImage(), spec.GetCommand(), spec.GetEnv())
		}
	}

	cli("job", "kill", id)
	waitUntil(t, "all tasks gone", 60*time.Second, func() (bool, string) {
		r := running(a)
		return len(r) == 0, fmt.Sprint(r)
	})
	a.assertNoLeftovers()
}
