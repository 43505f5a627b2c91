package taskrunner

import (
	"context"

	"github.com/titus-agent/titus-agent/pkg/task"
)

// bandwidthShaper limits a task's network bandwidth (isolation.Bandwidth).
// An empty hostVeth means: find the task veth's peer.
type bandwidthShaper interface {
	Limit(ctx context.Context, nsPath, hostVeth string, mbps int64) error
	Clear(ctx context.Context, nsPath, hostVeth string) error
}

// BandwidthHook caps a task's traffic in and out at Resources.NetworkMbps.
// It runs after the network hook; tasks that asked for no limit, or have no
// network, are left alone.
type BandwidthHook struct{ Shaper bandwidthShaper }

func (h *BandwidthHook) Name() string { return "bandwidth" }

func (h *BandwidthHook) Prestart(ctx context.Context, req *PrestartRequest, resp *PrestartResponse) error {
	n := req.Resources.Network
	if req.Spec.Resources.NetworkMbps <= 0 || n == nil || n.NetNSPath == "" {
		return nil
	}
	if err := h.Shaper.Limit(ctx, n.NetNSPath, "", req.Spec.Resources.NetworkMbps); err != nil {
		return &HookError{Hook: h.Name(), Reason: task.ReasonNetworkSetupFailed, Err: err}
	}
	return nil
}

func (h *BandwidthHook) Stop(ctx context.Context, req *StopRequest) error {
	if req.Spec.Resources.NetworkMbps <= 0 || req.Resources == nil || req.Resources.Network == nil || req.Resources.Network.NetNSPath == "" {
		return nil
	}
	return h.Shaper.Clear(ctx, req.Resources.Network.NetNSPath, "")
}
