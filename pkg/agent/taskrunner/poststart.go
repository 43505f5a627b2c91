package taskrunner

import (
	"context"
	"slices"

	"github.com/titus-agent/titus-agent/pkg/task"
)

// poststart runs the poststart hooks of a running task. A hook that
// fails leaves the task running; a failed health check start makes the
// task Unhealthy, saying why.
func (r *Runner) poststart(agentCtx context.Context) {
	if len(r.cfg.Poststart) == 0 {
		return
	}
	started := r.startedAt()
	r.mu.Lock()
	spec, res, health := r.rec.Spec, r.rec.Resources, r.rec.Status.Health
	r.mu.Unlock()
	for _, h := range r.cfg.Poststart {
		err := h.Poststart(agentCtx, &PoststartRequest{Spec: &spec, Resources: &res, Started: started, Health: health, ReportHealth: r.reportHealth})
		if err == nil {
			continue
		}
		r.log.Warn("poststart hook failed", "hook", h.Name(), "err", err)
		if _, ok := h.(*HealthHook); ok {
			now := r.cfg.Now().UTC()
			r.reportHealth(task.Health{Status: task.HealthUnhealthy, Since: now, Checked: now, Output: task.TruncateOutput("cannot check: " + err.Error())}, true)
		}
	}
}

// stopPoststart stops what the poststart hooks started (idempotent).
func (r *Runner) stopPoststart(ctx context.Context) error {
	r.mu.Lock()
	spec, res := r.rec.Spec, r.rec.Resources
	r.mu.Unlock()
	var first error
	for _, h := range slices.Backward(r.cfg.Poststart) {
		if sh, ok := h.(StopHook); ok {
			if err := sh.Stop(ctx, &StopRequest{Spec: &spec, Resources: &res}); err != nil && first == nil {
				first = err
			}
		}
	}
	return first
}

// reportHealth records a health check's result while the task runs: a
// status change on disk and to watchers, the latest result in memory.
func (r *Runner) reportHealth(h task.Health, changed bool) {
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	r.mu.Lock()
	if r.rec.Status.State != task.Running || r.killed != nil {
		r.mu.Unlock()
		return
	}
	if !changed && r.rec.Status.Health != nil {
		r.rec.Status.Health = &h
		r.mu.Unlock()
		return
	}
	next := *r.rec
	r.mu.Unlock()
	next.Status.Health = &h
	if err := r.cfg.Store.Save(&next); err != nil {
		r.log.Error("persist health", "err", err)
	}
	r.mu.Lock()
	r.rec.Status.Health = &h // only this: the runner reads its spec unlocked
	r.mu.Unlock()
	r.log.Info("task health", "health", h.Status, "output", h.Output)
	if r.cfg.Notify != nil {
		st := next.Status
		st.Transitions = slices.Clone(st.Transitions)
		r.cfg.Notify(task.Event{TaskID: next.Spec.ID, Status: st, HealthChanged: true, IPv4: next.ipv4()})
	}
}
