package taskrunner

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/titus-agent/titus-agent/pkg/isolation"
	"github.com/titus-agent/titus-agent/pkg/runtime"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// imageViewer gives the image's read-only layer directories for a task
// (pkg/runtime).
type imageViewer interface {
	ImageView(ctx context.Context, taskID string, image runtime.Image) ([]string, error)
	RemoveView(ctx context.Context, taskID string) error
}

// diskSetup builds and removes a task's quota'd root filesystem
// (isolation.Disks).
type diskSetup interface {
	Setup(ctx context.Context, taskID string, sizeMiB int64, lowerDirs []string) (*isolation.Disk, error)
	SetupUserNS(ctx context.Context, taskID string, sizeMiB int64, lowerDirs []string) (*isolation.Disk, error)
	Teardown(ctx context.Context, taskID string) error
}

// DiskHook gives a task that asked for disk a root filesystem limited to
// that size: an overlay of the image's layers over a quota'd upper
// directory. The container then runs on it (Resources.Disk.MountPath).
// A task labelled isolation.LabelUserNS also gets its own user namespace
// (Resources.Disk.UserNS), which needs a disk.
type DiskHook struct {
	Disks  diskSetup
	Images imageViewer
	// LogDir is the agent's task log directory. When set, a quota'd task's
	// log directory (LogDir/<id>) points into its disk, so its logs count
	// against the quota; the last KeepLogBytes are copied back at teardown.
	LogDir       string
	KeepLogBytes int64
}

func (h *DiskHook) Name() string { return "disk" }

func (h *DiskHook) Prestart(ctx context.Context, req *PrestartRequest, resp *PrestartResponse) error {
	size := req.Spec.Resources.DiskMiB
	userNS := req.Spec.Labels[isolation.LabelUserNS] == "true"
	if size <= 0 {
		if userNS {
			return &HookError{Hook: h.Name(), Reason: task.ReasonInvalidSpec, Err: errors.New("a user namespace needs a disk quota (diskMiB)")}
		}
		return nil
	}
	setup := h.Disks.Setup
	if userNS {
		setup = h.Disks.SetupUserNS
	}
	if req.Resources.Image == nil {
		return &HookError{Hook: h.Name(), Reason: task.ReasonPlatformError, Err: errors.New("image not resolved: the image hook runs first")}
	}
	lowers, err := h.Images.ImageView(ctx, req.Spec.ID, *req.Resources.Image)
	if err != nil {
		return &HookError{Hook: h.Name(), Reason: task.ReasonDiskSetupFailed, Err: fmt.Errorf("image layers: %w", err)}
	}
	d, err := setup(ctx, req.Spec.ID, size, lowers)
	if d != nil {
		// Recorded even on failure, so Stop knows there is something to undo.
		resp.Disk = &DiskInfo{Backend: d.Backend, ImagePath: d.ImagePath, MountPath: d.RootfsPath, UserNS: UserNSFrom(d.UserNS)}
	}
	if err != nil {
		return &HookError{Hook: h.Name(), Reason: task.ReasonDiskSetupFailed, Err: err}
	}
	if h.LogDir != "" && d.LogDir != "" {
		if err := linkLogDir(filepath.Join(h.LogDir, req.Spec.ID), d.LogDir); err != nil {
			return &HookError{Hook: h.Name(), Reason: task.ReasonDiskSetupFailed, Err: err}
		}
	}
	return nil
}

// linkLogDir makes the task's log directory a link into its quota'd disk.
func linkLogDir(link, target string) error {
	if cur, err := os.Readlink(link); err == nil && cur == target {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(link), 0o750); err != nil {
		return fmt.Errorf("log dir: %w", err)
	}
	_ = os.Remove(link) // an empty directory or a stale link
	if err := os.Symlink(target, link); err != nil {
		return fmt.Errorf("log dir into the disk quota: %w", err)
	}
	return nil
}

// keepLogs replaces the link with a real directory holding the tail of the
// task's logs (both current files), so `task logs` still works after the
// disk is gone.
func (h *DiskHook) keepLogs(taskID string) error {
	link := filepath.Join(h.LogDir, taskID)
	target, err := os.Readlink(link)
	if err != nil {
		return nil // not linked (already kept, or never quota'd)
	}
	keep := h.KeepLogBytes
	if keep <= 0 {
		keep = 10 << 20
	}
	tails := map[string][]byte{}
	for _, name := range []string{"stdout.log", "stderr.log"} {
		f, err := os.Open(filepath.Join(target, name))
		if err != nil {
			continue
		}
		if st, err := f.Stat(); err == nil {
			off := max(st.Size()-keep, 0)
			tail := make([]byte, st.Size()-off)
			_, _ = f.ReadAt(tail, off)
			tails[name] = tail
		}
		f.Close()
	}
	if err := os.Remove(link); err != nil {
		return fmt.Errorf("log link: %w", err)
	}
	if err := os.MkdirAll(link, 0o750); err != nil {
		return fmt.Errorf("log dir: %w", err)
	}
	if _, ok := tails["stdout.log"]; !ok {
		tails["stdout.log"] = nil
	}
	for name, tail := range tails {
		if err := os.WriteFile(filepath.Join(link, name), tail, 0o640); err != nil {
			return err
		}
	}
	return nil
}

// Stop unmounts and deletes the task's disk, then drops its image view.
// The container is gone by now (stop hooks run in reverse).
func (h *DiskHook) Stop(ctx context.Context, req *StopRequest) error {
	if req.Spec.Resources.DiskMiB <= 0 && (req.Resources == nil || req.Resources.Disk == nil) {
		return nil
	}
	if h.LogDir != "" {
		if err := h.keepLogs(req.Spec.ID); err != nil {
			return fmt.Errorf("disk: keep logs: %w", err)
		}
	}
	if err := h.Disks.Teardown(ctx, req.Spec.ID); err != nil {
		return fmt.Errorf("disk: %w", err)
	}
	return h.Images.RemoveView(ctx, req.Spec.ID)
}
