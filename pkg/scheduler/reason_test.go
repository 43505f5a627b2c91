package scheduler

import (
	"strings"
	"testing"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
)

func (ts *testScheduler) reason(id string) string {
	ts.t.Helper()
	r := ts.job(id).QueuedReason
	resp, err := ts.ListJobs(ts.ctx, &schedv1.ListJobsRequest{})
	if err != nil {
		ts.t.Fatal(err)
	}
	for _, j := range resp.Jobs {
		if j.Id == id && j.QueuedReason != r {
			ts.t.Fatalf("job ls says %q, job get %q", j.QueuedReason, r)
		}
	}
	return r
}

// TestQueuedFlexJobSaysWhy: a flex job beyond its group's quota shows the
// group, its tier and the numbers, and the reason clears once it is placed.
func TestQueuedFlexJobSaysWhy(t *testing.T) {
	ts := newTestScheduler(t, Options{Groups: []Group{{Name: "batchy", Tier: TierFlex, CPUMillicores: 1000}}})
	sess := ts.connect("a", 8000)
	inGroup := func(kind any) *schedv1.JobSpec {
		s := testSpec(kind, 500)
		s.CapacityGroup = "batchy"
		return s
	}
	first := ts.submit(inGroup(&schedv1.ServiceJob{Desired: 2, Max: 2}))
	second := ts.submit(inGroup(&schedv1.BatchJob{Size: 1}))
	running := ts.place()
	if len(running) != 2 {
		t.Fatalf("placed %v, want the first job's 2 tasks", running)
	}
	ts.report("a", sess, agentv1.TaskState_TASK_STATE_RUNNING, running...)
	want := `capacity group "batchy" (flex) full: 1/1 CPU cores in use; a task needs 0.5 CPU cores, 64 MiB memory; queued until the group's tasks end`
	if got := ts.reason(second); got != want {
		t.Fatalf("queued reason = %q, want %q", got, want)
	}
	if got := ts.reason(first); got != "" {
		t.Fatalf("placed job's reason = %q, want none", got)
	}
	if _, err := ts.KillJob(ts.ctx, &schedv1.KillJobRequest{Id: first}); err != nil {
		t.Fatal(err)
	}
	ts.report("a", sess, agentv1.TaskState_TASK_STATE_KILLED, running...)
	if placed := ts.place(); len(placed) != 1 || !strings.HasPrefix(placed[0], second+".") {
		t.Fatalf("placed %v, want the queued job's task", placed)
	}
	if got := ts.reason(second); got != "" {
		t.Fatalf("reason after placement = %q, want none", got)
	}
}

// TestQueuedJobWithNoRoomSaysWhy: a task no agent can take says so, with
// what it needs, until an agent with room arrives.
func TestQueuedJobWithNoRoomSaysWhy(t *testing.T) {
	ts := newTestScheduler(t, Options{})
	ts.connect("small", 1000)
	id := ts.submit(testSpec(&schedv1.BatchJob{Size: 1}, 2000))
	if placed := ts.place(); len(placed) != 0 {
		t.Fatalf("placed %v on a host too small", placed)
	}
	if got := ts.reason(id); !strings.HasPrefix(got, "no agent can take a task now (a task needs 2 CPU cores, 64 MiB memory; 1 agents known") {
		t.Fatalf("queued reason = %q", got)
	}
	ts.connect("big", 4000)
	if placed := ts.place(); len(placed) != 1 {
		t.Fatalf("placed %v, want 1 on the big host", placed)
	}
	if got := ts.reason(id); got != "" {
		t.Fatalf("reason after placement = %q, want none", got)
	}
}
