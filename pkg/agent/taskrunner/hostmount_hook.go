package taskrunner

import (
	"context"
	"errors"
	"slices"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/titus-agent/titus-agent/pkg/isolation"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// hostMountStager checks and stages the host paths a task asks for
// (isolation.HostMounts).
type hostMountStager interface {
	Stage(taskID string, labels map[string]string) ([]specs.Mount, error)
	Release(taskID string) error
}

// HostMountHook gives a task the host paths it asks for
// (isolation.LabelHostMounts) and the host allows: each is resolved
// without symlinks and bind-mounted by descriptor on a staging point of
// the agent's, which the task's mount names, so what the task gets is
// exactly what was checked. Its stop step unmounts the staging points
// (the container, deleted before, holds its own copy of the mounts until
// then).
type HostMountHook struct{ Stager hostMountStager }

func (h *HostMountHook) Name() string { return "hostmounts" }

func (h *HostMountHook) Prestart(_ context.Context, req *PrestartRequest, resp *PrestartResponse) error {
	if req.Spec.Labels[isolation.LabelHostMounts] == "" {
		return nil
	}
	mounts, err := h.Stager.Stage(req.Spec.ID, req.Spec.Labels)
	if err != nil {
		reason := task.ReasonStartFailed
		if errors.Is(err, isolation.ErrNotAllowed) {
			reason = task.ReasonInvalidSpec // a host path this host does not give
		}
		return &HookError{Hook: h.Name(), Reason: reason, Err: err}
	}
	for _, m := range mounts {
		resp.Mounts = append(resp.Mounts, Mount{Destination: m.Destination, Type: m.Type, Source: m.Source, Options: slices.Clone(m.Options)})
	}
	return nil
}

func (h *HostMountHook) Stop(_ context.Context, req *StopRequest) error {
	return h.Stager.Release(req.Spec.ID)
}
