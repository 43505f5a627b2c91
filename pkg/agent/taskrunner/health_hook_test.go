package taskrunner

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/titus-agent/titus-agent/pkg/runtime"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// fakeChecker records starts and stops and hands the test the report
// function of the task it checks.
type fakeChecker struct {
	rec     *recorder
	mu      sync.Mutex
	report  func(task.Health, bool)
	last    *task.Health
	started chan struct{}
}

func newFakeChecker(rec *recorder) *fakeChecker {
	return &fakeChecker{rec: rec, started: make(chan struct{}, 10)}
}

func (f *fakeChecker) Start(ctx context.Context, spec *task.Spec, n *task.NetworkAttachment, started time.Time, last *task.Health, report func(task.Health, bool)) error {
	ns := ""
	if n != nil {
		ns = " " + n.NetNSPath
	}
	f.rec.add("health start " + spec.ID + ns)
	f.mu.Lock()
	f.report, f.last = report, last
	f.mu.Unlock()
	f.started <- struct{}{}
	return nil
}

func (f *fakeChecker) Stop(id string) { f.rec.add("health stop " + id) }

func (f *fakeChecker) send(h task.Health, changed bool) {
	f.mu.Lock()
	rep := f.report
	f.mu.Unlock()
	rep(h, changed)
}

func TestHealthHook(t *testing.T) {
	rec := &recorder{}
	fc := newFakeChecker(rec)
	h := &HealthHook{Checker: fc}
	ctx := context.Background()
	res := &Resources{Network: &task.NetworkAttachment{NetNSPath: "/ns/t1"}}
	// No check: nothing starts.
	if err := h.Poststart(ctx, &PoststartRequest{Spec: &task.Spec{ID: "t0"}, Resources: res}); err != nil {
		t.Fatal(err)
	}
	spec := &task.Spec{ID: "t1", HealthCheck: &task.HealthCheck{Kind: task.HealthTCP, Port: 80}}
	if err := h.Poststart(ctx, &PoststartRequest{Spec: spec, Resources: res, ReportHealth: func(task.Health, bool) {}}); err != nil {
		t.Fatal(err)
	}
	// Teardown is idempotent.
	h.Stop(ctx, &StopRequest{Spec: spec, Resources: res})
	h.Stop(ctx, &StopRequest{Spec: spec, Resources: res})
	if diff := cmp.Diff([]string{"health start t1 /ns/t1", "health stop t1", "health stop t1"}, rec.get()); diff != "" {
		t.Fatalf("ops (-want +got):\n%s", diff)
	}
}

func healthRunner(t *testing.T, rec *recorder, fc *fakeChecker, w *fakeWaiter) (*Runner, *fakeStore, *eventLog) {
	t.Helper()
	spec := task.Spec{ID: "t1", HealthCheck: &task.HealthCheck{Kind: task.HealthExec, Command: []string{"check"}}}
	spec.Normalize()
	st := &fakeStore{}
	ev := &eventLog{}
	hooks := [][]PrestartHook{{&fakeHook{name: "container", rec: rec, pid: 7}}}
	r := New(Config{Stages: hooks, Runtime: w, Store: st, Logger: quiet, Notify: ev.add, Poststart: []PoststartHook{&HealthHook{Checker: fc}}}, &Record{Spec: spec})
	return r, st, ev
}

type eventLog struct {
	mu  sync.Mutex
	evs []task.Event
}

func (e *eventLog) add(ev task.Event) {
	e.mu.Lock()
	e.evs = append(e.evs, ev)
	e.mu.Unlock()
}

func (e *eventLog) health() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for _, ev := range e.evs {
		if ev.HealthChanged {
			out = append(out, ev.Status.Health.Status.String()+": "+ev.Status.Health.Output)
		}
	}
	return out
}

