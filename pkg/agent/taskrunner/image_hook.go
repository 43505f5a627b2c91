package taskrunner

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/titus-agent/titus-agent/pkg/runtime"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// imagePuller is the part of the runtime the image hook uses.
type imagePuller interface {
	Pull(ctx context.Context, ref string) (runtime.Image, error)
}

// ImageHook resolves, pulls and unpacks the task's image, the one time a
// launch resolves it: the disk and container hooks use the image it
// records (Resources.Image), and a resumed launch pulls that digest again
// instead of the tag, which may have moved. Images are shared between
// tasks and garbage-collected elsewhere, so it has no stop step.
type ImageHook struct{ Puller imagePuller }

func (h *ImageHook) Name() string { return "image" }

func (h *ImageHook) Prestart(ctx context.Context, req *PrestartRequest, resp *PrestartResponse) error {
	ref := req.Spec.Image
	if prev := req.Resources.Image; prev != nil {
		pinned, err := prev.Pinned()
		if err != nil {
			return &HookError{Hook: h.Name(), Reason: task.ReasonPlatformError, Err: fmt.Errorf("recorded image: %w", err)}
		}
		ref = pinned
	}
	var img runtime.Image
	// A fetch from the registry is a step of its own (pull time apart
	// from launch time in the record and the metrics).
	ctx = runtime.WithStepTrace(ctx, func(name string, start time.Time, took time.Duration, err error) {
		resp.Steps = append(resp.Steps, task.Step{Name: name, Start: start.UTC(), Took: took, Failed: err != nil})
	})
	err := retryTransient(ctx, func() error {
		var err error
		img, err = h.Puller.Pull(ctx, ref)
		return err
	})
	if err != nil {
		reason := task.ReasonImagePullFailed
		if errors.Is(err, runtime.ErrImageNotFound) {
			reason = task.ReasonImageNotFound
		}
		return &HookError{Hook: h.Name(), Reason: reason, Err: err}
	}
	resp.Image = &img
	return nil
}
