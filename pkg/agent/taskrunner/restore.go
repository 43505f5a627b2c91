package taskrunner

import (
	"context"

	"github.com/titus-agent/titus-agent/pkg/task"
)

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
			r.finish(task.Lost, task.ReasonAgentRestartLost, "agent restarted before the task started", -1)
			return
		}
		r.log.Info("resuming a launch cut short by an agent restart", "state", rec.Status.State)
		r.launch(agentCtx)
		return
	case rec.Status.State < task.Starting || !rec.Resources.Container:
		r.finish(task.Lost, task.ReasonAgentRestartLost, "agent restarted again before the task started", -1)
		return
	}
	for _, h := range restoreHooks {
		if err := h.Restore(agentCtx, &StopRequest{Spec: &rec.Spec, Resources: &rec.Resources}); err != nil {
			r.log.Warn("restore hook failed", "hook", h.Name(), "err", err)
		}
	}
	if rec.Status.State == task.Starting {
		pid := rec.Resources.Pid
		if err := r.advance(task.Running, task.ReasonReadopted, "re-adopted after agent restart", func(rec *Record) { rec.Status.Pid = pid }); err != nil {
			r.log.Error("advance", "err", err)
		}
	}
	if rec.Status.State == task.Killing {
		// The kill goes on with the reason it was asked with.
		reason := rec.Status.Reason
		if reason == task.ReasonNone {
			reason = task.ReasonKilledByUser
		}
		r.Kill(rec.Spec.KillGracePeriod, reason, rec.Status.Message)
	} else {
		r.poststart(agentCtx) // health checks resume from the recorded health
	}
	r.wait(agentCtx)
}

func (r *Runner) wasRestored() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, t := range r.rec.Status.Transitions {
		if t.State == task.Running && t.Reason == task.ReasonReadopted {
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
