package taskrunner

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/google/go-cmp/cmp"

	"github.com/titus-agent/titus-agent/pkg/refill"
	"github.com/titus-agent/titus-agent/pkg/runtime"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// recorder collects what fakes did, in order.
type recorder struct {
	mu  sync.Mutex
	ops []string
}

func (r *recorder) add(op string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ops = append(r.ops, op)
}

func (r *recorder) get() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.ops...)
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

type fakeHook struct {
	name string
	rec  *recorder
	err  error
	pid  uint32
}

func (h *fakeHook) Name() string { return h.name }
func (h *fakeHook) Prestart(ctx context.Context, req *PrestartRequest, resp *PrestartResponse) error {
	if h.pid != 0 && req.Recorded != nil { // it starts a process: as the container hook does
		if err := req.Recorded(); err != nil {
			return err
		}
	}
	h.rec.add("prestart " + h.name)
	if h.pid != 0 {
		resp.Pid, resp.Container = h.pid, true
	}
	return h.err
}
func (h *fakeHook) Stop(ctx context.Context, req *StopRequest) error {
	if ctx.Err() != nil {
		h.rec.add("stop " + h.name + " CANCELLED")
	}
	h.rec.add("stop " + h.name)
	return nil
}

type fakeWaiter struct {
	rec  *recorder
	exit chan runtime.ExitStatus
	// exitOn is the signal that makes the fake process exit (SIGKILL always does).
	exitOn syscall.Signal
}

func (w *fakeWaiter) Wait(ctx context.Context, id string) (<-chan runtime.ExitStatus, error) {
	return w.exit, nil
}

func (w *fakeWaiter) Kill(ctx context.Context, id string, sig syscall.Signal) error {
	w.rec.add("kill " + sig.String())
	if sig == syscall.SIGKILL || sig == w.exitOn {
		w.exit <- runtime.ExitStatus{Code: 128 + uint32(sig)}
	}
	return nil
}

type fakeStore struct {
	mu   sync.Mutex
	last Record
	n    int
}

func (s *fakeStore) Save(rec *Record) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.last, s.n = *rec, s.n+1
	return nil
}

func newTestRunner(t *testing.T, rec *recorder, hooks [][]PrestartHook, w *fakeWaiter, spec task.Spec) (*Runner, *fakeStore) {
	t.Helper()
	st := &fakeStore{}
	spec.Normalize()
	r := New(Config{Stages: hooks, Runtime: w, Store: st, Logger: quiet}, &Record{Spec: spec})
	return r, st
}

func states(v task.View) []string {
	var out []string
	for _, tr := range v.Status.Transitions {
		out = append(out, tr.State.String()+"/"+string(tr.Reason))
	}
	return out
}

func waitDone(t *testing.T, r *Runner) {
	t.Helper()
	select {
	case <-r.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("runner did not finish")
	}
}

