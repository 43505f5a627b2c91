package core

import (
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/titus-agent/titus-agent/pkg/scheduler/model"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// snapshot copies every record under the scheduler's prefix.
func (ts *testScheduler) snapshot() map[string]string {
	ts.t.Helper()
	resp, err := ts.cli.Get(ts.ctx, ts.prefix, clientv3.WithPrefix())
	if err != nil {
		ts.t.Fatal(err)
	}
	out := map[string]string{}
	for _, kv := range resp.Kvs {
		out[string(kv.Key)] = string(kv.Value)
	}
	return out
}

// unwrite puts back the snapshot's value of each key (as if the writes
// made since had never landed: a leader killed before its flush).
func (ts *testScheduler) unwrite(snap map[string]string, keys ...string) {
	ts.t.Helper()
	for _, k := range keys {
		v, ok := snap[k]
		if !ok {
			ts.t.Fatalf("no %s in the snapshot", k)
		}
		if _, err := ts.cli.Put(ts.ctx, k, v); err != nil {
			ts.t.Fatal(err)
		}
	}
}

// crashingRollout submits a 2-task service (maxFailures 3), updates it to
// a crashing image, and runs rounds until its rollout has counted one
// failure.
func crashingRollout(t *testing.T) (*fleet, string) {
	ts := newTestScheduler(t, Config{CrashLoopBase: time.Nanosecond, CrashLoopCap: time.Nanosecond})
	f := newFleet(ts)
	f.connect("h0", 4000, nil)
	spec := serviceSpec(2, &model.UpdateStrategy{MaxSurge: "1", MaxUnavailable: "0", MaxFailures: 3}, "")
	spec.Service.Retry = &model.RetryPolicy{Kind: model.RetryImmediate}
	spec = withImage(spec, "registry.example/x:1", false)
	id := ts.submit(spec)
	f.converge(t, nil)
	f.failImage = "registry.example/x:bad"
	if _, err := ts.UpdateJob(ts.ctx, id, withImage(spec, "registry.example/x:bad", false)); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 50 && ts.job(id).Rollout.Failures < 1; i++ {
		f.round()
	}
	if r := ts.job(id).Rollout; r.Failures != 1 {
		t.Fatalf("%+v, want 1 failure", r)
	}
	return f, id
}

// TestRolloutFailureWrittenWithoutTheCount: the flush loop may write a
// failed task's end and not yet the job's count (they are separate
// records, flushed together only by chance) when the leader dies. The
// new leader counts the task from its record: it rolls back at the next
// failure, as the dead leader would have, and the count names the task.
func TestRolloutFailureWrittenWithoutTheCount(t *testing.T) {
	f, id := crashingRollout(t)
	ts := f.ts
	if err := ts.Flush(ts.ctx); err != nil {
		t.Fatal(err)
	}
	snap := ts.snapshot()
	for i := 0; i < 50 && ts.job(id).Rollout.Failures < 2; i++ {
		f.round()
	}
	r := ts.job(id).Rollout
	if r.Failures != 2 {
		t.Fatalf("%+v, want 2 failures", r)
	}
	// The second failure's task record is written; the job's is lost.
	f2 := f.failoverAfter(t, func() { ts.unwrite(snap, ts.prefix+"jobs/"+id) }, nil)
	if err := f2.ts.Flush(f2.ts.ctx); err != nil {
		t.Fatal(err)
	}
	if got := f2.ts.stored(id).Rollout; got.Failures != 2 || got.LastFailure != r.LastFailure {
		t.Fatalf("the new leader wrote %d failures (last %q), want the dead leader's 2 (%q)", got.Failures, got.LastFailure, r.LastFailure)
	}
	f2.converge(t, nil)
	j := f2.ts.job(id)
	if j.Revision != 1 || j.Rollout.State != model.RolloutRolledBack || !strings.Contains(j.Rollout.Reason, "3 consecutive failures") {
		t.Fatalf("after the failover: revision %d rollout %+v", j.Revision, j.Rollout)
	}
	if bad := f2.byImage["registry.example/x:bad"]; bad != 3 {
		t.Errorf("%d tasks of the bad revision launched, want 3", bad)
	}
}

// TestRolloutFailureNotWrittenAtAll: the leader dies after a new task
// failed and its retry was placed (a synchronous write), but before the
// flush of the task's end and the job's count. The new leader loads the
// failed task as live beside its retry; its agent reports it Failed, and
// that counts once: not zero times (it is no longer the slot's task),
// not twice (for a record that had the count already).
func TestRolloutFailureNotWrittenAtAll(t *testing.T) {
	for _, jobWritten := range []bool{false, true} {
		name := "job record lost"
		if jobWritten {
			name = "job record written"
		}
		t.Run(name, func(t *testing.T) {
			f, id := crashingRollout(t)
			ts := f.ts
			// Place the second bad task and hold its launch.
			ts.place()
			if err := ts.Flush(ts.ctx); err != nil {
				t.Fatal(err)
			}
			snap := ts.snapshot()
			var failed model.TaskStatus
			for _, sess := range f.sessions {
				for len(sess.out) > 0 {
					m := <-sess.out
					for _, sp := range m.Launch {
						failed = model.TaskStatus{TaskID: sp.ID, State: task.Failed, Reason: "Crashed", Message: "exit 1", ExitCode: 1}
						f.launched[sp.ID]++
						f.byImage[sp.Image]++
					}
				}
			}
			if failed.TaskID == "" {
				t.Fatal("no launch of the bad revision")
			}
			ts.Updates(f.sessions["h0"], []model.TaskStatus{failed})
			if r := ts.job(id).Rollout; r.Failures != 2 {
				t.Fatalf("%+v, want 2 failures", r)
			}
			ts.place() // the retry: a synchronous write
			keys := []string{ts.prefix + "tasks/" + id + "/" + failed.TaskID}
			if !jobWritten {
				keys = append(keys, ts.prefix+"jobs/"+id)
			}
			f2 := f.failoverAfter(t, func() { ts.unwrite(snap, keys...) }, []model.TaskStatus{failed})
			if got := f2.ts.job(id).Rollout; got.Failures != 2 {
				t.Fatalf("the new leader counts %d failures (%+v), want 2", got.Failures, got)
			}
			f2.converge(t, nil)
			j := f2.ts.job(id)
			if j.Revision != 1 || j.Rollout.State != model.RolloutRolledBack || !strings.Contains(j.Rollout.Reason, "3 consecutive failures") {
				t.Fatalf("after the failover: revision %d rollout %+v", j.Revision, j.Rollout)
			}
		})
	}
}

// TestRolloutRecountStartsAfterReset: failures before a new-revision task
// served are not counted again by a new leader's recount.
func TestRolloutRecountStartsAfterReset(t *testing.T) {
	ts := newTestScheduler(t, Config{})
	f := newFleet(ts)
	f.connect("h0", 4000, nil)
	spec := withImage(serviceSpec(2, &model.UpdateStrategy{MaxSurge: "1", MaxUnavailable: "0", MaxFailures: 3}, ""), "registry.example/x:1", false)
	id := ts.submit(spec)
	f.converge(t, nil)
	if _, err := ts.UpdateJob(ts.ctx, id, withImage(spec, "registry.example/x:2", false)); err != nil {
		t.Fatal(err)
	}
	f.converge(t, nil)
	ts.mu.Lock()
	j := ts.jobs[id]
	r := j.rec.Rollout
	// Two failures of revision 2 that ended before the count was reset.
	old := []*model.Task{
		{ID: id + ".0.90", JobID: id, Revision: 2, State: task.Failed, Reason: "Crashed", Ended: r.Started.Add(time.Millisecond)},
		{ID: id + ".1.90", JobID: id, Revision: 2, State: task.Failed, Reason: "Crashed", Ended: r.Started.Add(2 * time.Millisecond)},
	}
	r.State, r.FailuresSince = model.RolloutProgressing, r.Started.Add(time.Second)
	ts.recountFailures(j, old)
	got := r.Failures
	// One that ended after: counted, once.
	late := &model.Task{ID: id + ".0.91", JobID: id, Revision: 2, State: task.Killed, Reason: string(task.ReasonHealthCheckFailed), Ended: r.Started.Add(2 * time.Second)}
	ts.recountFailures(j, append(old, late))
	ts.recountFailures(j, append(old, late))
	got2 := r.Failures
	ts.mu.Unlock()
	if got != 0 || got2 != 1 {
		t.Errorf("recounted %d then %d failures, want 0 (before the reset) then 1", got, got2)
	}
}
