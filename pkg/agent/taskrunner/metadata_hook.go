package taskrunner

import (
	"context"

	"github.com/titus-agent/titus-agent/pkg/task"
)

// metadataServer is what the metadata hook needs from pkg/metadataproxy.
type metadataServer interface {
	Start(ctx context.Context, spec *task.Spec, net *task.NetworkAttachment) ([]string, error)
	Stop(ctx context.Context, taskID string) error
}

// MetadataHook answers 169.254.169.254 inside the task's netns before the
// task's process starts, and again after an agent restart.
type MetadataHook struct{ Server metadataServer }

func (h *MetadataHook) Name() string { return "metadata" }

func (h *MetadataHook) Prestart(ctx context.Context, req *PrestartRequest, resp *PrestartResponse) error {
	if req.Resources.Network == nil {
		return nil // no netns: nothing to answer in
	}
	addrs, err := h.Server.Start(ctx, req.Spec, req.Resources.Network)
	if err != nil {
		return &HookError{Hook: h.Name(), Reason: task.ReasonMetadataSetupFailed, Err: err}
	}
	resp.Metadata = &MetadataInfo{Addresses: addrs}
	return nil
}

func (h *MetadataHook) Restore(ctx context.Context, req *StopRequest) error {
	if req.Resources.Network == nil {
		return nil
	}
	_, err := h.Server.Start(ctx, req.Spec, req.Resources.Network)
	return err
}

func (h *MetadataHook) Stop(ctx context.Context, req *StopRequest) error {
	return h.Server.Stop(ctx, req.Spec.ID)
}
