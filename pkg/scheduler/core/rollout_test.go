package core

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/titus-agent/titus-agent/pkg/scheduler/model"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// fleet plays the agents of a test scheduler: every launch it is sent
// runs (and reports Healthy when its spec has a check, unless unhealthy
// says otherwise), every kill ends Killed; a failing image crashes.
type fleet struct {
	ts       *testScheduler
	sessions map[string]*Session
	// failImage crashes tasks of this image; sickImage leaves them Unhealthy.
	failImage, sickImage string
	launched             map[string]int // launches per task id
	byImage              map[string]int // launches per image
	afterPlace           func()
	revisionOf           map[string]uint64
}

func newFleet(ts *testScheduler) *fleet {
	return &fleet{ts: ts, sessions: map[string]*Session{}, launched: map[string]int{}, byImage: map[string]int{}, revisionOf: map[string]uint64{}}
}

// connect registers an agent with labels.
func (f *fleet) connect(id string, cpu int64, labels map[string]string) {
	sess := newSession()
	f.ts.mu.Lock()
	sess.agent = f.ts.register(model.Registration{InstanceID: id, AZ: "az-1", Labels: labels,
		Capacity: model.Capacity{Resources: model.Resources{CPU: cpu, Mem: 65536}}}, sess, time.Now())
	f.ts.mu.Unlock()
	f.sessions[id] = sess
}

// round places, delivers every message the agents were sent and steps
// the scheduler; it returns how many messages were delivered.
func (f *fleet) round() int {
	f.ts.place()
	if f.afterPlace != nil {
		f.afterPlace()
	}
	n := 0
	for _, sess := range f.sessions {
		for len(sess.out) > 0 {
			m := <-sess.out
			n++
			var up []model.TaskStatus
			for _, sp := range m.Launch {
				f.launched[sp.ID]++
				f.byImage[sp.Image]++
				st := model.TaskStatus{TaskID: sp.ID, State: task.Running}
				switch {
				case sp.Image == f.failImage:
					st = model.TaskStatus{TaskID: sp.ID, State: task.Failed, Reason: "Crashed", Message: "exit 1", ExitCode: 1}
				case sp.HealthCheck != nil && sp.Image == f.sickImage:
					st.Health = &task.Health{Status: task.HealthUnhealthy, Output: "connection refused"}
				case sp.HealthCheck != nil:
					st.Health = &task.Health{Status: task.HealthHealthy, OK: true}
				}
				up = append(up, st)
			}
			for _, tid := range m.Kill {
				up = append(up, model.TaskStatus{TaskID: tid, State: task.Killed})
			}
			if len(up) > 0 {
				f.ts.Updates(sess, up)
			}
		}
	}
	f.ts.step()
	return n
}

// step runs one full step of every service job at the test's clock.
func (ts *testScheduler) step() {
	ts.mu.Lock()
	ts.stepLocked(true, ts.clock())
	ts.mu.Unlock()
}

// serving counts the job's available tasks, by revision.
func (ts *testScheduler) serving(id string) (total int, byRev map[uint64]int) {
	ts.mu.RLock()
	defer ts.mu.RUnlock()
	byRev = map[uint64]int{}
	for _, t := range ts.tasks {
		if t.job.rec.ID == id && available(t) {
			total++
			byRev[t.rec.Revision]++
		}
	}
	return total, byRev
}

func serviceSpec(desired uint32, update *model.UpdateStrategy, budget string) model.JobSpec {
	s := testSpec(&model.ServiceJob{Desired: desired, Max: desired, Update: update}, 100)
	if budget != "" {
		s.Service.Budget = &model.DisruptionBudget{MaxUnavailable: budget}
	}
	return s
}

func withImage(s model.JobSpec, image string, check bool) model.JobSpec {
	t := *s.Task
	t.Image = image
	if check {
		t.HealthCheck = &task.HealthCheck{Kind: task.HealthTCP, Port: 80, Interval: time.Second, Timeout: time.Second, HealthyThreshold: 1, UnhealthyThreshold: 1}
	}
	s.Task = &t
	return s
}

