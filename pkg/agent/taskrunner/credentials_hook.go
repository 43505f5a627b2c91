package taskrunner

import (
	"context"

	"github.com/titus-agent/titus-agent/pkg/task"
)

// credentialsPrefetcher is what the credentials hook needs from
// pkg/metadataproxy.
type credentialsPrefetcher interface {
	Prefetch(ctx context.Context, spec *task.Spec)
	Forget(taskID string)
}

// CredentialsHook starts fetching a task's role credentials while its
// network and disk are set up, so that the metadata hook (which needs the
// netns) finds them there instead of waiting on STS after the network.
// It never fails a launch: the metadata hook fetches whatever is missing.
type CredentialsHook struct{ Prefetcher credentialsPrefetcher }

func (h *CredentialsHook) Name() string { return "credentials" }

func (h *CredentialsHook) Prestart(ctx context.Context, req *PrestartRequest, resp *PrestartResponse) error {
	if req.Spec.IAMRoleARN != "" {
		h.Prefetcher.Prefetch(ctx, req.Spec)
	}
	return nil
}

// Stop drops credentials fetched for a task whose metadata never started
// (the metadata hook's own stop ends the rest). Idempotent.
func (h *CredentialsHook) Stop(ctx context.Context, req *StopRequest) error {
	h.Prefetcher.Forget(req.Spec.ID)
	return nil
}