func TestRunnerLifecycle(t *testing.T) {
	tests := []struct {
		name       string
		exit       *runtime.ExitStatus
		prepareErr error
		kill       bool
		wantStates []string
		wantOps    []string
		wantExit   int32
	}{
		{
			name:       "completes",
			exit:       &runtime.ExitStatus{Code: 0},
			wantStates: []string{"Preparing/", "Starting/", "Running/Started", "Finished/Completed"},
			wantOps:    []string{"prestart image", "prestart net", "prestart container", "stop container", "stop net", "stop image"},
		},
		{
			name:       "non-zero exit",
			exit:       &runtime.ExitStatus{Code: 3},
			wantStates: []string{"Preparing/", "Starting/", "Running/Started", "Failed/NonZeroExit"},
			wantOps:    []string{"prestart image", "prestart net", "prestart container", "stop container", "stop net", "stop image"},
			wantExit:   3,
		},
		{
			name:       "oom",
			exit:       &runtime.ExitStatus{Code: 137, OOMKilled: true},
			wantStates: []string{"Preparing/", "Starting/", "Running/Started", "Failed/OOMKilled"},
			wantOps:    []string{"prestart image", "prestart net", "prestart container", "stop container", "stop net", "stop image"},
			wantExit:   137,
		},
		{
			name:       "prepare fails: later stages skipped, everything torn down",
			prepareErr: &HookError{Hook: "image", Reason: task.ReasonImageNotFound, Err: errors.New("404")},
			wantStates: []string{"Preparing/", "Failed/ImageNotFound"},
			wantOps:    []string{"prestart image", "prestart net", "stop container", "stop net", "stop image"},
			wantExit:   -1,
		},
		{
			// The host's disk is full (its state directory, the task's
			// disk): whatever hook hit it, the host is at fault and
			// nothing ran, so the scheduler places the task elsewhere.
			name: "prepare fails for lack of disk space: HostDiskFull",
			prepareErr: &HookError{Hook: "image", Reason: task.ReasonNetworkSetupFailed,
				Err: fmt.Errorf("allocate address: write allocation record: %w", &fs.PathError{Op: "write", Path: "/state/.alloc-1", Err: syscall.ENOSPC})},
			wantStates: []string{"Preparing/", "Failed/HostDiskFull"},
			wantOps:    []string{"prestart image", "prestart net", "stop container", "stop net", "stop image"},
			wantExit:   -1,
		},
		{
			name:       "kill: SIGTERM ignored, SIGKILL after grace",
			kill:       true,
			wantStates: []string{"Preparing/", "Starting/", "Running/Started", "Killing/KilledByUser", "Killed/KilledByUser"},
			wantOps:    []string{"prestart image", "prestart net", "prestart container", "kill terminated", "kill killed", "stop container", "stop net", "stop image"},
			wantExit:   137,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := &recorder{}
			w := &fakeWaiter{rec: rec, exit: make(chan runtime.ExitStatus, 2)}
			image := &fakeHook{name: "image", rec: rec, err: tt.prepareErr}
			// net runs in the same stage as image; order them deterministically
			// by making image first in the recorder: run stages with one hook each.
			hooks := [][]PrestartHook{{image}, {&fakeHook{name: "net", rec: rec}}, {&fakeHook{name: "container", rec: rec, pid: 42}}}
			if tt.prepareErr != nil {
				hooks = [][]PrestartHook{{image, &slowHook{fakeHook{name: "net", rec: rec}}}, {&fakeHook{name: "container", rec: rec, pid: 42}}}
			}
			r, st := newTestRunner(t, rec, hooks, w, task.Spec{ID: "t1", KillGracePeriod: 50 * time.Millisecond})
			if tt.exit != nil {
				w.exit <- *tt.exit
			}
			go r.Run(context.Background())
			if tt.kill {
				waitState(t, r, task.Running)
				r.Kill(0, task.ReasonKilledByUser, "")
			}
			waitDone(t, r)
			v := r.View()
			if diff := cmp.Diff(tt.wantStates, states(v)); diff != "" {
				t.Errorf("states (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantOps, rec.get()); diff != "" {
				t.Errorf("ops (-want +got):\n%s", diff)
			}
			if v.Status.ExitCode != tt.wantExit {
				t.Errorf("exit = %d, want %d", v.Status.ExitCode, tt.wantExit)
			}
			if !st.last.CleanedUp {
				t.Error("final record not marked cleaned up")
			}
		})
	}
}

// slowHook finishes after its stage-mate so the recorded order is stable.
type slowHook struct{ fakeHook }

func (h *slowHook) Prestart(ctx context.Context, req *PrestartRequest, resp *PrestartResponse) error {
	time.Sleep(20 * time.Millisecond)
	return h.fakeHook.Prestart(ctx, req, resp)
}