// converge runs rounds until nothing moves, checking inv after each.
func (f *fleet) converge(t *testing.T, inv func()) {
	t.Helper()
	idle := 0
	for i := 0; i < 500; i++ {
		if f.round() == 0 {
			idle++
		} else {
			idle = 0
		}
		if inv != nil {
			inv()
		}
		if idle == 3 {
			return
		}
	}
	t.Fatal("did not converge in 500 rounds")
}

func (f *fleet) launchedTwice(t *testing.T) {
	t.Helper()
	for id, n := range f.launched {
		if n > 1 {
			t.Errorf("task %s launched %d times", id, n)
		}
	}
}

// TestRollingUpdateKeepsAvailability: a 6-task service updated with
// maxUnavailable 1 and no surge never has fewer than 5 tasks serving, and
// ends with 6 tasks of the new revision.
func TestRollingUpdateKeepsAvailability(t *testing.T) {
	for _, tc := range []struct {
		name     string
		strategy *model.UpdateStrategy
		floor    int
	}{
		{"maxUnavailable 1", &model.UpdateStrategy{MaxSurge: "0", MaxUnavailable: "1"}, 5},
		{"maxSurge 2, none unavailable", &model.UpdateStrategy{MaxSurge: "2", MaxUnavailable: "0"}, 6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := newTestScheduler(t, Config{})
			f := newFleet(ts)
			for i := range 3 {
				f.connect(fmt.Sprintf("h%d", i), 1000, nil)
			}
			spec := withImage(serviceSpec(6, tc.strategy, ""), "registry.example/x:1", true)
			id := ts.submit(spec)
			f.converge(t, nil)
			if n, _ := ts.serving(id); n != 6 {
				t.Fatalf("serving before the update: %d, want 6", n)
			}
			j, err := ts.UpdateJob(ts.ctx, id, withImage(spec, "registry.example/x:2", true))
			if err != nil {
				t.Fatal(err)
			}
			if j.Revision != 2 || j.Rollout.State != model.RolloutProgressing {
				t.Fatalf("after update: revision %d rollout %+v", j.Revision, j.Rollout)
			}
			low := 6
			f.converge(t, func() {
				if n, _ := ts.serving(id); n < low {
					low = n
				}
			})
			if low < tc.floor {
				t.Errorf("serving dropped to %d during the rollout, want at least %d", low, tc.floor)
			}
			n, byRev := ts.serving(id)
			if n != 6 || byRev[2] != 6 {
				t.Errorf("after the rollout: %d serving, by revision %v; want 6 of revision 2", n, byRev)
			}
			if r := ts.job(id).Rollout; r.State != model.RolloutComplete || r.Updated != 6 || r.Old != 0 {
				t.Errorf("rollout = %+v, want complete with 6 updated", r)
			}
			if r := ts.stored(id); r.Revision != 2 || r.Rollout == nil || r.Rollout.To != 2 {
				t.Errorf("etcd: revision %d rollout %+v", r.Revision, r.Rollout)
			}
			f.launchedTwice(t)
		})
	}
}

