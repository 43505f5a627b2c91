package taskrunner

import (
	"context"
	"fmt"

	"github.com/titus-agent/titus-agent/pkg/isolation"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// imageViewer gives the image's read-only layer directories for a task
// (pkg/runtime).
type imageViewer interface {
	ImageView(ctx context.Context, taskID, image string) ([]string, error)
	RemoveView(ctx context.Context, taskID string) error
}

// diskSetup builds and removes a task's quota'd root filesystem
// (isolation.Disks).
type diskSetup interface {
	Setup(ctx context.Context, taskID string, sizeMiB int64, lowerDirs []string) (*isolation.Disk, error)
	Teardown(ctx context.Context, taskID string) error
}

// DiskHook gives a task that asked for disk a root filesystem limited to
// that size: an overlay of the image's layers over a quota'd upper
// directory. The container then runs on it (Resources.Disk.MountPath).
type DiskHook struct {
	Disks  diskSetup
	Images imageViewer
}

func (h *DiskHook) Name() string { return "disk" }

func (h *DiskHook) Prestart(ctx context.Context, req *PrestartRequest, resp *PrestartResponse) error {
	size := req.Spec.Resources.DiskMiB
	if size <= 0 {
		return nil
	}
	lowers, err := h.Images.ImageView(ctx, req.Spec.ID, req.Spec.Image)
	if err != nil {
		return &HookError{Hook: h.Name(), Reason: task.ReasonDiskSetupFailed, Err: fmt.Errorf("image layers: %w", err)}
	}
	d, err := h.Disks.Setup(ctx, req.Spec.ID, size, lowers)
	if d != nil {
		// Recorded even on failure, so Stop knows there is something to undo.
		resp.Disk = &DiskInfo{Backend: d.Backend, ImagePath: d.ImagePath, MountPath: d.RootfsPath}
	}
	if err != nil {
		return &HookError{Hook: h.Name(), Reason: task.ReasonDiskSetupFailed, Err: err}
	}
	return nil
}

// Stop unmounts and deletes the task's disk, then drops its image view.
// The container is gone by now (stop hooks run in reverse).
func (h *DiskHook) Stop(ctx context.Context, req *StopRequest) error {
	if req.Spec.Resources.DiskMiB <= 0 && (req.Resources == nil || req.Resources.Disk == nil) {
		return nil
	}
	if err := h.Disks.Teardown(ctx, req.Spec.ID); err != nil {
		return fmt.Errorf("disk: %w", err)
	}
	return h.Images.RemoveView(ctx, req.Spec.ID)
}
