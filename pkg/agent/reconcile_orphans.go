package agent

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/titus-agent/titus-agent/pkg/runtime"
)

// orphanRuntime is what the orphan reaper needs from the container runtime.
type orphanRuntime interface {
	ReapOrphans(ctx context.Context) (runtime.Reaped, error)
}

// orphanReaper is the Reconciler for what launches cut short by an agent
// kill leave on the host outside containerd's records: shims containerd
// never registered and temporary snapshot mounts. It looks at containerd,
// not at the tasks to keep: those leftovers belong to no container.
type orphanReaper struct {
	rt  orphanRuntime
	log *slog.Logger
}

func (o orphanReaper) Reconcile(ctx context.Context, _ map[string]bool) error {
	rep, err := o.rt.ReapOrphans(ctx)
	if len(rep.Shims) > 0 {
		o.log.Warn("killed shims containerd does not know", "ids", rep.Shims)
	}
	if len(rep.Execs) > 0 {
		o.log.Warn("ended exec sessions of an earlier agent process (their clients are gone)", "sessions", rep.Execs)
	}
	if len(rep.Mounts) > 0 {
		o.log.Warn("unmounted stale temporary snapshot mounts", "mounts", rep.Mounts)
	}
	if err != nil {
		return fmt.Errorf("reap orphans: %w", err)
	}
	return nil
}