// TestRolloutRollsBackCrashLoop: new tasks that crash roll the update
// back; the old revision keeps serving throughout.
func TestRolloutRollsBackCrashLoop(t *testing.T) {
	ts := newTestScheduler(t, Config{CrashLoopBase: time.Nanosecond, CrashLoopCap: time.Nanosecond})
	f := newFleet(ts)
	f.connect("h0", 4000, nil)
	spec := serviceSpec(4, &model.UpdateStrategy{MaxSurge: "1", MaxUnavailable: "0"}, "")
	spec.Service.Retry = &model.RetryPolicy{Kind: model.RetryImmediate}
	spec = withImage(spec, "registry.example/x:1", false)
	id := ts.submit(spec)
	f.converge(t, nil)
	f.failImage = "registry.example/x:bad"
	if _, err := ts.UpdateJob(ts.ctx, id, withImage(spec, "registry.example/x:bad", false)); err != nil {
		t.Fatal(err)
	}
	f.converge(t, func() {
		if n, _ := ts.serving(id); n < 4 {
			t.Fatalf("serving dropped to %d with maxUnavailable 0", n)
		}
	})
	j := ts.job(id)
	if j.Revision != 1 || j.Rollout.State != model.RolloutRolledBack || j.Spec.Task.Image != "registry.example/x:1" {
		t.Fatalf("after the failed rollout: revision %d rollout %+v image %s", j.Revision, j.Rollout, j.Spec.Task.Image)
	}
	if !strings.Contains(j.Rollout.Reason, "consecutive failures") || !strings.Contains(j.Rollout.Reason, "Crashed") {
		t.Errorf("reason %q does not say why", j.Rollout.Reason)
	}
	if n, byRev := ts.serving(id); n != 4 || byRev[1] != 4 {
		t.Errorf("serving %d by revision %v, want 4 of revision 1", n, byRev)
	}
}

// TestRolloutRollsBackUnhealthy: new tasks that run but stay Unhealthy
// past the progress deadline roll the update back.
func TestRolloutRollsBackUnhealthy(t *testing.T) {
	ts := newTestScheduler(t, Config{})
	f := newFleet(ts)
	f.connect("h0", 4000, nil)
	spec := withImage(serviceSpec(3, &model.UpdateStrategy{MaxSurge: "1", MaxUnavailable: "0", ProgressDeadlineSeconds: 60}, ""), "registry.example/x:1", true)
	spec.Service.UnhealthyReplaceAfterSeconds = 3600 // kept Unhealthy, not replaced
	id := ts.submit(spec)
	f.converge(t, nil)
	f.sickImage = "registry.example/x:sick"
	if _, err := ts.UpdateJob(ts.ctx, id, withImage(spec, "registry.example/x:sick", true)); err != nil {
		t.Fatal(err)
	}
	f.converge(t, nil)
	if r := ts.job(id).Rollout; r.State != model.RolloutProgressing {
		t.Fatalf("before the deadline: %+v, want still progressing", r)
	}
	ts.now = time.Now().Add(61 * time.Second)
	f.converge(t, nil)
	j := ts.job(id)
	if j.Revision != 1 || j.Rollout.State != model.RolloutRolledBack || !strings.Contains(j.Rollout.Reason, "Unhealthy: connection refused") {
		t.Fatalf("after the deadline: revision %d rollout %+v", j.Revision, j.Rollout)
	}
	if n, byRev := ts.serving(id); n != 3 || byRev[1] != 3 {
		t.Errorf("serving %d by revision %v, want 3 of revision 1", n, byRev)
	}
}

// TestRolloutPauseResumeUndo: a paused rollout replaces nothing more; a
// resumed one finishes; undo goes back to the previous revision.
func TestRolloutPauseResumeUndo(t *testing.T) {
	ts := newTestScheduler(t, Config{})
	f := newFleet(ts)
	f.connect("h0", 4000, nil)
	spec := withImage(serviceSpec(4, &model.UpdateStrategy{MaxSurge: "0", MaxUnavailable: "1"}, ""), "registry.example/x:1", false)
	id := ts.submit(spec)
	f.converge(t, nil)
	if _, err := ts.UpdateJob(ts.ctx, id, withImage(spec, "registry.example/x:2", false)); err != nil {
		t.Fatal(err)
	}
	if _, err := ts.RolloutJob(ts.ctx, id, RolloutPause); err != nil {
		t.Fatal(err)
	}
	f.converge(t, nil)
	if _, byRev := ts.serving(id); byRev[1] != 4 {
		t.Fatalf("paused before any step: by revision %v, want 4 of revision 1", byRev)
	}
	if _, err := ts.RolloutJob(ts.ctx, id, RolloutPause); err == nil {
		t.Error("pause of a paused rollout: no error")
	}
	if _, err := ts.RolloutJob(ts.ctx, id, RolloutResume); err != nil {
		t.Fatal(err)
	}
	f.converge(t, nil)
	if _, byRev := ts.serving(id); byRev[2] != 4 {
		t.Fatalf("resumed: by revision %v, want 4 of revision 2", byRev)
	}
	if _, err := ts.RolloutJob(ts.ctx, id, RolloutUndo); err != nil {
		t.Fatal(err)
	}
	f.converge(t, nil)
	j := ts.job(id)
	if _, byRev := ts.serving(id); byRev[1] != 4 || j.Revision != 1 || j.Rollout.State != model.RolloutComplete {
		t.Fatalf("undone: by revision %v, job revision %d rollout %+v", byRev, j.Revision, j.Rollout)
	}
	// The next update takes a revision never used.
	if j, err := ts.UpdateJob(ts.ctx, id, withImage(spec, "registry.example/x:3", false)); err != nil || j.Revision != 3 {
		t.Fatalf("update after undo: revision %v, %v; want 3", j.Revision, err)
	}
}