func waitState(t *testing.T, r *Runner, s task.State) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for r.View().Status.State < s {
		if time.Now().After(deadline) {
			t.Fatalf("task never reached %s (at %s)", s, r.View().Status.State)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestAgentShutdownDoesNotKill(t *testing.T) {
	rec := &recorder{}
	w := &fakeWaiter{rec: rec, exit: make(chan runtime.ExitStatus, 1)}
	hooks := [][]PrestartHook{{&fakeHook{name: "container", rec: rec, pid: 7}}}
	r, _ := newTestRunner(t, rec, hooks, w, task.Spec{ID: "t1"})
	ctx, cancel := context.WithCancel(context.Background())
	go r.Run(ctx)
	waitState(t, r, task.Running)
	cancel()
	waitDone(t, r)
	if diff := cmp.Diff([]string{"prestart container"}, rec.get()); diff != "" {
		t.Errorf("agent shutdown touched the task (-want +got):\n%s", diff)
	}
	if got := r.View().Status.State; got != task.Running {
		t.Errorf("state after agent shutdown = %s, want Running", got)
	}
}

func TestRestoreGetsExitStatusFromWhileAway(t *testing.T) {
	rec := &recorder{}
	w := &fakeWaiter{rec: rec, exit: make(chan runtime.ExitStatus, 1)}
	w.exit <- runtime.ExitStatus{Code: 7}
	hooks := [][]PrestartHook{{&fakeHook{name: "container", rec: rec}}}
	spec := task.Spec{ID: "t1"}
	spec.Normalize()
	prev := &Record{Spec: spec, Resources: Resources{Container: true, Pid: 9}}
	for _, s := range []task.State{task.Accepted, task.Preparing, task.Starting, task.Running} {
		prev.Status.Advance(s, task.ReasonNone, "", time.Now())
	}
	r := New(Config{Stages: hooks, Runtime: w, Store: &fakeStore{}, Logger: quiet}, prev)
	go r.Restore(context.Background(), nil)
	waitDone(t, r)
	v := r.View()
	if v.Status.State != task.Failed || v.Status.ExitCode != 7 {
		t.Fatalf("restored task = %s exit %d, want Failed exit 7", v.Status.State, v.Status.ExitCode)
	}
	if diff := cmp.Diff([]string{"stop container"}, rec.get()); diff != "" {
		t.Errorf("ops (-want +got):\n%s", diff)
	}
}

// A launch the previous agent cut short is resumed once (its hooks run
// again, the task runs); cut short a second time, it is Lost and cleaned.
func TestRestoreBeforeStart(t *testing.T) {
	for _, tc := range []struct {
		name       string
		state      task.State
		resumed    bool
		wantStates []string
		wantOps    []string
	}{
		{
			name:       "preparing: resumed",
			state:      task.Preparing,
			wantStates: []string{"Preparing/", "Starting/", "Running/Started", "Finished/Completed"},
			wantOps:    []string{"prestart net", "prestart container", "stop container", "stop net"},
		},
		{
			name:       "starting without a container: resumed",
			state:      task.Starting,
			wantStates: []string{"Preparing/", "Starting/", "Running/Started", "Finished/Completed"},
			wantOps:    []string{"prestart net", "prestart container", "stop container", "stop net"},
		},
		{
			name:       "already resumed once: lost and cleaned",
			state:      task.Preparing,
			resumed:    true,
			wantStates: []string{"Preparing/", "Lost/AgentRestartLost"},
			wantOps:    []string{"stop container", "stop net"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := &recorder{}
			w := &fakeWaiter{rec: rec, exit: make(chan runtime.ExitStatus, 1)}
			hooks := [][]PrestartHook{{&fakeHook{name: "net", rec: rec}}, {&fakeHook{name: "container", rec: rec, pid: 42}}}
			prev := &Record{Spec: task.Spec{ID: "t1"}, LaunchResumed: tc.resumed}
			prev.Status.Advance(task.Accepted, "", "", time.Now())
			for s := task.Preparing; s <= tc.state; s++ {
				prev.Status.Advance(s, "", "", time.Now())
			}
			st := &fakeStore{}
			r := New(Config{Stages: hooks, Runtime: w, Store: st, Logger: quiet}, prev)
			w.exit <- runtime.ExitStatus{}
			go r.Restore(context.Background(), nil)
			waitDone(t, r)
			got := states(r.View())
			if diff := cmp.Diff(append([]string{"Accepted/"}, tc.wantStates...), got); diff != "" {
				t.Errorf("states (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.wantOps, rec.get()); diff != "" {
				t.Errorf("ops (-want +got):\n%s", diff)
			}
			if !st.last.LaunchResumed {
				t.Error("the record does not say the launch was resumed")
			}
		})
	}
}

func TestMaxRuntimeKills(t *testing.T) {
	rec := &recorder{}
	w := &fakeWaiter{rec: rec, exit: make(chan runtime.ExitStatus, 2), exitOn: syscall.SIGTERM}
	hooks := [][]PrestartHook{{&fakeHook{name: "container", rec: rec, pid: 7}}}
	r, _ := newTestRunner(t, rec, hooks, w, task.Spec{ID: "t1", MaxRuntime: 30 * time.Millisecond})
	go r.Run(context.Background())
	waitDone(t, r)
	if got := r.View().Status; got.State != task.Killed || got.Reason != task.ReasonRuntimeLimitExceeded {
		t.Fatalf("got %s/%s, want Killed/RuntimeLimitExceeded", got.State, got.Reason)
	}
}

// envHook creates one env var (a stand-in for any resource) and notes what
// was on disk when it ran.
type envHook struct {
	key   string
	store *journalStore
	seen  *[]string
}

func (h *envHook) Name() string { return h.key }
func (h *envHook) Prestart(ctx context.Context, req *PrestartRequest, resp *PrestartResponse) error {
	if h.key == "container" && req.Recorded != nil { // as the container hook does before the start
		if err := req.Recorded(); err != nil {
			return err
		}
	}
	*h.seen = append(*h.seen, h.key+" sees "+h.store.lastLine())
	resp.Env = map[string]string{h.key: "1"}
	if h.key == "container" {
		resp.Container, resp.Pid = true, 42
	}
	return nil
}

// journalStore keeps one line per Save: the state and the resources.
type journalStore struct {
	mu    sync.Mutex
	lines []string
}

func (s *journalStore) Save(rec *Record) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lines = append(s.lines, fmt.Sprintf("%s env=%v container=%v pid=%d", rec.Status.State, slices.Sorted(maps.Keys(rec.Resources.Env)), rec.Resources.Container, rec.Status.Pid))
	return nil
}

func (s *journalStore) lastLine() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.lines) == 0 {
		return "nothing"
	}
	return s.lines[len(s.lines)-1]
}

