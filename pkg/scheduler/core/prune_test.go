package core

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/titus-agent/titus-agent/pkg/apierr"
	"github.com/titus-agent/titus-agent/pkg/scheduler/model"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// runBatch submits a batch job of n tasks and runs it to completion.
func (ts *testScheduler) runBatch(sess *Session, n uint32) string {
	ts.t.Helper()
	id := ts.submit(testSpec(&model.BatchJob{Size: n}, 100))
	placed := ts.place()
	ts.report("a", sess, task.Running, placed...)
	ts.report("a", sess, task.Finished, placed...)
	if s := ts.job(id).State; s != model.JobFinished {
		ts.t.Fatalf("job %s: %v, want finished", id, s)
	}
	return id
}

func (ts *testScheduler) held() []string {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	var ids []string
	for id := range ts.jobs {
		ids = append(ids, id)
	}
	return ids
}

func (ts *testScheduler) wantPruned(id string) {
	ts.t.Helper()
	_, err := ts.Job(id)
	if status.Code(apierr.ToGRPC(err)) != codes.NotFound || !strings.Contains(err.Error(), "ended jobs are kept") {
		ts.t.Fatalf("get pruned job %s: err = %v, want NotFound saying ended jobs are removed", id, err)
	}
	if n := ts.keys("jobs/" + id); n != 0 {
		ts.t.Fatalf("job %s: record still in etcd", id)
	}
	if n := ts.keys("tasks/" + id + "/"); n != 0 {
		ts.t.Fatalf("job %s: %d task records still in etcd", id, n)
	}
	if _, err := ts.Task(ts.ctx, model.TaskID(id, 0, 1)); status.Code(apierr.ToGRPC(err)) != codes.NotFound {
		ts.t.Fatalf("get task of a pruned job: err = %v, want NotFound", err)
	}
}

// TestEndedJobsArePrunedAfterTheRetention: a finished job is kept for the
// retention and then removed with its tasks from memory and etcd; a killed
// job whose task the agent has not confirmed is kept until it has, and
// then for the retention from the confirmation (the chaos soak's observer
// lost the final states of killed jobs pruned the moment their last task
// ended); active jobs are never pruned.
func TestEndedJobsArePrunedAfterTheRetention(t *testing.T) {
	ts := newTestScheduler(t, Config{FinishedJobRetention: time.Hour, MaxFinishedJobs: 100})
	sess := ts.connect("a", 8000)
	finished := ts.runBatch(sess, 2)
	killed := ts.submit(testSpec(&model.ServiceJob{Desired: 1, Max: 1}, 100))
	placed := ts.place()
	ts.report("a", sess, task.Running, placed...)
	if _, err := ts.KillJob(ts.ctx, killed); err != nil {
		t.Fatal(err)
	}
	active := ts.submit(testSpec(&model.ServiceJob{Desired: 1, Max: 1}, 100))
	ts.place()

	ts.prune(ts.ctx)
	if diff := cmp.Diff(sorted([]string{active, finished, killed}), sorted(ts.held())); diff != "" {
		t.Fatalf("within the retention (-want +got):\n%s", diff)
	}
	if n := ts.keys("tasks/" + finished + "/"); n != 2 {
		t.Fatalf("finished job's tasks in etcd = %d, want 2", n)
	}

	ts.now = time.Now().Add(time.Hour + time.Minute)
	ts.prune(ts.ctx)
	if diff := cmp.Diff(sorted([]string{active, killed}), sorted(ts.held())); diff != "" {
		t.Fatalf("past the retention, killed task not confirmed (-want +got):\n%s", diff)
	}
	ts.wantPruned(finished)

	// The kill is confirmed past the job's retention: the task's final
	// state is kept for the retention from then, to be read.
	ts.report("a", sess, task.Killed, placed...)
	ts.prune(ts.ctx)
	if diff := cmp.Diff(sorted([]string{active, killed}), sorted(ts.held())); diff != "" {
		t.Fatalf("just after the kill was confirmed (-want +got):\n%s", diff)
	}
	if n := ts.keys("tasks/" + killed + "/"); n != 1 {
		t.Fatalf("killed job's tasks in etcd = %d, want 1", n)
	}
	ts.now = ts.now.Add(time.Hour + time.Minute)
	ts.prune(ts.ctx)
	if diff := cmp.Diff([]string{active}, ts.held()); diff != "" {
		t.Fatalf("a retention after the kill was confirmed (-want +got):\n%s", diff)
	}
	ts.wantPruned(killed)
	if got := ts.Stats().PrunedJobs; got != 2 {
		t.Fatalf("PrunedJobs = %d, want 2", got)
	}
	if n := ts.keys("jobs/"); n != 1 {
		t.Fatalf("job records in etcd = %d, want 1 (the active job)", n)
	}
}

