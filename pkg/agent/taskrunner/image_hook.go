package taskrunner

import (
	"context"
	"errors"

	"github.com/titus-agent/titus-agent/pkg/runtime"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// imagePuller is the part of the runtime the image hook uses.
type imagePuller interface {
	Pull(ctx context.Context, ref string) (runtime.Image, error)
}

// ImageHook pulls and unpacks the task's image. Images are shared between
// tasks and garbage-collected elsewhere, so it has no stop step.
type ImageHook struct{ Puller imagePuller }

func (h *ImageHook) Name() string { return "image" }

func (h *ImageHook) Prestart(ctx context.Context, req *PrestartRequest, resp *PrestartResponse) error {
	err := retryTransient(ctx, func() error {
		_, err := h.Puller.Pull(ctx, req.Spec.Image)
		return err
	})
	if err != nil {
		reason := task.ReasonImagePullFailed
		if errors.Is(err, runtime.ErrImageNotFound) {
			reason = task.ReasonImageNotFound
		}
		return &HookError{Hook: h.Name(), Reason: reason, Err: err}
	}
	resp.Image = req.Spec.Image
	return nil
}
