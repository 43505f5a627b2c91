package core

import (
	"errors"
	"strings"
	"testing"

	"github.com/titus-agent/titus-agent/pkg/scheduler/model"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// TestKillWritesWithoutTheLock: while a kill's etcd write is in flight,
// heartbeats, placement and reads go on (s.mu is free) and the job is not
// yet killed; once the write lands the job is killed and its tasks get a
// kill.
func TestKillWritesWithoutTheLock(t *testing.T) {
	ts := newTestScheduler(t, Config{})
	sess := ts.connect("a", 8000)
	id := ts.submit(testSpec(&model.ServiceJob{Desired: 2, Max: 2}, 1000))
	other := ts.submit(testSpec(&model.BatchJob{Size: 1}, 1000))
	placed := ts.place()
	if len(placed) != 3 {
		t.Fatalf("placed %v, want 3 tasks", placed)
	}
	ts.report("a", sess, task.Running, placed...)

	g := ts.kv.hold()
	killed := make(chan *model.Job, 1)
	go func() {
		j, err := ts.KillJob(ts.ctx, id)
		if err != nil {
			t.Errorf("kill: %v", err)
		}
		killed <- j
	}()
	g.wait(t)
	within(t, "heartbeat during the kill's write", func() {
		ts.report("a", sess, task.Running, placed...)
	})
	within(t, "placement planning during the kill's write", func() {
		ts.planRound()
	})
	within(t, "get job during the kill's write", func() {
		j, err := ts.Job(id)
		if err != nil || j.State != model.JobAccepted {
			t.Errorf("job during the write = %v, %v; want still accepted", stateOf(j), err)
		}
	})
	ts.kv.open(g, nil)
	j := <-killed
	if stateOf(j) != model.JobKilled {
		t.Fatalf("after the write: state %v, want killed", stateOf(j))
	}
	if got := stateOf(ts.stored(id)); got != model.JobKilled {
		t.Fatalf("etcd: state %v, want killed", got)
	}
	kills := 0
	for len(sess.out) > 0 {
		if k := (<-sess.out).Kill; k != nil {
			for _, tid := range k {
				if !strings.HasPrefix(tid, id+".") {
					t.Errorf("kill sent for %s, not a task of the killed job", tid)
				}
				kills++
			}
		}
	}
	if kills != 2 {
		t.Fatalf("kills sent = %d, want 2", kills)
	}
	if s := ts.job(other).State; s != model.JobAccepted {
		t.Fatalf("the other job: %v", s)
	}
}

// TestKillRacingTheJobsOwnEnd: a batch job that finishes while its kill
// is being written stays finished, in memory and (after a flush) in etcd.
func TestKillRacingTheJobsOwnEnd(t *testing.T) {
	ts := newTestScheduler(t, Config{})
	sess := ts.connect("a", 8000)
	id := ts.submit(testSpec(&model.BatchJob{Size: 1}, 1000))
	placed := ts.place()
	ts.report("a", sess, task.Running, placed...)

	g := ts.kv.hold()
	done := make(chan *model.Job, 1)
	go func() {
		j, err := ts.KillJob(ts.ctx, id)
		if err != nil {
			t.Errorf("kill: %v", err)
		}
		done <- j
	}()
	g.wait(t)
	ts.report("a", sess, task.Finished, placed...)
	if s := ts.job(id).State; s != model.JobFinished {
		t.Fatalf("job after its task finished: %v", s)
	}
	ts.kv.open(g, nil)
	if s := stateOf((<-done)); s != model.JobFinished {
		t.Fatalf("kill returned %v, want the job's own end (finished)", s)
	}
	if s := ts.job(id).State; s != model.JobFinished {
		t.Fatalf("job after the kill: %v, want finished", s)
	}
	ts.Flush(ts.ctx)
	if s := stateOf(ts.stored(id)); s != model.JobFinished {
		t.Fatalf("etcd after flush: %v, want finished", s)
	}
}

// TestScalesOfOneJobApplyInOrder: a scale waits for the one in flight on
// the same job; the last one wins in memory and in etcd, and a scale is
// not visible before its write lands.
func TestScalesOfOneJobApplyInOrder(t *testing.T) {
	ts := newTestScheduler(t, Config{})
	ts.connect("a", 8000)
	id := ts.submit(testSpec(&model.ServiceJob{Min: 1, Desired: 1, Max: 4}, 500))
	g := ts.kv.hold()
	first, second := make(chan *model.Job, 1), make(chan *model.Job, 1)
	scale := func(desired uint32, out chan *model.Job) {
		j, err := ts.ScaleJob(ts.ctx, id, 1, desired, 4)
		if err != nil {
			t.Errorf("scale to %d: %v", desired, err)
		}
		out <- j
	}
	go scale(3, first)
	g.wait(t)
	go scale(2, second)
	if d := ts.job(id).Spec.Service.Desired; d != 1 {
		t.Fatalf("desired during the first write = %d, want 1 (not durable yet)", d)
	}
	ts.kv.open(g, nil)
	if d := (<-first).Spec.Service.Desired; d != 3 {
		t.Fatalf("first scale returned desired %d, want 3", d)
	}
	if d := (<-second).Spec.Service.Desired; d != 2 {
		t.Fatalf("second scale returned desired %d, want 2", d)
	}
	if d := ts.job(id).Spec.Service.Desired; d != 2 {
		t.Fatalf("desired in memory = %d, want 2 (the later scale)", d)
	}
	if d := ts.stored(id).Spec.Service.Desired; d != 2 {
		t.Fatalf("desired in etcd = %d, want 2 (the later scale)", d)
	}
	if n := len(ts.place()); n != 2 {
		t.Fatalf("placed %d, want 2", n)
	}
}

// TestScaleHoldsQuotaWhileWriting: a scale's larger footprint is held
// against a critical group's quota during its write (a submission cannot
// take it meanwhile) and released if the write fails.
func TestScaleHoldsQuotaWhileWriting(t *testing.T) {
	ts := newTestScheduler(t, Config{Groups: []model.Group{{Name: "crit", Tier: model.TierCritical, CPUMillicores: 4000}}})
	spec := func(kind any) model.JobSpec {
		s := testSpec(kind, 1000)
		s.CapacityGroup = "crit"
		return s
	}
	id := ts.submit(spec(&model.ServiceJob{Desired: 1, Max: 1}))
	g := ts.kv.hold()
	failed := make(chan error, 1)
	go func() {
		_, err := ts.ScaleJob(ts.ctx, id, 0, 4, 4)
		failed <- err
	}()
	g.wait(t)
	_, err := ts.Submit(ts.ctx, spec(&model.BatchJob{Size: 1}))
	if !strings.Contains(err.Error(), "quota") {
		t.Fatalf("submit while the scale is written: err = %v, want quota exceeded", err)
	}
	ts.kv.open(g, errors.New("etcd unavailable"))
	if err := <-failed; err == nil {
		t.Fatal("scale succeeded although its write failed")
	}
	ts.mu.Lock()
	cg := ts.gstate["crit"]
	reserved, pending, total := cg.reserved.CPU, cg.pending, ts.q.pendingTotal
	ts.mu.Unlock()
	if reserved != 1000 || pending != 1 || total != 1 {
		t.Fatalf("after the failed scale: reserved %dm pending %d/%d, want 1000m 1/1", reserved, pending, total)
	}
	if d := ts.job(id).Spec.Service.Max; d != 1 {
		t.Fatalf("max after the failed scale = %d, want 1", d)
	}
	ts.submit(spec(&model.BatchJob{Size: 3})) // the quota it held is free again
}

// TestUpdateHoldsQuotaWhileWriting is the attack on a critical group's
// quota through updates: two updates that each fit alone, written at the
// same time, must not both be admitted. The first holds the footprint it
// grows into during its write; a failed write gives it back.
func TestUpdateHoldsQuotaWhileWriting(t *testing.T) {
	ts := newTestScheduler(t, Config{Groups: []model.Group{{Name: "crit", Tier: model.TierCritical, CPUMillicores: 4000}}})
	spec := func(cpu int64) model.JobSpec {
		s := testSpec(&model.ServiceJob{Desired: 1, Max: 1}, cpu)
		s.CapacityGroup = "crit"
		return s
	}
	reserved := func() int64 {
		ts.mu.Lock()
		defer ts.mu.Unlock()
		return ts.gstate["crit"].reserved.CPU
	}
	a, b := ts.submit(spec(1000)), ts.submit(spec(1000))
	update := func(id string, cpu int64, out chan error) {
		_, err := ts.UpdateJob(ts.ctx, id, spec(cpu))
		out <- err
	}

	g := ts.kv.hold()
	first := make(chan error, 1)
	go update(a, 2500, first)
	g.wait(t)
	second := make(chan error, 1)
	go update(b, 2500, second)
	select {
	case err := <-second:
		if !errors.Is(err, model.ErrQuotaExceeded) {
			t.Fatalf("second update while the first is written: err = %v, want quota exceeded (2500m + 2500m > 4000m)", err)
		}
	case <-g.entered:
		ts.kv.open(g, nil)
		<-first
		t.Fatalf("second update was admitted and written: 2500m + 2500m exceed the 4000m quota (second: %v)", <-second)
	}
	ts.kv.open(g, nil)
	if err := <-first; err != nil {
		t.Fatalf("first update: %v", err)
	}
	if r := reserved(); r != 3500 {
		t.Fatalf("reserved after the first update = %dm, want 3500m (2500m + 1000m)", r)
	}

	g = ts.kv.hold()
	go update(b, 1500, first)
	g.wait(t)
	if r := reserved(); r != 4000 {
		t.Fatalf("reserved while an update to 1500m is written = %dm, want it held: 4000m", r)
	}
	ts.kv.open(g, errors.New("etcd unavailable"))
	if err := <-first; err == nil {
		t.Fatal("update succeeded although its write failed")
	}
	if r := reserved(); r != 3500 {
		t.Fatalf("reserved after the failed update = %dm, want 3500m again", r)
	}
}

// TestLiveJobCaps: an application may not hold more live jobs than its
// cap (a service at desired 0 counts), others still may; the total cap
// holds across applications; an ended job frees its place.
func TestLiveJobCaps(t *testing.T) {
	ts := newTestScheduler(t, Config{MaxLiveJobsPerApplication: 2, MaxLiveJobs: 3})
	a := func() model.JobSpec { return testSpec(&model.ServiceJob{Desired: 0, Max: 1}, 100) }
	first := ts.submit(a())
	ts.submit(a())
	_, err := ts.Submit(ts.ctx, a())
	if !errors.Is(err, model.ErrTooManyJobs) || !strings.Contains(err.Error(), `application "t" has 2 live jobs, limit 2`) {
		t.Fatalf("third job of t: %v, want too many live jobs", err)
	}
	other := testSpec(&model.BatchJob{Size: 1}, 100)
	other.Application = "u"
	ts.submit(other)
	_, err = ts.Submit(ts.ctx, other)
	if !errors.Is(err, model.ErrTooManyJobs) || !strings.Contains(err.Error(), "3 live jobs, limit 3") {
		t.Fatalf("fourth job in all: %v, want the total cap", err)
	}
	if _, err := ts.KillJob(ts.ctx, first); err != nil {
		t.Fatal(err)
	}
	ts.submit(a())
	// A new leader counts what it loads.
	if err := ts.Flush(ts.ctx); err != nil {
		t.Fatal(err)
	}
	c2, err := New(Config{MaxLiveJobsPerApplication: 2, MaxLiveJobs: 3}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c2.Load(ts.ctx, ts.st, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := c2.Submit(ts.ctx, a()); !errors.Is(err, model.ErrTooManyJobs) {
		t.Fatalf("after a reload, a third live job of t: %v, want too many live jobs", err)
	}
}

func TestLabelLimits(t *testing.T) {
	s := testSpec(&model.BatchJob{Size: 1}, 100)
	s.Labels = map[string]string{strings.Repeat("k", MaxLabelKeyLen+1): "v", "ok": strings.Repeat("v", MaxLabelValueLen+1)}
	_, err := ValidateJob(s)
	if err == nil || !strings.Contains(err.Error(), "must be 1 to 128 bytes") || !strings.Contains(err.Error(), "labels.ok: value must be at most 1024 bytes") {
		t.Fatalf("ValidateJob = %v, want both label limits", err)
	}
	s.Labels = map[string]string{strings.Repeat("k", MaxLabelKeyLen): strings.Repeat("v", MaxLabelValueLen)}
	if _, err := ValidateJob(s); err != nil {
		t.Fatalf("labels at the limits: %v", err)
	}
}