// The runner starts the checks once the task runs, records a status
// change durably and publishes it, keeps other results in memory only,
// stops the checks when the task is killed (ignoring late reports), and
// again at teardown.
func TestRunnerHealth(t *testing.T) {
	rec := &recorder{}
	fc := newFakeChecker(rec)
	w := &fakeWaiter{rec: rec, exit: make(chan runtime.ExitStatus, 1), exitOn: 15}
	r, st, ev := healthRunner(t, rec, fc, w)
	go r.Run(context.Background())
	<-fc.started
	t0 := time.Unix(100, 0).UTC()
	fc.send(task.Health{Status: task.HealthStarting, Since: t0}, true)
	saves := func() int { st.mu.Lock(); defer st.mu.Unlock(); return st.n }
	before := saves()
	fc.send(task.Health{Status: task.HealthStarting, Since: t0, Checked: t0, Output: "not yet"}, false)
	if saves() != before {
		t.Fatal("an unchanged status was written to disk")
	}
	if got := r.View().Status.Health; got == nil || got.Output != "not yet" {
		t.Fatalf("latest result not in the view: %+v", got)
	}
	fc.send(task.Health{Status: task.HealthUnhealthy, Since: t0, Checked: t0, Output: "exit code 1"}, true)
	st.mu.Lock()
	saved := st.last.Status.Health
	st.mu.Unlock()
	if saved == nil || saved.Status != task.HealthUnhealthy {
		t.Fatalf("status change not on disk: %+v", saved)
	}
	r.Kill(time.Minute, task.ReasonKilledByUser, "")
	waitDone(t, r)
	fc.send(task.Health{Status: task.HealthHealthy, Since: t0}, true) // late: ignored
	if got := r.View().Status.Health.Status; got != task.HealthUnhealthy {
		t.Fatalf("health after the end = %s, want the last one while running", got)
	}
	if diff := cmp.Diff([]string{"Starting: ", "Unhealthy: exit code 1"}, ev.health()); diff != "" {
		t.Fatalf("health events (-want +got):\n%s", diff)
	}
	want := []string{"prestart container", "health start t1", "health stop t1", "kill terminated", "health stop t1", "stop container"}
	if diff := cmp.Diff(want, rec.get()); diff != "" {
		t.Fatalf("ops (-want +got):\n%s", diff)
	}
}

// An agent shutdown leaves the checks' state on disk; the next agent
// resumes them from the recorded health.
func TestRunnerHealthResumesAfterRestart(t *testing.T) {
	rec := &recorder{}
	fc := newFakeChecker(rec)
	w := &fakeWaiter{rec: rec, exit: make(chan runtime.ExitStatus, 1)}
	r, st, _ := healthRunner(t, rec, fc, w)
	ctx, cancel := context.WithCancel(context.Background())
	go r.Run(ctx)
	<-fc.started
	fc.send(task.Health{Status: task.HealthHealthy, Since: time.Unix(100, 0).UTC()}, true)
	cancel()
	waitDone(t, r)
	st.mu.Lock()
	prev := st.last
	st.mu.Unlock()
	if prev.Status.Health == nil || prev.Status.Health.Status != task.HealthHealthy {
		t.Fatalf("recorded health %+v", prev.Status.Health)
	}

	r2 := New(Config{Stages: r.cfg.Stages, Runtime: w, Store: st, Logger: quiet, Poststart: r.cfg.Poststart}, &prev)
	go r2.Restore(context.Background(), nil)
	<-fc.started
	fc.mu.Lock()
	last := fc.last
	fc.mu.Unlock()
	if last == nil || last.Status != task.HealthHealthy {
		t.Fatalf("checks resumed from %+v, want the recorded Healthy", last)
	}
	w.exit <- runtime.ExitStatus{Code: 0}
	waitDone(t, r2)
	want := []string{"prestart container", "health start t1", "health start t1", "health stop t1", "stop container"}
	if diff := cmp.Diff(want, rec.get()); diff != "" {
		t.Fatalf("ops (-want +got):\n%s", diff)
	}
}
