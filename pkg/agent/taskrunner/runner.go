package taskrunner

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/titus-agent/titus-agent/pkg/refill"
	"github.com/titus-agent/titus-agent/pkg/runtime"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// Record is everything the agent persists about one task.
type Record struct {
	// Version is the record's schema version (RecordVersion when written
	// by this agent; version 1 records have none). The store migrates
	// older versions when it loads them.
	Version   int         `json:"version,omitempty"`
	Spec      task.Spec   `json:"spec"`
	Status    task.Status `json:"status"`
	Resources Resources   `json:"resources"`
	// CleanedUp is set once every stop hook has succeeded after a final state.
	CleanedUp bool `json:"cleanedUp,omitempty"`
	// LaunchResumed is set when a restarted agent resumes a launch the
	// previous one cut short; a launch is resumed once, then it is Lost.
	LaunchResumed bool `json:"launchResumed,omitempty"`
}

// RecordVersion is the schema version of the records this agent writes.
// Version 1 (no version field) embedded isolation.UserNS and specs.Mount;
// version 2 has the record's own types with the same JSON names.
const RecordVersion = 2

// Resumable says whether a restarted agent resumes this task's launch: it
// was being prepared or started and no container of it is known to have
// started. Its half-made container, if any, must go first.
func (r *Record) Resumable() bool {
	return !r.LaunchResumed && r.Status.State >= task.Preparing && r.Status.State <= task.Starting && !r.Resources.Container
}

// View returns the operator's view of the record.
func (r *Record) View() task.View {
	v := task.View{Spec: r.Spec, Status: r.Status, Network: r.Resources.Network}
	v.Status.Transitions = append([]task.Transition(nil), r.Status.Transitions...)
	return v
}

// Waiter is what the runner needs from the container runtime to watch a task.
type Waiter interface {
	Wait(ctx context.Context, id string) (<-chan runtime.ExitStatus, error)
	Kill(ctx context.Context, id string, sig syscall.Signal) error
}

// Persister durably stores a task record; Save must not return before the
// record is on disk.
type Persister interface {
	Save(rec *Record) error
}

// Config wires a runner.
type Config struct {
	// Stages run in order; the hooks within a stage run in parallel. The
	// task is Starting while the last stage runs (it starts the container).
	// A hook named in Needs does not wait for every earlier stage, only
	// for the hooks of earlier stages it names (see prestart).
	Stages  [][]PrestartHook
	Needs   map[string][]string
	Runtime Waiter
	Store   Persister
	Notify  func(task.Event)
	Logger  *slog.Logger
	Now     func() time.Time
	// TeardownTimeout bounds the stop hooks of one task.
	TeardownTimeout time.Duration
	// TeardownRetry is the first wait before a failed teardown runs again;
	// the wait doubles up to a minute, until the teardown succeeds or the
	// agent shuts down (the next agent then retries). Default 1s.
	TeardownRetry time.Duration
	// Observe, if set, gets each prestart hook's duration (metrics).
	Observe func(hook string, d time.Duration)
	// Poststart hooks run once the task runs, and after re-adoption.
	Poststart []PoststartHook
	// Launches, if set, is entered from the first prestart hook until the
	// task is recorded Running (or its launch failed): the launch pools'
	// refill waits while a launch is on its critical path.
	Launches *refill.Gate
}

// HookError carries the reason a prestart hook failed.
type HookError struct {
	Hook   string
	Reason task.Reason
	Err    error
}

func (e *HookError) Error() string { return e.Hook + ": " + e.Err.Error() }
func (e *HookError) Unwrap() error { return e.Err }

type killRequest struct {
	grace  time.Duration
	reason task.Reason
	msg    string
}

// Runner owns one task. Exactly one goroutine (Run or Restore) drives it.
type Runner struct {
	cfg Config
	log *slog.Logger

	// agentCtx is the agent's life, set by Run or Restore.
	agentCtx context.Context

	// writeMu orders the writers of the record (the runner goroutine and
	// health reports), so that none overwrites another's change.
	writeMu sync.Mutex

	mu         sync.Mutex
	rec        *Record
	killed     *killRequest
	prepCancel context.CancelFunc
	// steps are the launch steps that ended since the last transition;
	// the next transition records them.
	steps []task.Step
	// durable are what hooks left to finish writing (PrestartResponse.Durable),
	// waited for with the record written before the process starts.
	durable []func(context.Context) error

	killCh chan struct{}
	done   chan struct{}
}

// New makes a runner for a record that is already persisted.
func New(cfg Config, rec *Record) *Runner {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.TeardownTimeout == 0 {
		cfg.TeardownTimeout = 2 * time.Minute
	}
	if cfg.TeardownRetry == 0 {
		cfg.TeardownRetry = time.Second
	}
	return &Runner{
		cfg:    cfg,
		log:    cfg.Logger.With("task", rec.Spec.ID),
		rec:    rec,
		killCh: make(chan struct{}, 1),
		done:   make(chan struct{}),
	}
}