// TestEndedJobsAreBoundedInNumber: past MaxFinishedJobs the oldest ended
// jobs go first, however recent; a reload from etcd brings none back.
func TestEndedJobsAreBoundedInNumber(t *testing.T) {
	ts := newTestScheduler(t, Config{MaxFinishedJobs: 3})
	sess := ts.connect("a", 8000)
	var ids []string
	for range 10 {
		ids = append(ids, ts.runBatch(sess, 1))
		ts.prune(ts.ctx)
	}
	if diff := cmp.Diff(sorted(ids[7:]), sorted(ts.held())); diff != "" {
		t.Fatalf("kept (-want +got):\n%s", diff)
	}
	for _, id := range ids[:7] {
		ts.wantPruned(id)
	}
	if j, t1 := ts.keys("jobs/"), ts.keys("tasks/"); j != 3 || t1 != 3 {
		t.Fatalf("etcd holds %d job and %d task records, want 3 and 3", j, t1)
	}
	if err := ts.Load(ts.ctx, ts.st, nil); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(sorted(ids[7:]), sorted(ts.held())); diff != "" {
		t.Fatalf("after a reload (-want +got):\n%s", diff)
	}
}

// TestPruneRetriesAFailedDelete: a job whose etcd delete fails is gone
// from memory at once and deleted from etcd on a later round.
func TestPruneRetriesAFailedDelete(t *testing.T) {
	ts := newTestScheduler(t, Config{MaxFinishedJobs: 1})
	sess := ts.connect("a", 8000)
	first := ts.runBatch(sess, 1)
	ts.runBatch(sess, 1)
	ts.Flush(ts.ctx)
	g := ts.kv.failing(errors.New("etcd unavailable"))
	ts.prune(ts.ctx)
	if n := ts.keys("jobs/" + first); n != 1 {
		t.Fatalf("record deleted although the delete failed")
	}
	if _, err := ts.Job(first); status.Code(apierr.ToGRPC(err)) != codes.NotFound {
		t.Fatalf("pruned job still served from memory: %v", err)
	}
	ts.kv.open(g, nil)
	ts.prune(ts.ctx)
	ts.wantPruned(first)
}

func sorted(s []string) []string { return slices.Sorted(slices.Values(s)) }

// TestLostAgentsAreForgottenAfterTheRetention: an agent lost with no task
// left is removed from memory and etcd once the retention has passed; a
// connected one stays.
func TestLostAgentsAreForgottenAfterTheRetention(t *testing.T) {
	ts := newTestScheduler(t, Config{FinishedJobRetention: time.Hour})
	ts.connect("gone", 8000)
	ts.connect("here", 8000)
	ts.Flush(ts.ctx)
	ts.mu.Lock()
	ts.agentLost(ts.agents["gone"], time.Now())
	ts.mu.Unlock()
	ts.prune(ts.ctx)
	if n := ts.keys("agents/"); n != 2 {
		t.Fatalf("agent records within the retention = %d, want 2", n)
	}
	ts.now = time.Now().Add(time.Hour + time.Minute)
	ts.prune(ts.ctx)
	var ids []string
	for _, a := range ts.Agents() {
		ids = append(ids, a.ID)
	}
	if diff := cmp.Diff([]string{"here"}, ids); diff != "" {
		t.Fatalf("agents (-want +got):\n%s", diff)
	}
	if n := ts.keys("agents/gone"); n != 0 {
		t.Fatalf("lost agent's record still in etcd")
	}
}
