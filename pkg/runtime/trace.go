package runtime

import (
	"context"
	"time"
)

// Runtime steps a launch is told of (see WithStepTrace).
const (
	// StepContainerCreate is containerd's container record with its
	// snapshot and OCI spec (Create).
	StepContainerCreate = "container.create"
	// StepTaskCreate is the shim starting and runc creating the task
	// (Start, when no task exists yet).
	StepTaskCreate = "task.create"
	// StepTaskStart is runc starting the task's process (Start).
	StepTaskStart = "task.start"
	// StepImageFetch is an image pulled from its registry, its layers
	// downloaded and unpacked (Pull; not reported when the image was
	// there already).
	StepImageFetch = "image.fetch"
)

// StepFunc is told of a runtime step when it ends: its name (Step*), when
// it began, how long it took and how it ended.
type StepFunc func(name string, start time.Time, took time.Duration, err error)

type stepTraceKey struct{}

// WithStepTrace returns a context under which Pull, Create and Start tell f of
// each containerd/runc step they take, like net/http/httptrace. Steps
// skipped (a container or task that already exists) are not reported.
func WithStepTrace(ctx context.Context, f StepFunc) context.Context {
	return context.WithValue(ctx, stepTraceKey{}, f)
}

// step reports one step that began at start to ctx's StepFunc, if any.
func step(ctx context.Context, name string, start time.Time, err error) {
	if f, ok := ctx.Value(stepTraceKey{}).(StepFunc); ok && f != nil {
		f(name, start, time.Since(start), err)
	}
}