// TestDrainPacedByBudget: draining the hosts of one group moves a job's
// tasks one at a time (budget 1): a replacement starts elsewhere, the old
// task stops once it serves; the job never has fewer than desired
// serving, and the host says what blocks it.
func TestDrainPacedByBudget(t *testing.T) {
	ts := newTestScheduler(t, Config{})
	f := newFleet(ts)
	f.connect("blue", 2000, map[string]string{"group": "blue"})
	id := ts.submit(withImage(serviceSpec(4, nil, "1"), "registry.example/x:1", true))
	f.converge(t, nil)
	f.connect("green", 2000, map[string]string{"group": "green"})
	out, err := ts.Drain(model.AgentSelector{Labels: map[string]string{"group": "blue"}}, true)
	if err != nil {
		t.Fatal(err)
	}
	if out[0].DrainRemaining != 4 || !strings.Contains(out[0].DrainBlocked, "blocked by budget of job "+id+": 1/1 unavailable") {
		t.Errorf("drain view: remaining %d blocked %q", out[0].DrainRemaining, out[0].DrainBlocked)
	}
	maxRepl := 0
	f.afterPlace = func() {
		ts.mu.RLock()
		repl := 0
		for _, sl := range ts.jobs[id].slots {
			if sl.next != nil {
				repl++
			}
		}
		ts.mu.RUnlock()
		maxRepl = max(maxRepl, repl)
	}
	f.converge(t, func() {
		if n, _ := ts.serving(id); n < 4 {
			t.Fatalf("serving dropped to %d during the drain", n)
		}
	})
	if maxRepl != 1 {
		t.Errorf("at most %d replacements at once, want 1 (the budget)", maxRepl)
	}
	for _, a := range ts.Agents() {
		switch a.ID {
		case "blue":
			if a.Tasks != 0 || a.DrainRemaining != 0 || a.DrainBlocked != "" {
				t.Errorf("blue after the drain: %d tasks, remaining %d, blocked %q", a.Tasks, a.DrainRemaining, a.DrainBlocked)
			}
		case "green":
			if a.Tasks != 4 {
				t.Errorf("green has %d tasks, want 4", a.Tasks)
			}
		}
	}
	f.launchedTwice(t)
}

