package taskrunner

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"

	"github.com/titus-agent/titus-agent/pkg/backoff"
	"github.com/titus-agent/titus-agent/pkg/runtime"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// Run drives a newly accepted task to its end. Cancelling agentCtx (agent
// shutdown) makes Run return without touching the task.
func (r *Runner) Run(agentCtx context.Context) {
	defer close(r.done)
	r.agentCtx = agentCtx
	// The manager records a new task Preparing already; a record of an
	// older agent may be Accepted only.
	if r.state() < task.Preparing {
		if err := r.advance(task.Preparing, task.ReasonNone, "", nil); err != nil {
			r.log.Error("advance", "err", err)
			return
		}
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
	leave := r.cfg.Launches.Enter()
	defer leave()
	unsaved, err := r.prestart(prepCtx)
	cancel()
	if err != nil || agentCtx.Err() != nil {
		leave() // what follows is teardown, not a launch
	}
	r.dropSecretEnv()
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
		r.finish(task.Killed, k.reason, k.why("killed before start"), 0)
		return
	}
	if err != nil {
		reason := task.ReasonPlatformError
		var he *HookError
		if errors.As(err, &he) {
			reason = he.Reason
		}
		if errors.Is(err, syscall.ENOSPC) {
			// The host's disk, not the task: nothing ran; the
			// scheduler places it elsewhere without a failure.
			reason = task.ReasonHostDiskFull
		}
		r.finish(task.Failed, reason, err.Error(), -1)
		return
	}
	// The container stage's resources are persisted with this transition.
	if err := r.advance(task.Running, task.ReasonStarted, "", func(rec *Record) { rec.Status.Pid = rec.Resources.Pid }); err != nil {
		r.log.Error("advance", "err", err)
	}
	leave()
	r.poststart(agentCtx)
	r.wait(agentCtx)
}

// prestart prepares the task and starts its container.
//
// The hooks of every stage but the last form a graph, not a sequence of
// barriers: a hook that names what it needs (Config.Needs) starts as
// soon as those hooks are done, any other one once every earlier stage
// is done; what each hook creates is merged into the in-memory record
// as it ends (a kill tears it down, and the hooks that need it read it).
// None of it is written on its own: a hook must be safe to repeat, and
// tears down by the task's id, so a crash while preparing leaves nothing
// that the resumed launch or the teardown would not find anyway.
//
// The last stage starts the container. Its record (Starting, with every
// resource made so far) is written while the container is created, and
// the container hook waits for that write before the task's process
// starts (PrestartRequest.Recorded): a started container always has its
// record. What the last stage created is left for the caller to persist
// (unsaved), with the Running transition.
func (r *Runner) prestart(ctx context.Context) (unsaved bool, err error) {
	n := len(r.cfg.Stages)
	if n == 0 {
		return false, nil
	}
	changed, err := r.prepare(ctx, r.cfg.Stages[:n-1])
	if err != nil {
		// Record whatever was created, even by a hook that partly
		// failed, so teardown (now or after a restart) finds it.
		if changed {
			err = errors.Join(err, r.saveResources())
		}
		return false, err
	}
	var write func() error
	switch {
	case r.state() < task.Starting:
		at := r.cfg.Now()
		write = func() error { return r.advanceAt(task.Starting, task.ReasonNone, "", nil, at) }
	case changed: // a resumed launch, Starting already
		write = r.saveResources
	}
	unsaved, err = r.runStage(ctx, r.cfg.Stages[n-1], recordInBackground(r.withDurable(ctx, write)))
	if err != nil {
		if unsaved {
			err = errors.Join(err, r.saveResources())
		}
		return false, err
	}
	return unsaved, nil
}

// withDurable adds to write the waits hooks left (PrestartResponse.Durable),
// run beside it: the process starts once all are on disk.
func (r *Runner) withDurable(ctx context.Context, write func() error) func() error {
	r.mu.Lock()
	ds := r.durable
	r.durable = nil
	r.mu.Unlock()
	if len(ds) == 0 {
		return write
	}
	return func() error {
		errs := make([]error, len(ds)+1)
		var wg sync.WaitGroup
		for i, d := range ds {
			wg.Go(func() { errs[i] = d(ctx) })
		}
		if write != nil {
			errs[len(ds)] = write()
		}
		wg.Wait()
		return errors.Join(errs...)
	}
}

// recordInBackground starts write at once and returns what waits for its
// result (nil for a nil write).
func recordInBackground(write func() error) func() error {
	if write == nil {
		return nil
	}
	done := make(chan error, 1)
	go func() { done <- write() }()
	var once sync.Once
	var err error
	return func() error {
		once.Do(func() { err = <-done })
		return err
	}
}

