package agent

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sort"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/titus-agent/titus-agent/pkg/agent/taskrunner"
	"github.com/titus-agent/titus-agent/pkg/runtime"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// fakeRuntime records what the manager does to containers.
type fakeRuntime struct {
	mu         sync.Mutex
	ops        []string
	containers []runtime.ContainerStatus
	exits      map[string]chan runtime.ExitStatus
}

func (f *fakeRuntime) add(op string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ops = append(f.ops, op)
}

func (f *fakeRuntime) List(ctx context.Context) ([]runtime.ContainerStatus, error) {
	return f.containers, nil
}

func (f *fakeRuntime) Wait(ctx context.Context, id string) (<-chan runtime.ExitStatus, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	ch, ok := f.exits[id]
	if !ok {
		return nil, runtime.ErrContainerNotFound
	}
	return ch, nil
}

func (f *fakeRuntime) Kill(ctx context.Context, id string, sig syscall.Signal) error {
	f.add("kill " + id)
	return nil
}

func (f *fakeRuntime) Delete(ctx context.Context, id string) error {
	f.add("delete " + id)
	return nil
}

type keepRecorder struct{ keep []string }

func (k *keepRecorder) Reconcile(ctx context.Context, keep map[string]bool) error {
	for id := range keep {
		k.keep = append(k.keep, id)
	}
	sort.Strings(k.keep)
	return nil
}

func record(id string, states ...task.State) *taskrunner.Record {
	r := &taskrunner.Record{Spec: task.Spec{ID: id, OwnerEmail: "a@example.com", Image: "img"}}
	r.Spec.Normalize()
	for _, s := range states {
		r.Status.Advance(s, task.ReasonNone, "", time.Now())
	}
	return r
}

