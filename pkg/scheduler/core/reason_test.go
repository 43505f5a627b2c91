package core

import (
	"strings"
	"testing"

	"github.com/titus-agent/titus-agent/pkg/scheduler/model"
	"github.com/titus-agent/titus-agent/pkg/task"
)

func (ts *testScheduler) reason(id string) string {
	ts.t.Helper()
	r := ts.job(id).QueuedReason
	for _, j := range ts.Jobs(false) {
		if j.ID == id && j.QueuedReason != r {
			ts.t.Fatalf("job ls says %q, job get %q", j.QueuedReason, r)
		}
	}
	return r
}

// TestQueuedFlexJobSaysWhy: a flex job beyond its group's quota shows the
// group, its tier and the numbers, and the reason clears once it is placed.
func TestQueuedFlexJobSaysWhy(t *testing.T) {
	ts := newTestScheduler(t, Config{Groups: []model.Group{{Name: "batchy", Tier: model.TierFlex, CPUMillicores: 1000}}})
	sess := ts.connect("a", 8000)
	inGroup := func(kind any) model.JobSpec {
		s := testSpec(kind, 500)
		s.CapacityGroup = "batchy"
		return s
	}
	first := ts.submit(inGroup(&model.ServiceJob{Desired: 2, Max: 2}))
	second := ts.submit(inGroup(&model.BatchJob{Size: 1}))
	running := ts.place()
	if len(running) != 2 {
		t.Fatalf("placed %v, want the first job's 2 tasks", running)
	}
	ts.report("a", sess, task.Running, running...)
	want := `capacity group "batchy" (flex) full: 1/1 CPU cores in use; a task needs 0.5 CPU cores, 64 MiB memory; queued until the group's tasks end`
	if got := ts.reason(second); got != want {
		t.Fatalf("queued reason = %q, want %q", got, want)
	}
	if got := ts.reason(first); got != "" {
		t.Fatalf("placed job's reason = %q, want none", got)
	}
	if _, err := ts.KillJob(ts.ctx, first); err != nil {
		t.Fatal(err)
	}
	ts.report("a", sess, task.Killed, running...)
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
	ts := newTestScheduler(t, Config{})
	ts.connect("small", 1000)
	id := ts.submit(testSpec(&model.BatchJob{Size: 1}, 2000))
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

// TestUnknownTaskKilledForTheSchedulersReason: a task an agent reports
// that the scheduler does not know is killed saying so, so the agent does
// not record it as its user's kill.
func TestUnknownTaskKilledForTheSchedulersReason(t *testing.T) {
	ts := newTestScheduler(t, Config{})
	sess := ts.connect("a", 4000)
	for len(sess.out) > 0 {
		<-sess.out // the registration's answer
	}
	ts.report("a", sess, task.Running, "ghost")
	var got Message
	select {
	case m := <-sess.out:
		got = *m
	default:
		t.Fatal("no message for the unknown task")
	}
	want := Message{Kill: []string{"ghost"}, KillReason: task.ReasonKilledByScheduler, KillMessage: "unknown to the scheduler"}
	if got.Kill == nil || got.Kill[0] != want.Kill[0] || got.KillReason != want.KillReason || got.KillMessage != want.KillMessage {
		t.Errorf("message = %+v, want %+v", got, want)
	}
}
