package taskrunner

import (
	"context"
	"fmt"

	"github.com/titus-agent/titus-agent/pkg/task"
)

// logShipper uploads a task's logs off the host (pkg/logship).
type logShipper interface {
	// Track starts shipping the task's rotated log files.
	Track(spec *task.Spec) error
	// Finish records the task's remaining files, its last included, for
	// shipping; the task's container (and its logger) are gone.
	Finish(taskID string) error
}

// LogShipHook ships a task's logs to S3. It belongs in the last stage,
// before the container hook: its Stop then runs after the container is
// deleted (the logger has written its last line) and before the disk
// hook removes a quota'd task's log directory.
type LogShipHook struct {
	Shipper logShipper
}

func (h *LogShipHook) Name() string { return "logship" }

func (h *LogShipHook) Prestart(ctx context.Context, req *PrestartRequest, resp *PrestartResponse) error {
	if err := h.Shipper.Track(req.Spec); err != nil {
		return &HookError{Hook: h.Name(), Reason: task.ReasonPlatformError, Err: err}
	}
	return nil
}

func (h *LogShipHook) Stop(ctx context.Context, req *StopRequest) error {
	if err := h.Shipper.Finish(req.Spec.ID); err != nil {
		return fmt.Errorf("logship: %w", err)
	}
	return nil
}
