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
		r.finish(task.Failed, reason, err.Error(), -1)
		return
	}
	// The container stage's resources are persisted with this transition.
	if err := r.advance(task.Running, task.ReasonStarted, "", func(rec *Record) { rec.Status.Pid = rec.Resources.Pid }); err != nil {
		r.log.Error("advance", "err", err)
	}
	r.poststart(agentCtx)
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

// dropSecretEnv forgets the values of env secrets once the container was
// created with them (or the launch failed): the agent holds no value longer
// than a launch.
func (r *Runner) dropSecretEnv() {
	r.mu.Lock()
	r.rec.Resources.SecretEnv = nil
	r.mu.Unlock()
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
	hookSteps := make([]task.Step, len(stage))
	var wg sync.WaitGroup
	for i, h := range stage {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := r.cfg.Now()
			errs[i] = h.Prestart(ctx, &PrestartRequest{Spec: &spec, Resources: &res}, &resps[i])
			took := r.cfg.Now().Sub(start)
			hookSteps[i] = task.Step{Name: h.Name(), Start: start.UTC(), Took: took, Failed: errs[i] != nil}
			r.log.Debug("prestart hook", "hook", h.Name(), "took", took, "err", errs[i])
		}()
	}
	wg.Wait()
	// The stage's steps, the runtime steps within a hook before the hook,
	// in the order they ended.
	var steps []task.Step
	for i := range stage {
		steps = append(steps, resps[i].Steps...)
		steps = append(steps, hookSteps[i])
	}
	slices.SortStableFunc(steps, func(a, b task.Step) int { return a.End().Compare(b.End()) })
	if r.cfg.Observe != nil {
		for _, s := range steps {
			if !s.Failed {
				r.cfg.Observe(s.Name, s.Took)
			}
		}
	}
	r.mu.Lock()
	r.steps = append(r.steps, steps...)
	for i := range resps {
		if !resps[i].empty() {
			r.rec.Resources.merge(&resps[i])
			changed = true
		}
	}
	r.mu.Unlock()
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
	for {
		exitCh, err := r.cfg.Runtime.Wait(agentCtx, id)
		if err != nil {
			if agentCtx.Err() != nil {
				return
			}
			if errors.Is(err, runtime.ErrContainerNotFound) || errdefs.IsNotFound(err) {
				r.finish(task.Lost, task.ReasonAgentRestartLost, "container is gone", -1)
				return
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