// prepare runs the hooks of stages as a graph (see prestart): each starts
// when what it needs is done, none after a hook failed. changed says
// whether any hook created something to persist.
func (r *Runner) prepare(ctx context.Context, stages [][]PrestartHook) (changed bool, _ error) {
	type node struct {
		hook  PrestartHook
		needs []*node
		done  chan struct{}
		ok    bool
	}
	var all, earlier []*node
	byName := map[string]*node{}
	for _, stage := range stages {
		var this []*node
		for _, h := range stage {
			nd := &node{hook: h, done: make(chan struct{}), needs: earlier}
			if names, ok := r.cfg.Needs[h.Name()]; ok {
				nd.needs = nil
				for _, name := range names {
					// Only hooks of earlier stages: the graph has
					// no cycle. A need this agent does not run
					// (no metadata service) is met.
					if dep := byName[name]; dep != nil && slices.Contains(earlier, dep) {
						nd.needs = append(nd.needs, dep)
					}
				}
			}
			this = append(this, nd)
		}
		for _, nd := range this {
			byName[nd.hook.Name()] = nd
		}
		earlier = append(slices.Clip(earlier), this...)
		all = append(all, this...)
	}
	var (
		mu     sync.Mutex
		errs   []error
		failed bool
	)
	var wg sync.WaitGroup
	for _, nd := range all {
		wg.Go(func() {
			defer close(nd.done)
			// A hook that had to wait does not start after any hook
			// failed: the launch is over.
			for _, dep := range nd.needs {
				<-dep.done
				if !dep.ok {
					return
				}
			}
			mu.Lock()
			stop := failed && len(nd.needs) > 0
			mu.Unlock()
			if stop {
				return
			}
			c, err := r.runHook(ctx, nd.hook)
			mu.Lock()
			defer mu.Unlock()
			changed = changed || c
			if err != nil {
				failed = true
				errs = append(errs, err)
				return
			}
			nd.ok = true
		})
	}
	wg.Wait()
	return changed, errors.Join(errs...)
}

// saveResources persists the in-memory record, which holds what the hooks
// created so far.
func (r *Runner) saveResources() error {
	if err := r.save(func(*Record) {}); err != nil {
		return fmt.Errorf("persist resources: %w", err)
	}
	return nil
}

// runHook runs one prestart hook on the record as it is now and merges
// what the hook created into the in-memory record; changed says whether
// there is anything to persist.
func (r *Runner) runHook(ctx context.Context, h PrestartHook) (changed bool, err error) {
	r.mu.Lock()
	res := r.rec.Resources
	spec := r.rec.Spec
	r.mu.Unlock()
	var resp PrestartResponse
	start := r.cfg.Now()
	err = h.Prestart(ctx, &PrestartRequest{Spec: &spec, Resources: &res}, &resp)
	took := r.cfg.Now().Sub(start)
	r.log.Debug("prestart hook", "hook", h.Name(), "took", took, "err", err)
	r.merge(&resp, task.Step{Name: h.Name(), Start: start.UTC(), Took: took, Failed: err != nil})
	if resp.Durable != nil {
		r.mu.Lock()
		r.durable = append(r.durable, resp.Durable)
		r.mu.Unlock()
	}
	return !resp.empty(), err
}

