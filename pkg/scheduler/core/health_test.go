package core

import (
	"testing"
	"time"

	"github.com/titus-agent/titus-agent/pkg/scheduler/model"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// drainKills returns the kills sent on a session so far.
func drainKills(sess *Session) []Message {
	var out []Message
	for {
		select {
		case m := <-sess.out:
			if len(m.Kill) > 0 {
				out = append(out, *m)
			}
		default:
			return out
		}
	}
}

// A service task that stays Unhealthy past its job's policy is killed
// with reason HealthCheckFailed and replaced after a backoff, as a
// failure of its slot; a task that recovers in time is left alone.
func TestUnhealthyServiceTaskReplaced(t *testing.T) {
	ts := newTestScheduler(t, Config{})
	sess := ts.connect("a1", 4000)
	id := ts.submit(testSpec(&model.ServiceJob{Min: 1, Desired: 1, Max: 1, UnhealthyReplaceAfterSeconds: 30,
		Retry: &model.RetryPolicy{Kind: model.RetryDelayed, DelayMs: 60_000}}, 100))
	placed := ts.place()
	if len(placed) != 1 {
		t.Fatalf("placed %v", placed)
	}
	tid := placed[0]
	ts.report("a1", sess, task.Running, tid)
	drainKills(sess)
	t0 := time.Now()
	health := func(s task.HealthStatus, out string) {
		ts.Updates(sess, []model.TaskStatus{{TaskID: tid, State: task.Running, Health: &task.Health{Status: s, Since: t0, Output: out}}})
	}
	// Unhealthy, then healthy again within the policy: no kill.
	health(task.HealthUnhealthy, "503")
	health(task.HealthHealthy, "200")
	if k := drainKills(sess); len(k) != 0 {
		t.Fatalf("killed a task that recovered: %+v", k)
	}
	// Unhealthy for longer than the policy (the clock moves on).
	health(task.HealthUnhealthy, "connection refused")
	ts.mu.Lock()
	ts.tasks[tid].unhealthySince = time.Now().Add(-31 * time.Second)
	ts.mu.Unlock()
	health(task.HealthUnhealthy, "connection refused")
	k := drainKills(sess)
	if len(k) != 1 || k[0].Kill[0] != tid || k[0].KillReason != task.ReasonHealthCheckFailed {
		t.Fatalf("kills %+v, want one of %s for HealthCheckFailed", k, tid)
	}
	// Reports until the agent confirms send no second kill.
	health(task.HealthUnhealthy, "connection refused")
	if k := drainKills(sess); len(k) != 0 {
		t.Fatalf("second kill %+v", k)
	}
	// The agent words the kill its way; the scheduler records why it asked.
	ts.Updates(sess, []model.TaskStatus{{TaskID: tid, State: task.Killed, Reason: string(task.ReasonKilledByUser)}})
	if err := ts.Flush(ts.ctx); err != nil {
		t.Fatal(err)
	}
	got, err := ts.Task(ts.ctx, tid)
	if err != nil {
		t.Fatal(err)
	}
	if got.Reason != string(task.ReasonHealthCheckFailed) || got.State != task.Killed {
		t.Fatalf("task ended %s/%s %q, want Killed/HealthCheckFailed", got.State, got.Reason, got.Message)
	}
	j := ts.job(id)
	if j.Counts.Retries != 1 || j.Counts.Killed != 0 {
		t.Fatalf("counts %+v: want the failure counted as a retry, not a kill", j.Counts)
	}
	// The replacement waits out the retry backoff (a failure, not a kill).
	ts.mu.Lock()
	var due time.Time
	for _, sl := range ts.jobs[id].slots {
		due = sl.due
	}
	ts.mu.Unlock()
	if time.Until(due) < 30*time.Second {
		t.Fatalf("replacement due in %s, want the retry delay", time.Until(due))
	}
}

// A batch job's Unhealthy tasks are reported, not replaced.
func TestUnhealthyBatchTaskKept(t *testing.T) {
	ts := newTestScheduler(t, Config{})
	sess := ts.connect("a1", 4000)
	ts.submit(testSpec(&model.BatchJob{Size: 1}, 100))
	tid := ts.place()[0]
	ts.report("a1", sess, task.Running, tid)
	drainKills(sess)
	ts.Updates(sess, []model.TaskStatus{{TaskID: tid, State: task.Running, Health: &task.Health{Status: task.HealthUnhealthy}}})
	if k := drainKills(sess); len(k) != 0 {
		t.Fatalf("killed a batch task: %+v", k)
	}
	got, _ := ts.Task(ts.ctx, tid)
	if got.Health == nil || got.Health.Status != task.HealthUnhealthy {
		t.Fatalf("health not shown: %+v", got.Health)
	}
}

// An agent that registers unhealthy (it came back with its state disk
// full, say) takes no task until a heartbeat says it is healthy: it used
// to be taken as healthy at registration, and the tasks placed on it
// before its first heartbeat failed.
func TestAgentRegisteringUnhealthyTakesNoTask(t *testing.T) {
	ts := newTestScheduler(t, Config{})
	sess := newSession()
	ts.mu.Lock()
	sess.agent = ts.register(model.Registration{InstanceID: "a1", AZ: "az-1", Unhealthy: true,
		Capacity: model.Capacity{Resources: model.Resources{CPU: 4000, Mem: 65536}}}, sess, time.Now())
	ts.mu.Unlock()
	ts.submit(testSpec(&model.BatchJob{Size: 1}, 100))
	if placed := ts.place(); len(placed) != 0 {
		t.Fatalf("placed %v on an agent that registered unhealthy", placed)
	}
	ts.Heartbeat(sess, true, nil, nil)
	if placed := ts.place(); len(placed) != 1 {
		t.Fatalf("placed %v once the agent is healthy, want one task", placed)
	}
}

// TestHostDiskFullRequeuesElsewhere: a task whose host ran out of disk
// while preparing it (HostDiskFull: nothing ran) is placed again, at once
// and on another host, counting no failure, retry or quarantine strike
// (a batch job allowing no retry does not fail); the full host takes
// nothing until a heartbeat says it is healthy. Seen in the chaos soak: a
// task placed just as a host's state disk filled failed NetworkSetupFailed.
func TestHostDiskFullRequeuesElsewhere(t *testing.T) {
	ts := newTestScheduler(t, Config{QuarantineFailures: 1})
	full := ts.connect("a", 8000)
	s := testSpec(&model.BatchJob{Size: 1, Retry: &model.RetryPolicy{Kind: model.RetryExponential, MaxRetries: 0, DelayMs: 60000}}, 100)
	id := ts.submit(s)
	first := ts.place()
	if len(first) != 1 {
		t.Fatalf("placed %v, want one task", first)
	}
	ts.Updates(full, []model.TaskStatus{{TaskID: first[0], State: task.Failed, Reason: string(task.ReasonHostDiskFull),
		Message: "network: allocate address: write allocation record: no space left on device"}})
	if got := ts.place(); len(got) != 0 {
		t.Fatalf("placed %v on the host whose disk just filled", got)
	}
	other := ts.connect("b", 8000)
	again := ts.place()
	if len(again) != 1 || again[0] == first[0] || ts.taskAgent(again[0]) != "b" {
		t.Fatalf("placed %v, want the task's next attempt on the other host at once", again)
	}
	j := ts.job(id)
	if j.State.Terminal() || j.Counts.Failed != 0 || j.Counts.Retries != 0 {
		t.Errorf("job %v counts %+v: a full disk of the host is no failure of the task", j.State, j.Counts)
	}
	ts.Updates(other, []model.TaskStatus{{TaskID: again[0], State: task.Finished}})
	ts.submit(testSpec(&model.BatchJob{Size: 1}, 100))
	ts.Heartbeat(full, true, nil, nil)
	ts.Heartbeat(other, false, nil, nil)
	if got := ts.place(); len(got) != 1 || ts.taskAgent(got[0]) != "a" {
		t.Fatalf("placed %v, want a once healthy again (no quarantine strike)", got)
	}
}

// taskAgent is the host a live task was placed on.
func (ts *testScheduler) taskAgent(id string) string {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if t := ts.tasks[id]; t != nil {
		return t.agent.id
	}
	return ""
}