// A launch writes its record three times: Preparing (with Accepted, by
// the manager), Starting with every resource the preparing hooks made,
// on disk before the container's process starts, and Running with the
// container. The preparing hooks read what the hooks they follow made
// from memory, not from disk.
func TestLaunchWritesTheRecordBeforeTheContainerStarts(t *testing.T) {
	st := &journalStore{}
	var seen []string
	hooks := [][]PrestartHook{
		{&envHook{key: "image", store: st, seen: &seen}, &fakeHook{name: "empty", rec: &recorder{}}},
		{&envHook{key: "disk", store: st, seen: &seen}},
		{&envHook{key: "container", store: st, seen: &seen}},
	}
	w := &fakeWaiter{rec: &recorder{}, exit: make(chan runtime.ExitStatus, 1)}
	spec := task.Spec{ID: "t1"}
	spec.Normalize()
	r := New(Config{Stages: hooks, Runtime: w, Store: st, Logger: quiet}, &Record{Spec: spec})
	go r.Run(context.Background())
	waitState(t, r, task.Running)
	wantSeen := []string{
		"image sees Preparing env=[] container=false pid=0",
		"disk sees Preparing env=[] container=false pid=0",
		"container sees Starting env=[disk image] container=false pid=0",
	}
	if diff := cmp.Diff(wantSeen, seen); diff != "" {
		t.Errorf("on disk when each hook ran (-want +got):\n%s", diff)
	}
	st.mu.Lock()
	got := slices.Clone(st.lines)
	st.mu.Unlock()
	want := []string{
		"Preparing env=[] container=false pid=0",
		"Starting env=[disk image] container=false pid=0",
		"Running env=[container disk image] container=true pid=42",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("writes (-want +got):\n%s", diff)
	}
	w.exit <- runtime.ExitStatus{}
	waitDone(t, r)
}

