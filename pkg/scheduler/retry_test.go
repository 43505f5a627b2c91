package scheduler

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
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
	s := &Scheduler{opts: Options{MaxPendingPerGroup: 100, CrashLoopBase: 10 * time.Millisecond}, waiting: map[*jobState]struct{}{}, kick: make(chan struct{}, 1)}
	s.opts.setDefaults()
	policy := &schedv1.RetryPolicy{Kind: schedv1.RetryPolicy_KIND_EXPONENTIAL, DelayMs: 100, MaxRetries: 10, ResetAfterSeconds: 60}
	j := &jobState{rec: &schedv1.Job{State: schedv1.JobState_JOB_STATE_ACCEPTED, Counts: &schedv1.JobCounts{},
		Spec: &schedv1.JobSpec{Kind: &schedv1.JobSpec_Batch{Batch: &schedv1.BatchJob{Size: 1, Retry: policy}}}},
		group: &groupState{cfg: &Group{Name: "g", MaxPending: 100}}}
	sl := &slot{active: true}
	now := time.Unix(10_000, 0)
	fail := func(ranFor time.Duration) (uint32, time.Duration) {
		rec := &schedv1.Task{State: agentv1.TaskState_TASK_STATE_FAILED, ExitCode: 1,
			Started: timestamppb.New(now.Add(-ranFor)), Ended: timestamppb.New(now)}
		s.settle(j, sl, rec, now)
		s.dequeue(j, sl)
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