func TestRestoreReadoptsReapsAndReconciles(t *testing.T) {
	store, err := OpenStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	running := record("running", task.Accepted, task.Preparing, task.Starting, task.Running)
	running.Resources.Container, running.Resources.Pid, running.Status.Pid = true, 7, 7
	done := record("done", task.Accepted, task.Preparing, task.Starting, task.Running, task.Finished)
	done.CleanedUp = true
	half := record("half", task.Accepted, task.Preparing)
	half.LaunchResumed = true // cut short twice: lost
	resume := record("resume", task.Accepted, task.Preparing)
	for _, r := range []*taskrunner.Record{running, done, half, resume} {
		if err := store.Save(r); err != nil {
			t.Fatal(err)
		}
	}
	rt := &fakeRuntime{
		containers: []runtime.ContainerStatus{{ID: "running", TaskID: "running"}, {ID: "orphan", TaskID: "orphan"}, {ID: "done", TaskID: "done"}, {ID: "resume", TaskID: "resume"}},
		exits:      map[string]chan runtime.ExitStatus{"running": make(chan runtime.ExitStatus, 1), "resume": make(chan runtime.ExitStatus, 1)},
	}
	keep := &keepRecorder{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	m := NewManager(ctx, ManagerConfig{Store: store, Runtime: rt, Reconcilers: []Reconciler{keep}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err := m.Restore(ctx); err != nil {
		t.Fatal(err)
	}
	// Unknown and finished-and-cleaned containers are reaped, and so is the
	// half-made container of a launch to resume; the running one is not touched.
	if diff := cmp.Diff([]string{"kill orphan", "delete orphan", "kill done", "delete done", "kill resume", "delete resume"}, rt.ops[:6]); diff != "" {
		t.Fatalf("reaping (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"half", "resume", "running"}, keep.keep); diff != "" {
		t.Fatalf("reconcile keep (-want +got):\n%s", diff)
	}
	waitFor(t, func() bool { v, _ := m.Get("half"); return v.Status.State == task.Lost })
	waitFor(t, func() bool { v, _ := m.Get("resume"); return v.Status.State == task.Running })
	if v, _ := m.Get("running"); v.Status.State != task.Running || v.Status.Pid != 7 {
		t.Fatalf("running task after restore: %s pid %d", v.Status.State, v.Status.Pid)
	}
	// The re-adopted task's exit reaches its record.
	rt.exits["running"] <- runtime.ExitStatus{Code: 3}
	waitFor(t, func() bool { v, _ := m.Get("running"); return v.Status.State == task.Failed && v.Status.ExitCode == 3 })
}

func TestLaunchValidatesAndRecordsBeforeActing(t *testing.T) {
	store, err := OpenStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	m := NewManager(ctx, ManagerConfig{Store: store, Runtime: &fakeRuntime{}, MaxTasks: 1, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if _, err := m.Launch(ctx, &task.Spec{ID: "x"}); !errors.Is(err, task.ErrInvalidSpec) {
		t.Fatalf("invalid spec: %v", err)
	}
	if recs, _ := store.Load(); len(recs) != 0 {
		t.Fatalf("an invalid spec was recorded: %d records", len(recs))
	}
	if _, err := m.Launch(ctx, &task.Spec{ID: "a", OwnerEmail: "a@example.com", Image: "img"}); err != nil {
		t.Fatal(err)
	}
	if recs, _ := store.Load(); len(recs) != 1 || recs[0].Spec.ID != "a" {
		t.Fatalf("launch not recorded: %v", recs)
	}
	if _, err := m.Launch(ctx, &task.Spec{ID: "a", OwnerEmail: "a@example.com", Image: "img"}); !errors.Is(err, ErrTaskExists) {
		t.Fatalf("duplicate: %v", err)
	}
	if _, err := m.Launch(ctx, &task.Spec{ID: "b", OwnerEmail: "a@example.com", Image: "img"}); !errors.Is(err, ErrTooManyTasks) {
		t.Fatalf("over the task limit: %v", err)
	}
	if _, err := m.Kill(ctx, "nope", 0); !errors.Is(err, ErrTaskNotFound) {
		t.Fatalf("kill unknown: %v", err)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestRestoreAdoptsAStartTheAgentDidNotRecord: the agent died after
// starting a container but before recording it. A running container is
// re-adopted with its pid, one that already exited gets its exit status
// (it is not run twice), and one that never ran is made again.
func TestRestoreAdoptsAStartTheAgentDidNotRecord(t *testing.T) {
	store, err := OpenStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	for _, id := range []string{"started", "created", "exited"} {
		if err := store.Save(record(id, task.Accepted, task.Preparing, task.Starting)); err != nil {
			t.Fatal(err)
		}
	}
	rt := &fakeRuntime{
		containers: []runtime.ContainerStatus{
			{ID: "started", TaskID: "started", State: runtime.StateRunning, Pid: 42},
			{ID: "created", TaskID: "created", State: runtime.StateCreated},
			{ID: "exited", TaskID: "exited", State: runtime.StateStopped, Pid: 43},
		},
		exits: map[string]chan runtime.ExitStatus{
			"started": make(chan runtime.ExitStatus, 1), "created": make(chan runtime.ExitStatus, 1), "exited": make(chan runtime.ExitStatus, 1),
		},
	}
	rt.exits["exited"] <- runtime.ExitStatus{Code: 5}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	m := NewManager(ctx, ManagerConfig{Store: store, Runtime: rt, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err := m.Restore(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { v, _ := m.Get("started"); return v.Status.State == task.Running })
	waitFor(t, func() bool { v, _ := m.Get("created"); return v.Status.State == task.Running })
	waitFor(t, func() bool { v, _ := m.Get("exited"); return v.Status.State == task.Failed && v.Status.ExitCode == 5 })
	if diff := cmp.Diff([]string{"kill created", "delete created"}, rt.ops[:2]); diff != "" {
		t.Errorf("containers removed (-want +got):\n%s", diff)
	}
	if v, _ := m.Get("started"); v.Status.Pid != 42 {
		t.Fatalf("re-adopted pid %d, want 42", v.Status.Pid)
	}
	recs, err := store.Load()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		if r.Spec.ID == "started" && (!r.Resources.Container || r.Status.Pid != 42 || r.Status.State != task.Running) {
			t.Fatalf("stored record of the adopted task: %+v", r)
		}
	}
	rt.exits["started"] <- runtime.ExitStatus{Code: 0}
	waitFor(t, func() bool { v, _ := m.Get("started"); return v.Status.State == task.Finished })
}

// A running task whose record cannot be read is not an unknown container:
// its record goes to quarantine, its container is neither killed nor
// deleted, and its host resources are kept, at this start and the next.
// A quarantined task without a container keeps nothing.
func TestRestoreLeavesQuarantinedTasksRunning(t *testing.T) {
	dir := t.TempDir()
	putRaw(t, dir, map[string][]byte{
		"victim":   []byte(`{"spec":{"id":"victim","resources":{"cpuMillicores":"x"}}}`),
		"gone":     []byte(`not json`),
		"orphan-x": nil,
	})
	for start := range 2 {
		store, err := OpenStore(dir)
		if err != nil {
			t.Fatal(err)
		}
		rt := &fakeRuntime{containers: []runtime.ContainerStatus{
			{ID: "victim", TaskID: "victim", State: runtime.StateRunning, Pid: 9},
			{ID: "orphan", TaskID: "orphan"},
		}}
		keep := &keepRecorder{}
		quarantined := -1
		ctx, cancel := context.WithCancel(context.Background())
		m := NewManager(ctx, ManagerConfig{Store: store, Runtime: rt, Reconcilers: []Reconciler{keep},
			Quarantined: func(n int) { quarantined = n }, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err := m.Restore(ctx); err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff([]string{"kill orphan", "delete orphan"}, rt.ops); diff != "" {
			t.Errorf("start %d: container ops (-want +got):\n%s", start, diff)
		}
		if diff := cmp.Diff([]string{"victim"}, keep.keep); diff != "" {
			t.Errorf("start %d: reconcile keep (-want +got):\n%s", start, diff)
		}
		if quarantined != 3 {
			t.Errorf("start %d: quarantined metric = %d, want 3", start, quarantined)
		}
		cancel()
		m.Wait()
		store.Close()
	}
}

type recordsSeen struct{ ids []string }

func (r *recordsSeen) RestoreRecords(recs []*taskrunner.Record) {
	for _, rec := range recs {
		r.ids = append(r.ids, rec.Spec.ID)
	}
	sort.Strings(r.ids)
}

// Restorers learn the records of tasks whose host resources are live,
// before any runner starts.
func TestRestoreHandsRecordsToRestorers(t *testing.T) {
	store, err := OpenStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	done := record("done", task.Accepted, task.Preparing, task.Starting, task.Running, task.Finished)
	done.CleanedUp = true
	for _, r := range []*taskrunner.Record{record("a", task.Accepted, task.Preparing), done} {
		if err := store.Save(r); err != nil {
			t.Fatal(err)
		}
	}
	seen := &recordsSeen{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	m := NewManager(ctx, ManagerConfig{Store: store, Runtime: &fakeRuntime{}, Restorers: []RecordRestorer{seen},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err := m.Restore(ctx); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"a"}, seen.ids); diff != "" {
		t.Errorf("records restored (-want +got):\n%s", diff)
	}
}

// countingHook counts the launches that got as far as allocating.
type countingHook struct {
	mu sync.Mutex
	n  int
}

func (h *countingHook) Name() string { return "alloc" }
func (h *countingHook) Prestart(ctx context.Context, req *taskrunner.PrestartRequest, resp *taskrunner.PrestartResponse) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.n++
	return nil
}

// A spec this host refuses (a host path or device it does not give) is
// refused by Launch with the rest of its validation, each rule a field:
// it is not recorded and no hook runs for it.
func TestLaunchRefusesWhatTheHostDoesNotGive(t *testing.T) {
	store, err := OpenStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	hook := &countingHook{}
	m := NewManager(ctx, ManagerConfig{Store: store, Runtime: &fakeRuntime{}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Stages: [][]taskrunner.PrestartHook{{hook}},
		HostCheck: func(s *task.Spec, c *task.Checker) {
			if s.Labels["host"] != "" {
				c.Failf("labels[host]", "host path %s: not allowed on this host", s.Labels["host"])
			}
		}})
	for _, tc := range []struct {
		name string
		spec task.Spec
		want []*task.FieldError
	}{
		{
			name: "host refuses",
			spec: task.Spec{ID: "a", OwnerEmail: "a@example.com", Image: "img", Labels: map[string]string{"host": "/etc"}},
			want: []*task.FieldError{{Field: "labels[host]", Rule: "host path /etc: not allowed on this host"}},
		},
		{
			name: "host and spec refuse: every rule at once",
			spec: task.Spec{ID: "b", Image: "img", Labels: map[string]string{"host": "/"}},
			want: []*task.FieldError{
				{Field: "owner_email", Rule: "is required"},
				{Field: "labels[host]", Rule: "host path /: not allowed on this host"},
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := m.Launch(ctx, &tc.spec)
			var ve *task.ValidationError
			if !errors.Is(err, task.ErrInvalidSpec) || !errors.As(err, &ve) {
				t.Fatalf("launch: %v, want a task.ValidationError", err)
			}
			if diff := cmp.Diff(tc.want, ve.Fields); diff != "" {
				t.Errorf("fields (-want +got):\n%s", diff)
			}
		})
	}
	if recs, _ := store.Load(); len(recs) != 0 {
		t.Errorf("a refused spec was recorded: %d records", len(recs))
	}
	if _, err := m.Launch(ctx, &task.Spec{ID: "ok", OwnerEmail: "a@example.com", Image: "img"}); err != nil {
		t.Fatalf("a spec the host gives: %v", err)
	}
	waitFor(t, func() bool { hook.mu.Lock(); defer hook.mu.Unlock(); return hook.n == 1 })
	hook.mu.Lock()
	defer hook.mu.Unlock()
	if hook.n != 1 {
		t.Errorf("hooks ran %d times, want once (the accepted launch only)", hook.n)
	}
}

// A launch waiting for its record to reach the disk holds the manager's
// lock no longer than the checks: the manager answers meanwhile, and the
// launch's id and place are taken until it is saved.
func TestLaunchRecordsOutsideTheManagerLock(t *testing.T) {
	store, err := OpenStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	m := NewManager(ctx, ManagerConfig{Store: store, Runtime: &fakeRuntime{}, MaxTasks: 2, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	// A commit in flight: the next saves wait in the store's queue.
	store.mu.Lock()
	store.busy = true
	store.mu.Unlock()
	launched := make(chan error, 1)
	go func() {
		_, err := m.Launch(ctx, &task.Spec{ID: "slow", OwnerEmail: "a@example.com", Image: "img"})
		launched <- err
	}()
	waitFor(t, func() bool { store.mu.Lock(); defer store.mu.Unlock(); return len(store.queue) == 1 })
	done := make(chan []task.View, 1)
	go func() { done <- m.List() }()
	select {
	case vs := <-done:
		if len(vs) != 0 {
			t.Errorf("a launch not yet on disk is listed: %v", vs)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("List waited for a launch's fsync")
	}
	if _, err := m.Launch(ctx, &task.Spec{ID: "slow", OwnerEmail: "a@example.com", Image: "img"}); !errors.Is(err, ErrTaskExists) {
		t.Errorf("duplicate of a launch being recorded: %v", err)
	}
	// "slow" holds one of the two places while it is recorded.
	go func() { _, _ = m.Launch(ctx, &task.Spec{ID: "second", OwnerEmail: "a@example.com", Image: "img"}) }()
	waitFor(t, func() bool { store.mu.Lock(); defer store.mu.Unlock(); return len(store.queue) == 2 })
	if _, err := m.Launch(ctx, &task.Spec{ID: "third", OwnerEmail: "a@example.com", Image: "img"}); !errors.Is(err, ErrTooManyTasks) {
		t.Errorf("over the limit with two launches being recorded: %v", err)
	}
	store.commitQueued()
	if err := <-launched; err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return len(m.List()) == 2 })
	if recs, _ := store.Load(); len(recs) < 2 {
		t.Errorf("records on disk: %d, want 2", len(recs))
	}
}

// A launch is recorded Accepted and Preparing in one write, before any
// hook acts: the hook finds the record on disk, its runner writes no
// Preparing of its own, and watchers get both transitions, in order.
func TestLaunchRecordsAcceptedAndPreparingInOneWrite(t *testing.T) {
	store, err := OpenStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	seen := make(chan []task.State, 1)
	hook := &onDiskHook{store: store, seen: seen}
	rt := &fakeRuntime{exits: map[string]chan runtime.ExitStatus{"a": make(chan runtime.ExitStatus, 1)}}
	m := NewManager(ctx, ManagerConfig{Store: store, Runtime: rt, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Stages: [][]taskrunner.PrestartHook{{hook}, {&countingHook{}}}})
	events := m.Subscribe(ctx)
	before := store.rounds.Load()
	v, err := m.Launch(ctx, &task.Spec{ID: "a", OwnerEmail: "a@example.com", Image: "img"})
	if err != nil {
		t.Fatal(err)
	}
	if v.Status.State != task.Preparing {
		t.Errorf("launched task is %s, want Preparing", v.Status.State)
	}
	var onDisk []task.State
	select {
	case onDisk = <-seen:
	case <-time.After(10 * time.Second):
		t.Fatal("the hook never ran")
	}
	if diff := cmp.Diff([]task.State{task.Accepted, task.Preparing}, onDisk); diff != "" {
		t.Errorf("on disk when the first hook ran (-want +got):\n%s", diff)
	}
	var got []task.State
	for len(got) < 3 {
		select {
		case ev := <-events:
			got = append(got, ev.Status.State)
			if n := len(ev.Status.Transitions); n == 0 || ev.Status.Transitions[n-1].State != ev.Status.State {
				t.Errorf("event %s carries transitions %v", ev.Status.State, ev.Status.Transitions)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("events so far %v", got)
		}
	}
	if diff := cmp.Diff([]task.State{task.Accepted, task.Preparing, task.Starting}, got); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
	// Accepted+Preparing, Starting, Running: no write of Preparing alone.
	waitFor(t, func() bool { v, _ := m.Get("a"); return v.Status.State == task.Running })
	if n := store.rounds.Load() - before; n > 3 {
		t.Errorf("%d writes up to Running, want at most 3 (Preparing, Starting, Running)", n)
	}
}

// onDiskHook notes the states of its task's record on disk when it runs.
type onDiskHook struct {
	store *Store
	seen  chan []task.State
}

func (h *onDiskHook) Name() string { return "ondisk" }
func (h *onDiskHook) Prestart(ctx context.Context, req *taskrunner.PrestartRequest, resp *taskrunner.PrestartResponse) error {
	recs, _ := h.store.Load()
	var states []task.State
	for _, r := range recs {
		if r.Spec.ID == req.Spec.ID {
			for _, tr := range r.Status.Transitions {
				states = append(states, tr.State)
			}
		}
	}
	h.seen <- states
	return nil
}