// A stage that fails has what it created saved before teardown.
func TestFailedStageResourcesPersisted(t *testing.T) {
	st := &journalStore{}
	var seen []string
	fail := &fakeHook{name: "fails", rec: &recorder{}, err: errors.New("boom")}
	hooks := [][]PrestartHook{{&envHook{key: "image", store: st, seen: &seen}, fail}, {&envHook{key: "container", store: st, seen: &seen}}}
	w := &fakeWaiter{rec: &recorder{}, exit: make(chan runtime.ExitStatus, 1)}
	spec := task.Spec{ID: "t1"}
	spec.Normalize()
	r := New(Config{Stages: hooks, Runtime: w, Store: st, Logger: quiet}, &Record{Spec: spec})
	go r.Run(context.Background())
	waitDone(t, r)
	st.mu.Lock()
	got := slices.Clone(st.lines[:2])
	st.mu.Unlock()
	want := []string{"Preparing env=[] container=false pid=0", "Preparing env=[image] container=false pid=0"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("writes (-want +got):\n%s", diff)
	}
}

// flakyStop fails its first failures stops.
type flakyStop struct {
	fakeHook
	mu       sync.Mutex
	failures int
	calls    int
}

func (h *flakyStop) Stop(ctx context.Context, req *StopRequest) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.calls++
	if h.calls <= h.failures {
		return errors.New("device busy")
	}
	return nil
}

// A failed teardown is tried again until it succeeds, without waiting for
// an agent restart; an agent shutdown ends the retries (the record stays
// not cleaned up, for the next agent).
func TestTeardownRetriedUntilItSucceeds(t *testing.T) {
	for _, tc := range []struct {
		name        string
		failures    int
		shutdown    bool
		wantCleaned bool
	}{
		{name: "fails twice, then succeeds", failures: 2, wantCleaned: true},
		{name: "agent shuts down while it fails", failures: 1 << 30, shutdown: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			disk := &flakyStop{fakeHook: fakeHook{name: "disk", rec: &recorder{}}, failures: tc.failures}
			w := &fakeWaiter{rec: &recorder{}, exit: make(chan runtime.ExitStatus, 1)}
			spec := task.Spec{ID: "t1"}
			spec.Normalize()
			st := &fakeStore{}
			r := New(Config{Stages: [][]PrestartHook{{disk}, {&fakeHook{name: "container", rec: &recorder{}, pid: 1}}}, Runtime: w, Store: st, Logger: quiet, TeardownRetry: time.Millisecond}, &Record{Spec: spec})
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			w.exit <- runtime.ExitStatus{}
			go r.Run(ctx)
			if tc.shutdown {
				deadline := time.Now().Add(10 * time.Second)
				for {
					disk.mu.Lock()
					calls := disk.calls
					disk.mu.Unlock()
					if calls >= 3 || time.Now().After(deadline) {
						break
					}
					time.Sleep(time.Millisecond)
				}
				cancel()
			}
			waitDone(t, r)
			st.mu.Lock()
			cleaned := st.last.CleanedUp
			st.mu.Unlock()
			if cleaned != tc.wantCleaned {
				t.Errorf("cleaned up = %v, want %v", cleaned, tc.wantCleaned)
			}
			if !tc.shutdown && disk.calls != tc.failures+1 {
				t.Errorf("stop ran %d times, want %d", disk.calls, tc.failures+1)
			}
		})
	}
}

// fullStore refuses to write a final state its first failures times, as a
// full state disk would, and notes each write in the recorder.
type fullStore struct {
	mu       sync.Mutex
	rec      *recorder
	failures int
}

