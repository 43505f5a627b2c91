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