// TestRolloutContinuesOnANewLeader: a leader that takes over mid-rollout
// (with a replacement in flight) continues from the records: it launches
// nothing twice and finishes the rollout.
func TestRolloutContinuesOnANewLeader(t *testing.T) {
	ts := newTestScheduler(t, Config{})
	f := newFleet(ts)
	f.connect("h0", 4000, nil)
	spec := withImage(serviceSpec(4, &model.UpdateStrategy{MaxSurge: "1", MaxUnavailable: "0"}, ""), "registry.example/x:1", false)
	id := ts.submit(spec)
	f.converge(t, nil)
	if _, err := ts.UpdateJob(ts.ctx, id, withImage(spec, "registry.example/x:2", false)); err != nil {
		t.Fatal(err)
	}
	// One surge task placed and launched, its Running not yet seen.
	ts.step()
	placed := ts.place()
	if len(placed) != 1 {
		t.Fatalf("placed %v, want one surge task", placed)
	}
	if err := ts.Flush(ts.ctx); err != nil {
		t.Fatal(err)
	}
	// A new leader loads the same store.
	ts2 := &testScheduler{t: t, ctx: ts.ctx, cli: ts.cli, kv: ts.kv, prefix: ts.prefix, st: ts.st}
	c2, err := New(Config{}, ts.log)
	if err != nil {
		t.Fatal(err)
	}
	ts2.Core = c2
	if err := c2.Load(ts.ctx, ts.st, nil); err != nil {
		t.Fatal(err)
	}
	ts2.mu.RLock()
	var repl int
	for _, sl := range ts2.jobs[id].slots {
		if sl.next != nil {
			repl++
			if sl.next.rec.ID != placed[0] {
				t.Errorf("replacement %s, want %s", sl.next.rec.ID, placed[0])
			}
		}
	}
	ts2.mu.RUnlock()
	if repl != 1 {
		t.Fatalf("new leader sees %d replacements, want 1", repl)
	}
	// The agent reconnects to the new leader with what it runs.
	var statuses []model.TaskStatus
	ts.mu.RLock()
	for tid := range ts.tasks {
		statuses = append(statuses, model.TaskStatus{TaskID: tid, State: task.Running})
	}
	ts.mu.RUnlock()
	// Drain what the old leader sent: the surge launch.
	for len(f.sessions["h0"].out) > 0 {
		for _, sp := range (<-f.sessions["h0"].out).Launch {
			f.launched[sp.ID]++
		}
	}
	f2 := newFleet(ts2)
	f2.launched = f.launched
	sess := newSession()
	ts2.mu.Lock()
	sess.agent = ts2.register(model.Registration{InstanceID: "h0", AZ: "az-1", Capacity: model.Capacity{Resources: model.Resources{CPU: 4000, Mem: 65536}}, Tasks: statuses}, sess, time.Now())
	ts2.mu.Unlock()
	f2.sessions["h0"] = sess
	f2.converge(t, func() {
		if n, _ := ts2.serving(id); n < 4 {
			t.Fatalf("serving dropped to %d", n)
		}
	})
	if n, byRev := ts2.serving(id); n != 4 || byRev[2] != 4 {
		t.Errorf("after the failover: %d serving by revision %v, want 4 of revision 2", n, byRev)
	}
	if r := ts2.job(id).Rollout; r.State != model.RolloutComplete {
		t.Errorf("rollout %+v, want complete", r)
	}
	f2.launchedTwice(t)
}

// TestRolloutRollsBackHealthKills: new tasks the scheduler replaces for
// staying Unhealthy (HealthCheckFailed) count as failures of the new
// revision: the update rolls back and the old revision keeps serving.
func TestRolloutRollsBackHealthKills(t *testing.T) {
	ts := newTestScheduler(t, Config{CrashLoopBase: time.Nanosecond, CrashLoopCap: time.Nanosecond})
	f := newFleet(ts)
	f.connect("h0", 4000, nil)
	spec := serviceSpec(3, &model.UpdateStrategy{MaxSurge: "1", MaxUnavailable: "0"}, "")
	spec.Service.Retry = &model.RetryPolicy{Kind: model.RetryImmediate}
	spec = withImage(spec, "registry.example/x:1", true)
	id := ts.submit(spec)
	f.converge(t, nil)
	f.sickImage = "registry.example/x:sick"
	if _, err := ts.UpdateJob(ts.ctx, id, withImage(spec, "registry.example/x:sick", true)); err != nil {
		t.Fatal(err)
	}
	f.converge(t, func() {
		if n, _ := ts.serving(id); n < 3 {
			t.Fatalf("serving dropped to %d with maxUnavailable 0", n)
		}
	})
	j := ts.job(id)
	if j.Revision != 1 || j.Rollout.State != model.RolloutRolledBack || !strings.Contains(j.Rollout.Reason, string(task.ReasonHealthCheckFailed)) {
		t.Fatalf("revision %d rollout %+v", j.Revision, j.Rollout)
	}
}