func (s *fullStore) Save(rec *Record) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if rec.Status.State.Terminal() && !rec.CleanedUp && s.failures > 0 {
		s.failures--
		return errors.New("no space left on device")
	}
	s.rec.add(fmt.Sprintf("save %s cleaned=%v", rec.Status.State, rec.CleanedUp))
	return nil
}

// A final state that cannot be written is retried, and nothing is torn
// down before it is on disk: the exit code is never lost.
func TestFinalStateWrittenBeforeTeardown(t *testing.T) {
	rec := &recorder{}
	w := &fakeWaiter{rec: rec, exit: make(chan runtime.ExitStatus, 1)}
	spec := task.Spec{ID: "t1"}
	spec.Normalize()
	r := New(Config{Stages: [][]PrestartHook{{&fakeHook{name: "container", rec: rec, pid: 1}}}, Runtime: w,
		Store: &fullStore{rec: rec, failures: 3}, Logger: quiet, TeardownRetry: time.Millisecond}, &Record{Spec: spec})
	w.exit <- runtime.ExitStatus{Code: 7}
	go r.Run(context.Background())
	waitDone(t, r)
	want := []string{"save Preparing cleaned=false", "save Starting cleaned=false", "prestart container", "save Running cleaned=false",
		"save Failed cleaned=false", "stop container", "save Failed cleaned=true"}
	if diff := cmp.Diff(want, rec.get()); diff != "" {
		t.Errorf("order (-want +got):\n%s", diff)
	}
	if v := r.View(); v.Status.ExitCode != 7 {
		t.Errorf("exit code %d, want 7", v.Status.ExitCode)
	}
}

// A task re-adopted by a restarted agent carries a reason code of its own on
// its Running transition, and its exit says so; a kill the previous agent
// had begun goes on with the reason it was asked with.
func TestRestoreReasons(t *testing.T) {
	for _, tc := range []struct {
		name       string
		state      task.State
		reason     task.Reason
		exit       uint32
		wantStates []string
		wantMsg    string
	}{
		{
			name:       "starting with a container: re-adopted",
			state:      task.Starting,
			exit:       3,
			wantStates: []string{"Starting/", "Running/ReadoptedAfterAgentRestart", "Failed/NonZeroExit"},
			wantMsg:    "exit code 3 (exited while the agent was away)",
		},
		{
			name:       "running: not re-adopted by a transition",
			state:      task.Running,
			exit:       0,
			wantStates: []string{"Starting/", "Running/Started", "Finished/Completed"},
			wantMsg:    "",
		},
		{
			name:       "killing for the runtime limit: the reason is kept",
			state:      task.Killing,
			reason:     task.ReasonRuntimeLimitExceeded,
			exit:       143,
			wantStates: []string{"Starting/", "Running/Started", "Killing/RuntimeLimitExceeded", "Killed/RuntimeLimitExceeded"},
			wantMsg:    "exit code 143",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := &recorder{}
			w := &fakeWaiter{rec: rec, exit: make(chan runtime.ExitStatus, 2), exitOn: syscall.SIGTERM}
			hooks := [][]PrestartHook{{&fakeHook{name: "container", rec: rec}}}
			spec := task.Spec{ID: "t1"}
			spec.Normalize()
			prev := &Record{Spec: spec, Resources: Resources{Container: true, Pid: 9}}
			for _, s := range []task.State{task.Accepted, task.Preparing, task.Starting, task.Running, task.Killing} {
				if s > tc.state {
					break
				}
				reason := task.ReasonNone
				switch s {
				case task.Running:
					reason = task.ReasonStarted
				case task.Killing:
					reason = tc.reason
				}
				prev.Status.Advance(s, reason, "", time.Now())
			}
			if tc.state != task.Killing {
				w.exit <- runtime.ExitStatus{Code: tc.exit}
			}
			r := New(Config{Stages: hooks, Runtime: w, Store: &fakeStore{}, Logger: quiet}, prev)
			go r.Restore(context.Background(), nil)
			waitDone(t, r)
			v := r.View()
			if diff := cmp.Diff(append([]string{"Accepted/", "Preparing/"}, tc.wantStates...), states(v)); diff != "" {
				t.Errorf("states (-want +got):\n%s", diff)
			}
			if v.Status.Message != tc.wantMsg {
				t.Errorf("final message = %q, want %q", v.Status.Message, tc.wantMsg)
			}
		})
	}
}

