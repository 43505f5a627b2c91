package taskrunner

import (
	"context"
	"time"

	"github.com/titus-agent/titus-agent/pkg/task"
)

// healthChecker is what the health hook needs from pkg/healthcheck.
type healthChecker interface {
	Start(ctx context.Context, spec *task.Spec, net *task.NetworkAttachment, started time.Time, last *task.Health, report func(task.Health, bool)) error
	Stop(taskID string)
}

// HealthHook runs a task's health check while it runs: from its start,
// and again from its recorded health after an agent restart. It stops the
// checks when the task is killed or ends; an agent shutdown ends them
// through ctx, leaving the recorded health for the next agent.
type HealthHook struct{ Checker healthChecker }

func (h *HealthHook) Name() string { return "health" }

func (h *HealthHook) Poststart(ctx context.Context, req *PoststartRequest) error {
	if req.Spec.HealthCheck == nil {
		return nil
	}
	return h.Checker.Start(ctx, req.Spec, req.Resources.Network, req.Started, req.Health, req.ReportHealth)
}

func (h *HealthHook) Stop(ctx context.Context, req *StopRequest) error {
	h.Checker.Stop(req.Spec.ID)
	return nil
}
