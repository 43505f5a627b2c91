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

// TestLostReplacementsBackOff: a slot whose tasks are lost again and again
// without running (a launch that kills the agent's stream, a flapping
// host) is replaced at once the first time, then after growing, jittered
// delays; a task that ran a while before it was lost starts over.
func TestLostReplacementsBackOff(t *testing.T) {
	s := &Core{opts: Config{MaxPendingPerGroup: 100}, q: newQueues(), kick: make(chan struct{}, 1)}
	s.opts.SetDefaults()
	j := &jobState{rec: &model.Job{State: model.JobAccepted, Spec: model.JobSpec{Service: &model.ServiceJob{Desired: 1, Max: 1}}},
		group: &groupState{cfg: &model.Group{Name: "g", MaxPending: 100}}}
	sl := &slot{active: true}
	now := time.Unix(10_000, 0)
	lose := func(ranFor time.Duration) time.Duration {
		rec := &model.Task{State: task.Lost, Ended: now}
		if ranFor > 0 {
			rec.Started = now.Add(-ranFor)
		}
		s.settle(j, sl, rec, now)
		s.q.dequeue(j, sl)
		return sl.due.Sub(now)
	}
	type bounds struct{ lo, hi time.Duration }
	steps := []struct {
		ran  time.Duration
		want bounds
	}{
		{0, bounds{0, 0}},
		{0, bounds{500 * time.Millisecond, time.Second}},
		{0, bounds{time.Second, 2 * time.Second}},
		{time.Second, bounds{2 * time.Second, 4 * time.Second}},
		{2 * time.Minute, bounds{0, 0}},
		{0, bounds{500 * time.Millisecond, time.Second}},
	}
	for i, st := range steps {
		if d := lose(st.ran); d < st.want.lo || d > st.want.hi {
			t.Errorf("loss %d (ran %s): replaced after %s, want within [%s, %s]", i+1, st.ran, d, st.want.lo, st.want.hi)
		}
	}
	for n := uint32(2); n < 40; n++ {
		if d := lostDelay(n); d > lostCap || d < lostBase/2 {
			t.Fatalf("lostDelay(%d) = %s, outside [%s, %s]", n, d, lostBase/2, lostCap)
		}
	}
}

// TestNoNetworkCapacityRefusalsBackOff: a slot whose task is refused
// NoNetworkCapacity is placed again at once the first time, then after
// growing, jittered, capped delays (a stuck or hostile agent refusing
// every task would otherwise requeue it once per heartbeat forever); no
// failure or retry is counted; any other end of its task starts over.
func TestNoNetworkCapacityRefusalsBackOff(t *testing.T) {
	s := &Core{opts: Config{MaxPendingPerGroup: 100}, q: newQueues(), kick: make(chan struct{}, 1)}
	s.opts.SetDefaults()
	j := &jobState{rec: &model.Job{State: model.JobAccepted, Spec: model.JobSpec{Service: &model.ServiceJob{Desired: 1, Max: 1}}},
		group: &groupState{cfg: &model.Group{Name: "g", MaxPending: 100}}}
	sl := &slot{active: true}
	now := time.Unix(10_000, 0)
	end := func(rec *model.Task) time.Duration {
		rec.Ended = now
		s.settle(j, sl, rec, now)
		s.q.dequeue(j, sl)
		return sl.due.Sub(now)
	}
	refuse := func() time.Duration {
		return end(&model.Task{State: task.Failed, Reason: string(task.ReasonNoNetworkCapacity)})
	}
	type bounds struct{ lo, hi time.Duration }
	check := func(what string, d time.Duration, want bounds) {
		t.Helper()
		if d < want.lo || d > want.hi {
			t.Errorf("%s: placed again after %s, want within [%s, %s]", what, d, want.lo, want.hi)
		}
	}
	check("refusal 1", refuse(), bounds{0, 0})
	check("refusal 2", refuse(), bounds{500 * time.Millisecond, time.Second})
	check("refusal 3", refuse(), bounds{time.Second, 2 * time.Second})
	for range 40 {
		refuse()
	}
	check("refusal 43", sl.due.Sub(now), bounds{lostCap / 2, lostCap})
	if j.rec.Counts.Retries != 0 || j.rec.Counts.Failed != 0 || sl.failures != 0 {
		t.Errorf("counts %+v, slot failures %d: a refusal is no failure", j.rec.Counts, sl.failures)
	}
	// An operator's kill of the next attempt (it got an IP and ran):
	// replaced at once, and the next refusal starts over.
	check("kill", end(&model.Task{State: task.Killed, Reason: "KilledByUser", Started: now.Add(-time.Second)}), bounds{0, 0})
	check("refusal after a run", refuse(), bounds{0, 0})
	check("refusal after a run, again", refuse(), bounds{500 * time.Millisecond, time.Second})
}