// failover flushes ts and loads a new leader's core from its store, at
// clock now; agent h0 reconnects to it with every task ts knows Running
// (the surge launches ts sent are counted as launched).
func (f *fleet) failover(t *testing.T, now time.Time) *fleet {
	t.Helper()
	return f.failoverAt(t, now, nil, nil)
}

// failoverAfter is failover at the real clock, with lost run after the
// flush (to undo writes the dead leader would not have made) and extra
// statuses the agent reports beside its running tasks.
func (f *fleet) failoverAfter(t *testing.T, lost func(), extra []model.TaskStatus) *fleet {
	t.Helper()
	return f.failoverAt(t, time.Now(), lost, extra)
}

func (f *fleet) failoverAt(t *testing.T, now time.Time, lost func(), extra []model.TaskStatus) *fleet {
	t.Helper()
	ts := f.ts
	if err := ts.Flush(ts.ctx); err != nil {
		t.Fatal(err)
	}
	if lost != nil {
		lost()
	}
	ts2 := &testScheduler{t: t, ctx: ts.ctx, cli: ts.cli, kv: ts.kv, prefix: ts.prefix, st: ts.st, now: now}
	c2, err := New(Config{CrashLoopBase: time.Nanosecond, CrashLoopCap: time.Nanosecond}, ts.log)
	if err != nil {
		t.Fatal(err)
	}
	ts2.Core = c2
	c2.clock = func() time.Time { return ts2.now }
	if err := c2.Load(ts.ctx, ts.st, nil); err != nil {
		t.Fatal(err)
	}
	statuses := slices.Clone(extra)
	ts.mu.RLock()
	for tid, tk := range ts.tasks {
		if tk.rec.State == task.Running {
			statuses = append(statuses, model.TaskStatus{TaskID: tid, State: task.Running, Health: tk.rec.Health})
		}
	}
	ts.mu.RUnlock()
	for len(f.sessions["h0"].out) > 0 {
		<-f.sessions["h0"].out
	}
	f2 := newFleet(ts2)
	f2.launched, f2.byImage, f2.failImage, f2.sickImage = f.launched, f.byImage, f.failImage, f.sickImage
	sess := newSession()
	ts2.mu.Lock()
	sess.agent = ts2.register(model.Registration{InstanceID: "h0", AZ: "az-1", Capacity: model.Capacity{Resources: model.Resources{CPU: 4000, Mem: 65536}}, Tasks: statuses}, sess, time.Now())
	ts2.mu.Unlock()
	f2.sessions["h0"] = sess
	return f2
}

// TestRolloutFailuresSurviveANewLeader: the consecutive-failure count of a
// crash-looping rollout is in the job's record: a new leader that took
// over after 2 of 3 failures rolls back at the next one, not after 3 more.
func TestRolloutFailuresSurviveANewLeader(t *testing.T) {
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
	for i := 0; i < 50 && ts.job(id).Rollout.Failures < 2; i++ {
		f.round()
	}
	r := ts.job(id).Rollout
	if r.Failures != 2 || !strings.Contains(r.LastFailure, "Crashed") {
		t.Fatalf("before the failover: %+v, want 2 failures", r)
	}
	f2 := f.failover(t, time.Now())
	if r2 := f2.ts.job(id).Rollout; r2.Failures != 2 || r2.LastFailure != r.LastFailure || !r2.ProgressAt.Equal(r.ProgressAt) {
		t.Fatalf("the new leader loaded %+v, want the old leader's count and clock %+v", r2, r)
	}
	f2.converge(t, nil)
	j := f2.ts.job(id)
	if j.Revision != 1 || j.Rollout.State != model.RolloutRolledBack || !strings.Contains(j.Rollout.Reason, "3 consecutive failures") {
		t.Fatalf("after the failover: revision %d rollout %+v", j.Revision, j.Rollout)
	}
	if bad := f2.byImage["registry.example/x:bad"]; bad != 3 {
		t.Errorf("%d tasks of the bad revision launched, want 3 (the count went on on the new leader)", bad)
	}
}

