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

// deferredNetworkSetup is a networkSetup whose allocation record may be
// written after Setup returns (vpc.Network.SetupDeferred).
type deferredNetworkSetup interface {
	SetupDeferred(ctx context.Context, taskID string, req task.NetworkRequest) (*task.NetworkAttachment, func(context.Context) error, error)
}

// Prestart wires the task's address. Where the network can, the
// allocation's record is written while the launch goes on, and the
// task's process starts only once it is on disk (resp.Durable).
func (h *NetworkHook) Prestart(ctx context.Context, req *PrestartRequest, resp *PrestartResponse) error {
	var att *task.NetworkAttachment
	var err error
	if d, ok := h.Network.(deferredNetworkSetup); ok {
		var durable func(context.Context) error
		att, durable, err = d.SetupDeferred(ctx, req.Spec.ID, req.Spec.Network)
		if err == nil {
			resp.Durable = durable
		}
	} else {
		att, err = h.Network.Setup(ctx, req.Spec.ID, req.Spec.Network)
	}
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