// launchGateHook reports, once it runs, how many launches the gate counts, and
// holds the launch until release is closed.
type launchGateHook struct {
	fakeHook
	gate     *refill.Gate
	inFlight chan int
	release  chan struct{}
}

func (h *launchGateHook) Prestart(ctx context.Context, req *PrestartRequest, resp *PrestartResponse) error {
	h.inFlight <- h.gate.InFlight()
	<-h.release
	return h.fakeHook.Prestart(ctx, req, resp)
}

// A launch is counted by Config.Launches from its hooks until it is
// Running or has failed, so pool refills wait for it; a running task, or
// one being torn down, is not counted.
func TestLaunchIsCountedUntilRunning(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want task.State
	}{
		{"started", nil, task.Running},
		{"failed", errors.New("boom"), task.Failed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := &recorder{}
			gate := &refill.Gate{}
			w := &fakeWaiter{rec: rec, exit: make(chan runtime.ExitStatus, 1)}
			h := &launchGateHook{fakeHook: fakeHook{name: "container", rec: rec, pid: 7, err: tc.err}, gate: gate, inFlight: make(chan int, 1), release: make(chan struct{})}
			st := &fakeStore{}
			spec := task.Spec{ID: "t1"}
			spec.Normalize()
			r := New(Config{Stages: [][]PrestartHook{{h}}, Runtime: w, Store: st, Logger: quiet, Launches: gate}, &Record{Spec: spec})
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go r.Run(ctx)
			if n := <-h.inFlight; n != 1 {
				t.Errorf("launches in flight during the hook = %d, want 1", n)
			}
			close(h.release)
			waitState(t, r, tc.want)
			deadline := time.Now().Add(5 * time.Second)
			for gate.InFlight() != 0 {
				if time.Now().After(deadline) {
					t.Fatalf("still %d launches in flight once %s", gate.InFlight(), tc.want)
				}
				time.Sleep(time.Millisecond)
			}
		})
	}
}

// goneWaiter answers NotFound for the task until found, and reaps as told.
type goneWaiter struct {
	fakeWaiter
	mu     sync.Mutex
	found  bool
	reaps  []reapResult // one per ReapLost call; the last repeats
	reaped int
}

type reapResult struct {
	msg string
	err error
}

func (w *goneWaiter) Wait(ctx context.Context, id string) (<-chan runtime.ExitStatus, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.found {
		return nil, fmt.Errorf("load task %s: %w", id, errdefs.ErrNotFound)
	}
	return w.exit, nil
}

func (w *goneWaiter) ReapLost(ctx context.Context, id string) (string, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	res := w.reaps[min(w.reaped, len(w.reaps)-1)]
	w.reaped++
	if errors.Is(res.err, runtime.ErrTaskNotLost) {
		w.found = true
	}
	return res.msg, res.err
}

