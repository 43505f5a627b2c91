package taskrunner

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"

	"github.com/titus-agent/titus-agent/pkg/runtime"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// Record is everything the agent persists about one task.
type Record struct {
	Spec      task.Spec   `json:"spec"`
	Status    task.Status `json:"status"`
	Resources Resources   `json:"resources"`
	// CleanedUp is set once every stop hook has succeeded after a final state.
	CleanedUp bool `json:"cleanedUp,omitempty"`
	// LaunchResumed is set when a restarted agent resumes a launch the
	// previous one cut short; a launch is resumed once, then it is Lost.
	LaunchResumed bool `json:"launchResumed,omitempty"`
}

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
	Stages  [][]PrestartHook
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
}

// Runner owns one task. Exactly one goroutine (Run or Restore) drives it.
type Runner struct {
	cfg Config
	log *slog.Logger

	// agentCtx is the agent's life, set by Run or Restore.
	agentCtx context.Context

	mu         sync.Mutex
	rec        *Record
	killed     *killRequest
	prepCancel context.CancelFunc

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

// Done is closed when the runner goroutine returns (task final and cleaned
// up, or the agent shutting down).
func (r *Runner) Done() <-chan struct{} { return r.done }

// Kill asks the task to stop: SIGTERM, then SIGKILL after grace. It returns
// at once; watch the state. Killing twice keeps the first reason.
func (r *Runner) Kill(grace time.Duration, reason task.Reason) {
	r.mu.Lock()
	if r.killed == nil {
		if grace <= 0 {
			grace = r.rec.Spec.KillGracePeriod
		}
		r.killed = &killRequest{grace: grace, reason: reason}
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

func (r *Runner) killRequest() *killRequest {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.killed
}

// advance moves the task forward, persists, and notifies. The new state
// becomes visible (View) only once it is on disk.
func (r *Runner) advance(s task.State, reason task.Reason, msg string, mutate func(*Record)) error {
	r.mu.Lock()
	next := *r.rec
	next.Status.Transitions = slices.Clone(r.rec.Status.Transitions)
	r.mu.Unlock()
	if mutate != nil {
		mutate(&next)
	}
	if _, err := next.Status.Advance(s, reason, msg, r.cfg.Now()); err != nil {
		return err
	}
	if err := r.cfg.Store.Save(&next); err != nil {
		return fmt.Errorf("persist %s: %w", s, err)
	}
	r.mu.Lock()
	*r.rec = next
	r.mu.Unlock()
	r.log.Info("task state", "state", s, "reason", reason, "msg", msg)
	if r.cfg.Notify != nil {
		st := next.Status
		st.Transitions = slices.Clone(st.Transitions)
		r.cfg.Notify(task.Event{TaskID: next.Spec.ID, Status: st})
	}
	return nil
}

func (r *Runner) save(mutate func(*Record)) error {
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

// Run drives a newly accepted task to its end. Cancelling agentCtx (agent
// shutdown) makes Run return without touching the task.
func (r *Runner) Run(agentCtx context.Context) {
	defer close(r.done)
	r.agentCtx = agentCtx
	if err := r.advance(task.Preparing, task.ReasonNone, "", nil); err != nil {
		r.log.Error("advance", "err", err)
		return
	}
	r.launch(agentCtx)
}

// launch runs the prestart hooks and starts the task, then watches it.
func (r *Runner) launch(agentCtx context.Context) {
	prepCtx, cancel := context.WithCancel(agentCtx)
	r.mu.Lock()
	r.prepCancel = cancel
	if r.killed != nil {
		cancel()
	}
	r.mu.Unlock()
	unsaved, err := r.prestart(prepCtx)
	cancel()
	if agentCtx.Err() != nil {
		// Agent shutting down: the next agent re-adopts or cleans up what
		// the record says was created.
		if unsaved {
			if err := r.saveResources(); err != nil {
				r.log.Error("at shutdown", "err", err)
			}
		}
		return
	}
	if k := r.killRequest(); k != nil {
		r.finish(task.Killed, k.reason, "killed before start", 0, nil)
		return
	}
	if err != nil {
		reason := task.ReasonPlatformError
		var he *HookError
		if errors.As(err, &he) {
			reason = he.Reason
		}
		r.finish(task.Failed, reason, err.Error(), -1, nil)
		return
	}
	// The container stage's resources are persisted with this transition.
	if err := r.advance(task.Running, task.ReasonStarted, "", func(rec *Record) { rec.Status.Pid = rec.Resources.Pid }); err != nil {
		r.log.Error("advance", "err", err)
	}
	r.wait(agentCtx)
}

// prestart runs the stages in order. What a stage created is in the
// in-memory record at once (a kill tears it down) and on disk before the
// next stage acts, with the Starting transition when that follows, else in
// a save of its own; after a failure it is saved before returning. What
// the last stage created is left for the caller to persist (unsaved), with
// the Running transition: one fsync per launch fewer.
func (r *Runner) prestart(ctx context.Context) (unsaved bool, err error) {
	for i, stage := range r.cfg.Stages {
		switch {
		case i == len(r.cfg.Stages)-1 && r.state() < task.Starting: // a resumed launch may be Starting already
			if err := r.advance(task.Starting, task.ReasonNone, "", nil); err != nil {
				return false, err
			}
		case unsaved:
			if err := r.saveResources(); err != nil {
				return false, err
			}
		}
		unsaved, err = r.runStage(ctx, stage)
		if err != nil {
			// Record whatever was created, even by a stage that partly
			// failed, so teardown (now or after a restart) finds it.
			if unsaved {
				err = errors.Join(err, r.saveResources())
			}
			return false, err
		}
	}
	return unsaved, nil
}

// state is the task's current state.
func (r *Runner) state() task.State {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.rec.Status.State
}

// saveResources persists the in-memory record, which holds what the hooks
// created so far.
func (r *Runner) saveResources() error {
	if err := r.save(func(*Record) {}); err != nil {
		return fmt.Errorf("persist resources: %w", err)
	}
	return nil
}

// runStage runs one stage's hooks in parallel and merges what they created
// into the in-memory record; changed says whether there is anything to
// persist.
func (r *Runner) runStage(ctx context.Context, stage []PrestartHook) (changed bool, _ error) {
	r.mu.Lock()
	res := r.rec.Resources
	spec := r.rec.Spec
	r.mu.Unlock()
	resps := make([]PrestartResponse, len(stage))
	errs := make([]error, len(stage))
	var wg sync.WaitGroup
	for i, h := range stage {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := r.cfg.Now()
			errs[i] = h.Prestart(ctx, &PrestartRequest{Spec: &spec, Resources: &res}, &resps[i])
			took := r.cfg.Now().Sub(start)
			r.log.Debug("prestart hook", "hook", h.Name(), "took", took, "err", errs[i])
			if r.cfg.Observe != nil && errs[i] == nil {
				r.cfg.Observe(h.Name(), took)
			}
		}()
	}
	wg.Wait()
	r.mu.Lock()
	for i := range resps {
		if !resps[i].empty() {
			r.rec.Resources.merge(&resps[i])
			changed = true
		}
	}
	r.mu.Unlock()
	return changed, errors.Join(errs...)
}

// Restore re-adopts a task after an agent restart: it re-creates in-memory
// hook state and resumes waiting on the container, gives the task its
// final state if it ended while the agent was away, or resumes a launch
// the previous agent cut short (once; prestart hooks are idempotent).
func (r *Runner) Restore(agentCtx context.Context, restoreHooks []RestoreHook) {
	defer close(r.done)
	r.agentCtx = agentCtx
	r.mu.Lock()
	rec := *r.rec
	r.mu.Unlock()
	switch {
	case rec.Status.State.Terminal():
		if !rec.CleanedUp {
			r.teardown()
		}
		return
	case rec.Resumable():
		if err := r.save(func(rec *Record) { rec.LaunchResumed = true }); err != nil {
			r.finish(task.Lost, task.ReasonAgentRestartLost, "agent restarted before the task started", -1, nil)
			return
		}
		r.log.Info("resuming a launch cut short by an agent restart", "state", rec.Status.State)
		r.launch(agentCtx)
		return
	case rec.Status.State < task.Starting || !rec.Resources.Container:
		r.finish(task.Lost, task.ReasonAgentRestartLost, "agent restarted again before the task started", -1, nil)
		return
	}
	for _, h := range restoreHooks {
		if err := h.Restore(agentCtx, &StopRequest{Spec: &rec.Spec, Resources: &rec.Resources}); err != nil {
			r.log.Warn("restore hook failed", "hook", h.Name(), "err", err)
		}
	}
	if rec.Status.State == task.Starting {
		pid := rec.Resources.Pid
		if err := r.advance(task.Running, task.ReasonStarted, "re-adopted after agent restart", func(rec *Record) { rec.Status.Pid = pid }); err != nil {
			r.log.Error("advance", "err", err)
		}
	}
	if rec.Status.State == task.Killing {
		r.Kill(rec.Spec.KillGracePeriod, task.ReasonKilledByUser)
	}
	r.wait(agentCtx)
}

// wait watches the running task until it exits, handling kills and the
// runtime limit. It returns early only when the agent shuts down.
func (r *Runner) wait(agentCtx context.Context) {
	id := r.rec.Spec.ID
	var runtimeLimit <-chan time.Time
	if max := r.rec.Spec.MaxRuntime; max > 0 {
		started := r.startedAt()
		t := time.NewTimer(max - r.cfg.Now().Sub(started))
		defer t.Stop()
		runtimeLimit = t.C
	}
	var sigkill <-chan time.Time
	backoff := 100 * time.Millisecond
	for {
		exitCh, err := r.cfg.Runtime.Wait(agentCtx, id)
		if err != nil {
			if agentCtx.Err() != nil {
				return
			}
			if errors.Is(err, runtime.ErrContainerNotFound) || errdefs.IsNotFound(err) {
				r.finish(task.Lost, task.ReasonAgentRestartLost, "container is gone", -1, nil)
				return
			}
			r.log.Warn("wait failed; retrying", "err", err)
			select {
			case <-agentCtx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, 5*time.Second)
			continue
		}
		for exitCh != nil {
			select {
			case <-agentCtx.Done():
				return
			case st := <-exitCh:
				if st.Err != nil {
					r.log.Warn("lost the runtime while waiting; re-attaching", "err", st.Err)
					exitCh = nil
					break
				}
				r.exited(st)
				return
			case <-runtimeLimit:
				runtimeLimit = nil
				r.Kill(r.rec.Spec.KillGracePeriod, task.ReasonRuntimeLimitExceeded)
			case <-r.killCh:
				k := r.killRequest()
				if err := r.advance(task.Killing, k.reason, "", nil); err != nil {
					r.log.Debug("advance killing", "err", err)
				}
				if err := r.cfg.Runtime.Kill(context.WithoutCancel(agentCtx), id, syscall.SIGTERM); err != nil {
					r.log.Warn("SIGTERM", "err", err)
				}
				t := time.NewTimer(k.grace)
				defer t.Stop()
				sigkill = t.C
			case <-sigkill:
				sigkill = nil
				r.log.Info("grace period over; SIGKILL")
				if err := r.cfg.Runtime.Kill(context.WithoutCancel(agentCtx), id, syscall.SIGKILL); err != nil {
					r.log.Warn("SIGKILL", "err", err)
				}
			}
		}
		select {
		case <-agentCtx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

func (r *Runner) startedAt() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, t := range r.rec.Status.Transitions {
		if t.State == task.Running {
			return t.Time
		}
	}
	return r.cfg.Now()
}

func (r *Runner) exited(st runtime.ExitStatus) {
	code := int32(st.Code)
	restored := r.wasRestored()
	switch k := r.killRequest(); {
	case st.OOMKilled:
		msg := fmt.Sprintf("the task exceeded its memory limit of %d MiB", r.rec.Spec.Resources.MemoryMiB)
		if st.PeakMemoryBytes > 0 {
			msg += fmt.Sprintf(" (peak %.1f MiB)", float64(st.PeakMemoryBytes)/(1<<20))
		}
		r.finish(task.Failed, task.ReasonOOMKilled, msg, code, nil)
	case k != nil:
		r.finish(task.Killed, k.reason, fmt.Sprintf("exit code %d", code), code, nil)
	case code == 0:
		r.finish(task.Finished, task.ReasonCompleted, msgIf(restored), code, nil)
	default:
		r.finish(task.Failed, task.ReasonNonZeroExit, fmt.Sprintf("exit code %d%s", code, suffixIf(restored)), code, nil)
	}
}

func (r *Runner) wasRestored() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, t := range r.rec.Status.Transitions {
		if t.State == task.Running && t.Message != "" {
			return true
		}
	}
	return false
}

func msgIf(restored bool) string {
	if restored {
		return "exited while the agent was away"
	}
	return ""
}

func suffixIf(restored bool) string {
	if restored {
		return " (" + msgIf(true) + ")"
	}
	return ""
}

// finish records the final state first (so the exit code is never lost),
// then tears down, then records that teardown completed.
func (r *Runner) finish(s task.State, reason task.Reason, msg string, code int32, _ error) {
	// The final state goes to disk before anything is torn down: if it
	// cannot be written (a full state disk), it is tried again until it
	// can, and an agent shutting down meanwhile leaves the container for
	// the next agent, which reads the same exit status from it.
	recorded := r.untilDone("record the final state", func() error {
		err := r.advance(s, reason, msg, func(rec *Record) { rec.Status.ExitCode = code })
		if errors.Is(err, task.ErrBackwardTransition) {
			return nil // already final
		}
		return err
	})
	if !recorded {
		return
	}
	r.teardown()
}

// teardown runs every stop hook in reverse stage order on a context that no
// agent shutdown cancels, again and again while any fails, until all
// succeed or the agent shuts down.
func (r *Runner) teardown() {
	if !r.untilDone("teardown", r.stopHooks) {
		return
	}
	if err := r.save(func(rec *Record) { rec.CleanedUp = true }); err != nil {
		r.log.Error("persist cleanup", "err", err)
	}
}

// untilDone calls fn until it succeeds, waiting TeardownRetry, doubling up
// to a minute, between tries. It gives up (false) when the agent shuts down:
// the next agent start takes it up from the record.
func (r *Runner) untilDone(what string, fn func() error) bool {
	wait := r.cfg.TeardownRetry
	for {
		err := fn()
		if err == nil {
			return true
		}
		if r.agentCtx == nil || r.agentCtx.Err() != nil {
			r.log.Error(what+" failed; the next agent start retries", "err", err)
			return false
		}
		r.log.Error(what+" failed; retrying", "err", err, "in", wait)
		select {
		case <-r.agentCtx.Done():
			r.log.Error(what+" failed; the next agent start retries", "err", err)
			return false
		case <-time.After(wait):
		}
		wait = min(2*wait, time.Minute)
	}
}

// stopHooks runs every stop hook once, in reverse stage order.
func (r *Runner) stopHooks() error {
	ctx, cancel := context.WithTimeout(context.Background(), r.cfg.TeardownTimeout)
	defer cancel()
	r.mu.Lock()
	spec, res := r.rec.Spec, r.rec.Resources
	r.mu.Unlock()
	var errs []error
	for i := len(r.cfg.Stages) - 1; i >= 0; i-- {
		stage := r.cfg.Stages[i]
		for j := len(stage) - 1; j >= 0; j-- {
			h, ok := stage[j].(StopHook)
			if !ok {
				continue
			}
			if err := h.Stop(ctx, &StopRequest{Spec: &spec, Resources: &res}); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", h.Name(), err))
			}
		}
	}
	return errors.Join(errs...)
}