// TestRolloutDeadlineSurvivesANewLeader: the progress deadline's clock is
// in the job's record: 40 s on one leader and 25 s on the next exceed a
// 60 s deadline, and the update rolls back with the task's state named.
func TestRolloutDeadlineSurvivesANewLeader(t *testing.T) {
	ts := newTestScheduler(t, Config{})
	f := newFleet(ts)
	f.connect("h0", 4000, nil)
	spec := withImage(serviceSpec(2, &model.UpdateStrategy{MaxSurge: "1", MaxUnavailable: "0", ProgressDeadlineSeconds: 60}, ""), "registry.example/x:1", true)
	spec.Service.UnhealthyReplaceAfterSeconds = 3600
	id := ts.submit(spec)
	f.converge(t, nil)
	f.sickImage = "registry.example/x:sick"
	t0 := time.Now()
	ts.now = t0
	if _, err := ts.UpdateJob(ts.ctx, id, withImage(spec, "registry.example/x:sick", true)); err != nil {
		t.Fatal(err)
	}
	f.converge(t, nil)
	ts.now = t0.Add(40 * time.Second)
	f.converge(t, nil)
	if r := ts.job(id).Rollout; r.State != model.RolloutProgressing {
		t.Fatalf("before the failover: %+v, want progressing", r)
	}
	f2 := f.failover(t, t0.Add(40*time.Second))
	f2.converge(t, nil)
	if r := f2.ts.job(id).Rollout; r.State != model.RolloutProgressing {
		t.Fatalf("right after the failover: %+v, want progressing", r)
	}
	f2.ts.now = t0.Add(65 * time.Second)
	f2.converge(t, nil)
	j := f2.ts.job(id)
	if j.Revision != 1 || j.Rollout.State != model.RolloutRolledBack || !strings.Contains(j.Rollout.Reason, "Unhealthy: connection refused") {
		t.Fatalf("65 s after the update, across a failover: revision %d rollout %+v", j.Revision, j.Rollout)
	}
}

// TestBudgetAndStrategyDefaults: a service job's disruption budget is 10%
// of desired by default, never below 1; the update strategy defaults to
// one surge task when maxUnavailable is unset, none when it is set, and
// maxUnavailable to the budget.
func TestBudgetAndStrategyDefaults(t *testing.T) {
	for _, tc := range []struct {
		budget, surge, unavail string
		desired                int
		wantBudget             int
		wantSurge, wantUnavail int
	}{
		{"", "", "", 6, 1, 1, 1},
		{"", "", "", 30, 3, 1, 3},
		{"", "", "", 0, 1, 1, 1},
		{"25%", "", "", 10, 2, 1, 2},
		{"2", "", "", 10, 2, 1, 2},
		{"100%", "", "", 7, 7, 1, 7},
		{"", "", "1", 30, 3, 0, 1},
		{"", "50%", "0", 3, 1, 2, 0},
	} {
		s := &model.ServiceJob{}
		if tc.budget != "" {
			s.Budget = &model.DisruptionBudget{MaxUnavailable: tc.budget}
		}
		if tc.surge != "" || tc.unavail != "" {
			s.Update = &model.UpdateStrategy{MaxSurge: tc.surge, MaxUnavailable: tc.unavail}
		}
		surge, unavail, deadline, failures := s.Strategy(tc.desired)
		if b := s.BudgetOf(tc.desired); b != tc.wantBudget || surge != tc.wantSurge || unavail != tc.wantUnavail {
			t.Errorf("%+v: budget %d surge %d unavailable %d, want %d %d %d", tc, b, surge, unavail, tc.wantBudget, tc.wantSurge, tc.wantUnavail)
		}
		if deadline != model.DefaultProgressDeadline || failures != model.DefaultMaxFailures {
			t.Errorf("%+v: deadline %v failures %d, want the defaults", tc, deadline, failures)
		}
	}
}