// A restored running task the runtime answers NotFound for is Lost with
// what the runtime's reaper found, unless the runtime has it after all (it
// is waited on again), or the reaper cannot tell, five times in a row.
func TestRuntimeLostTask(t *testing.T) {
	for _, tc := range []struct {
		name      string
		reaps     []reapResult
		wantState string
		wantMsg   string
		wantReaps int
	}{
		{"reaped", []reapResult{{msg: "containerd has its container but no task; killed its shim"}},
			"Lost/AgentRestartLost", "container is gone: containerd has its container but no task; killed its shim", 1},
		{"the runtime has it after all", []reapResult{{err: runtime.ErrTaskNotLost}},
			"Finished/Completed", "", 1},
		{"cannot tell, then can", []reapResult{{err: errors.New("unavailable")}, {msg: "nothing of it was left running"}},
			"Lost/AgentRestartLost", "container is gone: nothing of it was left running", 2},
		{"never can tell", []reapResult{{err: errors.New("unavailable")}},
			"Lost/AgentRestartLost", "container is gone (unavailable)", maxReaps},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := &recorder{}
			w := &goneWaiter{fakeWaiter: fakeWaiter{rec: rec, exit: make(chan runtime.ExitStatus, 1)}, reaps: tc.reaps}
			w.exit <- runtime.ExitStatus{}
			spec := task.Spec{ID: "t1"}
			spec.Normalize()
			prev := &Record{Spec: spec, Resources: Resources{Container: true, Pid: 9}}
			for _, s := range []task.State{task.Accepted, task.Preparing, task.Starting, task.Running} {
				prev.Status.Advance(s, task.ReasonNone, "", time.Now())
			}
			r := New(Config{Stages: [][]PrestartHook{{&fakeHook{name: "container", rec: rec}}}, Runtime: w, Store: &fakeStore{}, Logger: quiet}, prev)
			go r.Restore(context.Background(), nil)
			waitDone(t, r)
			v := r.View()
			got := states(v)
			if last := got[len(got)-1]; last != tc.wantState || v.Status.Message != tc.wantMsg {
				t.Errorf("ended %s %q, want %s %q", last, v.Status.Message, tc.wantState, tc.wantMsg)
			}
			if w.reaped != tc.wantReaps {
				t.Errorf("reaped %d times, want %d", w.reaped, tc.wantReaps)
			}
		})
	}
}

// durableHook leaves a write in the background (PrestartResponse.Durable),
// as the network hook leaves the address allocation's record.
type durableHook struct {
	rec  *recorder
	gate chan struct{}
	err  error
}

func (h *durableHook) Name() string { return "network" }
func (h *durableHook) Prestart(ctx context.Context, req *PrestartRequest, resp *PrestartResponse) error {
	h.rec.add("prestart network")
	resp.Env = map[string]string{"net": "1"}
	resp.Durable = func(context.Context) error {
		<-h.gate
		h.rec.add("network durable")
		return h.err
	}
	return nil
}
func (h *durableHook) Stop(ctx context.Context, req *StopRequest) error {
	h.rec.add("stop network")
	return nil
}

// The task's process starts only once what a hook left writing is on
// disk; if that write fails, it never starts and the launch fails.
func TestProcessStartsAfterHooksDurable(t *testing.T) {
	for _, tc := range []struct {
		name  string
		err   error
		state task.State
		want  []string
	}{
		{"written", nil, task.Running, []string{"prestart network", "prestart disk", "network durable", "prestart container"}},
		{"write failed", errors.New("disk full"), task.Failed, []string{"prestart network", "prestart disk", "network durable", "stop container", "stop disk", "stop network"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := &recorder{}
			net := &durableHook{rec: rec, gate: make(chan struct{}), err: tc.err}
			hooks := [][]PrestartHook{
				{net},
				{&fakeHook{name: "disk", rec: rec}},
				{&fakeHook{name: "container", rec: rec, pid: 42}},
			}
			w := &fakeWaiter{rec: &recorder{}, exit: make(chan runtime.ExitStatus, 1)}
			r, _ := newTestRunner(t, rec, hooks, w, task.Spec{ID: "t1"})
			go r.Run(context.Background())
			waitState(t, r, task.Starting)
			time.Sleep(20 * time.Millisecond)
			if slices.Contains(rec.get(), "prestart container") {
				t.Fatal("the process started before the network's record was on disk")
			}
			close(net.gate)
			waitState(t, r, tc.state)
			if tc.state == task.Running {
				w.exit <- runtime.ExitStatus{}
			}
			waitDone(t, r)
			got := rec.get()
			if tc.state == task.Running {
				got = got[:len(tc.want)]
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("ops (-want +got):\n%s", diff)
			}
		})
	}
}