// merge adds a hook's response and steps (the runtime steps within it,
// then its own) to the in-memory record.
func (r *Runner) merge(resp *PrestartResponse, hookStep task.Step) {
	steps := append(slices.Clip(resp.Steps), hookStep)
	if r.cfg.Observe != nil {
		for _, s := range steps {
			if !s.Failed {
				r.cfg.Observe(s.Name, s.Took)
			}
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.steps = append(r.steps, steps...)
	if !resp.empty() {
		r.rec.Resources.merge(resp)
	}
}

// dropSecretEnv forgets the values of env secrets once the container was
// created with them (or the launch failed): the agent holds no value longer
// than a launch.
func (r *Runner) dropSecretEnv() {
	r.mu.Lock()
	r.rec.Resources.SecretEnv = nil
	r.mu.Unlock()
}

// runStage runs one stage's hooks in parallel, each on the record as it
// was before the stage, and merges what they created into the in-memory
// record; changed says whether there is anything to persist. recorded, if
// not nil, is handed to the hooks and waited for before runStage returns,
// whatever the hooks did: the record it writes is then in place before
// anything else changes it.
func (r *Runner) runStage(ctx context.Context, stage []PrestartHook, recorded func() error) (changed bool, _ error) {
	r.mu.Lock()
	res := r.rec.Resources
	spec := r.rec.Spec
	r.mu.Unlock()
	resps := make([]PrestartResponse, len(stage))
	errs := make([]error, len(stage))
	hookSteps := make([]task.Step, len(stage))
	var wg sync.WaitGroup
	for i, h := range stage {
		wg.Go(func() {
			start := r.cfg.Now()
			errs[i] = h.Prestart(ctx, &PrestartRequest{Spec: &spec, Resources: &res, Recorded: recorded}, &resps[i])
			took := r.cfg.Now().Sub(start)
			hookSteps[i] = task.Step{Name: h.Name(), Start: start.UTC(), Took: took, Failed: errs[i] != nil}
			r.log.Debug("prestart hook", "hook", h.Name(), "took", took, "err", errs[i])
		})
	}
	wg.Wait()
	if recorded != nil {
		if err := recorded(); err != nil {
			errs = append(errs, fmt.Errorf("record the launch: %w", err))
		}
	}
	for i := range stage {
		r.merge(&resps[i], hookSteps[i])
		changed = changed || !resps[i].empty()
	}
	return changed, errors.Join(errs...)
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
	retry := backoff.New(reattachBackoff)
	reaps := 0
	for {
		exitCh, err := r.cfg.Runtime.Wait(agentCtx, id)
		if err != nil {
			if agentCtx.Err() != nil {
				return
			}
			if errors.Is(err, runtime.ErrContainerNotFound) || errdefs.IsNotFound(err) {
				reaps++
				msg, lost := r.reapLost(agentCtx, id, reaps >= maxReaps)
				if lost {
					r.finish(task.Lost, task.ReasonAgentRestartLost, msg, -1)
					return
				}
				if !retry.Wait(agentCtx) {
					return
				}
				continue
			}
			r.log.Warn("wait failed; retrying", "err", err)
			if !retry.Wait(agentCtx) {
				return
			}
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
				r.Kill(r.rec.Spec.KillGracePeriod, task.ReasonRuntimeLimitExceeded, "")
			case <-r.killCh:
				k := r.killRequest()
				// A task being killed is not checked any more: its
				// health stays as it was.
				if err := r.stopPoststart(context.WithoutCancel(agentCtx)); err != nil {
					r.log.Warn("stop poststart hooks", "err", err)
				}
				if err := r.advance(task.Killing, k.reason, k.msg, nil); err != nil {
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
		if !retry.Wait(agentCtx) {
			return
		}
	}
}

// LostReaper is what a Waiter may also do for a task the runtime answers
// NotFound for: make sure the runtime really has no such task, kill what
// is left of it outside the runtime, and say what it found
// (runtime.Runtime.ReapLost). runtime.ErrTaskNotLost: the runtime has it.
type LostReaper interface {
	ReapLost(ctx context.Context, id string) (string, error)
}

// maxReaps bounds how often a task the runtime answers NotFound for is
// checked (ReapLost failing to tell) before it is given up as lost.
const maxReaps = 5

// reapLost says whether the task is lost, with the final message: without
// a LostReaper, "container is gone"; with one, what it found and killed.
// A task the runtime has after all is not lost, nor one it could not tell
// about (unless last): the caller waits again.
func (r *Runner) reapLost(ctx context.Context, id string, last bool) (string, bool) {
	lr, ok := r.cfg.Runtime.(LostReaper)
	if !ok {
		return "container is gone", true
	}
	msg, err := lr.ReapLost(context.WithoutCancel(ctx), id)
	switch {
	case errors.Is(err, runtime.ErrTaskNotLost):
		r.log.Warn("the runtime answered NotFound but has the task; waiting again")
		return "", false
	case err != nil && msg == "":
		r.log.Warn("could not tell what is left of a task the runtime lost", "err", err)
		return "container is gone (" + err.Error() + ")", last
	case err != nil:
		r.log.Warn("cleaning up what is left of a task the runtime lost", "err", err)
	}
	r.log.Warn("the runtime lost the task", "what", msg)
	return "container is gone: " + msg, true
}

// reattachBackoff paces re-attaching to a task while the (local) runtime is
// away.
var reattachBackoff = backoff.Policy{Base: 100 * time.Millisecond, Max: 5 * time.Second}

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
		r.finish(task.Failed, task.ReasonOOMKilled, msg, code)
	case k != nil:
		r.finish(task.Killed, k.reason, k.why(fmt.Sprintf("exit code %d", code)), code)
	case code == 0:
		r.finish(task.Finished, task.ReasonCompleted, msgIf(restored), code)
	default:
		r.finish(task.Failed, task.ReasonNonZeroExit, fmt.Sprintf("exit code %d%s", code, suffixIf(restored)), code)
	}
}
