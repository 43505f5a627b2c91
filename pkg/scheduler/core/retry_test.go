package core

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/titus-agent/titus-agent/pkg/scheduler/model"
	"github.com/titus-agent/titus-agent/pkg/task"
)

func TestExpoDoesNotOverflow(t *testing.T) {
	if d := expo(time.Hour, 1000, 5*time.Minute); d != 5*time.Minute {
		t.Fatalf("expo = %s, want the cap", d)
	}
}

// TestRetryCounterResetsAfterARun: a slot's consecutive-failure count
// grows while its tasks fail fast and starts again at 1 once a task ran
// for reset_after_seconds before failing.
func TestRetryCounterResetsAfterARun(t *testing.T) {
	s := &Core{opts: Config{MaxPendingPerGroup: 100, CrashLoopBase: 10 * time.Millisecond}, q: newQueues(), kick: make(chan struct{}, 1)}
	s.opts.SetDefaults()
	policy := &model.RetryPolicy{Kind: model.RetryExponential, DelayMs: 100, MaxRetries: 10, ResetAfterSeconds: 60}
	j := &jobState{rec: &model.Job{State: model.JobAccepted,
		Spec: model.JobSpec{Batch: &model.BatchJob{Size: 1, Retry: policy}}},
		group: &groupState{cfg: &model.Group{Name: "g", MaxPending: 100}}}
	sl := &slot{active: true}
	now := time.Unix(10_000, 0)
	fail := func(ranFor time.Duration) (uint32, time.Duration) {
		rec := &model.Task{State: task.Failed, ExitCode: 1, Started: now.Add(-ranFor), Ended: now}
		s.settle(j, sl, rec, now)
		s.q.dequeue(j, sl)
		return sl.failures, sl.due.Sub(now)
	}
	type step struct {
		Failures uint32
		Delay    time.Duration
	}
	var got []step
	for _, ran := range []time.Duration{time.Second, time.Second, time.Second, 2 * time.Minute, time.Second} {
		f, d := fail(ran)
		got = append(got, step{f, d})
	}
	want := []step{{1, 100 * time.Millisecond}, {2, 200 * time.Millisecond}, {3, 400 * time.Millisecond}, {1, 100 * time.Millisecond}, {2, 200 * time.Millisecond}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("after each failure (-want +got):\n%s", diff)
	}
	if j.rec.Counts.Retries != 5 {
		t.Errorf("retries = %d, want 5", j.rec.Counts.Retries)
	}
}
