package taskrunner

import (
	"context"
	"errors"

	"github.com/titus-agent/titus-agent/pkg/task"
	"github.com/titus-agent/titus-agent/pkg/vpc"
)

// networkSetup is what the network hook needs from pkg/vpc.
type networkSetup interface {
	Setup(ctx context.Context, taskID string, req task.NetworkRequest) (*task.NetworkAttachment, error)
	Teardown(ctx context.Context, taskID string) error
}

// NetworkHook gives the task its own netns and VPC address.
type NetworkHook struct{ Network networkSetup }

func (h *NetworkHook) Name() string { return "network" }

func (h *NetworkHook) Prestart(ctx context.Context, req *PrestartRequest, resp *PrestartResponse) error {
	att, err := h.Network.Setup(ctx, req.Spec.ID, req.Spec.Network)
	if att != nil {
		resp.Network = att
	}
	if errors.Is(err, vpc.ErrNoCapacity) {
		return &HookError{Hook: h.Name(), Reason: task.ReasonNoNetworkCapacity, Err: err}
	}
	if errors.Is(err, vpc.ErrSubnetNotInZone) {
		return &HookError{Hook: h.Name(), Reason: task.ReasonSubnetNotInZone, Err: err}
	}
	if err != nil {
		return &HookError{Hook: h.Name(), Reason: task.ReasonNetworkSetupFailed, Err: err}
	}
	return nil
}

func (h *NetworkHook) Stop(ctx context.Context, req *StopRequest) error {
	return h.Network.Teardown(ctx, req.Spec.ID)
}