// View is a copy of the task's current record.
func (r *Runner) View() task.View {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.rec.View()
}

// HeldGPUs are the GPU indices the task holds: from its Accepted record
// until its teardown completed (its container is gone).
func (r *Runner) HeldGPUs() []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.rec.Status.State.Terminal() && r.rec.CleanedUp {
		return nil
	}
	return r.rec.Resources.GPUs.Indices()
}

// HeldImage is the image the task holds, from its Accepted record until
// its teardown completed: the reference its spec names and, once pulled,
// what it resolved to (nil before). held is false after the teardown.
func (r *Runner) HeldImage() (ref string, img *runtime.Image, held bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.rec.Status.State.Terminal() && r.rec.CleanedUp {
		return "", nil, false
	}
	if i := r.rec.Resources.Image; i != nil {
		c := *i
		img = &c
	}
	return r.rec.Spec.Image, img, true
}

// Done is closed when the runner goroutine returns (task final and cleaned
// up, or the agent shutting down).
func (r *Runner) Done() <-chan struct{} { return r.done }

// Kill asks the task to stop: SIGTERM, then SIGKILL after grace. It returns
// at once; watch the state. Killing twice keeps the first reason. msg, if
// not empty, says why (the Killing transition and the final message).
func (r *Runner) Kill(grace time.Duration, reason task.Reason, msg string) {
	r.mu.Lock()
	if r.killed == nil {
		if grace <= 0 {
			grace = r.rec.Spec.KillGracePeriod
		}
		r.killed = &killRequest{grace: grace, reason: reason, msg: msg}
	}
	if r.prepCancel != nil {
		r.prepCancel()
	}
	r.mu.Unlock()
	select {
	case r.killCh <- struct{}{}:
	default:
	}
}

// why is what the kill's final message says: its own message, if any,
// then what happened.
func (k *killRequest) why(what string) string {
	if k.msg == "" {
		return what
	}
	return k.msg + "; " + what
}

func (r *Runner) killRequest() *killRequest {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.killed
}

// advance moves the task forward, persists, and notifies. The new state
// becomes visible (View) only once it is on disk.
func (r *Runner) advance(s task.State, reason task.Reason, msg string, mutate func(*Record)) error {
	return r.advanceAt(s, reason, msg, mutate, time.Time{})
}

// advanceAt is advance with the transition's time (zero: now).
func (r *Runner) advanceAt(s task.State, reason task.Reason, msg string, mutate func(*Record), at time.Time) error {
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	r.mu.Lock()
	next := *r.rec
	next.Status.Transitions = slices.Clone(r.rec.Status.Transitions)
	steps := slices.Clone(r.steps)
	r.mu.Unlock()
	// In the order they ended (hooks of a graph end in any order).
	slices.SortStableFunc(steps, func(a, b task.Step) int { return a.End().Compare(b.End()) })
	if mutate != nil {
		mutate(&next)
	}
	if at.IsZero() {
		at = r.cfg.Now()
	}
	n := len(next.Status.Transitions)
	if _, err := next.Status.Advance(s, reason, msg, at); err != nil {
		return err
	}
	if len(next.Status.Transitions) > n {
		next.Status.Transitions[n].Steps = steps
	}
	if err := r.cfg.Store.Save(&next); err != nil {
		return fmt.Errorf("persist %s: %w", s, err)
	}
	r.mu.Lock()
	*r.rec = next
	if len(next.Status.Transitions) > n {
		r.steps = r.steps[len(steps):]
	}
	r.mu.Unlock()
	r.log.Info("task state", "state", s, "reason", reason, "msg", msg)
	if r.cfg.Notify != nil {
		st := next.Status
		st.Transitions = slices.Clone(st.Transitions)
		r.cfg.Notify(task.Event{TaskID: next.Spec.ID, Status: st, IPv4: next.ipv4()})
	}
	return nil
}

func (r *Runner) save(mutate func(*Record)) error {
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	r.mu.Lock()
	next := *r.rec
	r.mu.Unlock()
	mutate(&next)
	if err := r.cfg.Store.Save(&next); err != nil {
		return err
	}
	r.mu.Lock()
	*r.rec = next
	r.mu.Unlock()
	return nil
}

// state is the task's current state.
func (r *Runner) state() task.State {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.rec.Status.State
}

// ipv4 is the task's VPC IPv4 address, "" before its network is set up.
func (r *Record) ipv4() string {
	if r.Resources.Network == nil {
		return ""
	}
	return r.Resources.Network.IPv4
}
