package isolation

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// LoopQuota gives each task a sparse ext4 image (lazily initialised, no
// journal) loop-mounted at <dir>/mnt/<task>. The filesystem's size is the
// quota. Loop devices are set up by mount(8) with autoclear, so unmounting
// releases them.
type LoopQuota struct {
	dir string
	sys system
}

var _ DiskQuota = (*LoopQuota)(nil)

// NewLoopQuota keeps images under dir/images and mounts under dir/mnt.
func NewLoopQuota(dir string, sys system) *LoopQuota { return &LoopQuota{dir: dir, sys: sys} }

func (q *LoopQuota) imagePath(id string) string { return filepath.Join(q.dir, "images", id+".img") }
func (q *LoopQuota) mountPath(id string) string { return filepath.Join(q.dir, "mnt", id) }

// Create makes and mounts the task's image; an existing one is reused.
func (q *LoopQuota) Create(ctx context.Context, taskID string, sizeMiB int64) (*Disk, error) {
	if err := checkTaskID(taskID); err != nil {
		return nil, err
	}
	if sizeMiB <= 0 {
		return nil, fmt.Errorf("disk size %d MiB: must be positive", sizeMiB)
	}
	d := &Disk{TaskID: taskID, Backend: BackendLoopExt4, ImagePath: q.imagePath(taskID), Path: q.mountPath(taskID)}
	if mounted, err := q.sys.Mounted(d.Path); err != nil {
		return nil, fmt.Errorf("disk %s: %w", taskID, err)
	} else if mounted {
		return d, nil
	}
	if err := q.makeImage(ctx, d.ImagePath, sizeMiB); err != nil {
		return nil, fmt.Errorf("disk %s: %w", taskID, err)
	}
	if err := os.MkdirAll(d.Path, 0o700); err != nil {
		return nil, fmt.Errorf("disk %s: %w", taskID, err)
	}
	if _, err := q.sys.Run(ctx, "mount", "-t", "ext4", "-o", "loop,noatime", d.ImagePath, d.Path); err != nil {
		return nil, fmt.Errorf("disk %s: %w", taskID, err)
	}
	return d, nil
}

// makeImage writes a formatted image to path unless it is there; the image
// is built under a temporary name so a crash never leaves a half-made one.
func (q *LoopQuota) makeImage(ctx context.Context, path string, sizeMiB int64) error {
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	err = f.Truncate(sizeMiB << 20)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		_, err = q.sys.Run(ctx, "mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal",
			"-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard", tmp)
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
	}
	return err
}

// Remove unmounts the task's image, detaches any loop device still bound to
// it and deletes it. Safe to repeat.
func (q *LoopQuota) Remove(ctx context.Context, taskID string) error {
	if err := checkTaskID(taskID); err != nil {
		return err
	}
	mnt, img := q.mountPath(taskID), q.imagePath(taskID)
	if err := unmount(ctx, q.sys, mnt); err != nil {
		return fmt.Errorf("disk %s: %w", taskID, err)
	}
	if err := q.detachLoops(ctx, img); err != nil {
		return fmt.Errorf("disk %s: %w", taskID, err)
	}
	// Unmounted now: what is left in mnt was written beside the image.
	if err := os.RemoveAll(mnt); err != nil {
		return fmt.Errorf("disk %s: %w", taskID, err)
	}
	for _, p := range []string{img, img + ".tmp"} {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("disk %s: %w", taskID, err)
		}
	}
	return nil
}

// detachLoops detaches loop devices backed by img (left by a crash between
// attach and mount; autoclear handles the normal case).
func (q *LoopQuota) detachLoops(ctx context.Context, img string) error {
	if _, err := os.Stat(img); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	out, err := q.sys.Run(ctx, "losetup", "-j", img)
	if err != nil {
		return err
	}
	for line := range strings.Lines(string(out)) {
		dev, _, ok := strings.Cut(line, ":")
		if !ok || !strings.HasPrefix(dev, "/dev/loop") {
			continue
		}
		// An autoclear device may vanish between the listing and here.
		if _, err := q.sys.Run(ctx, "losetup", "-d", dev); err != nil {
			if still, lerr := q.sys.Run(ctx, "losetup", "-j", img); lerr != nil || strings.Contains(string(still), dev+":") {
				return err
			}
		}
	}
	return nil
}

// List returns the tasks with an image or mount directory.
func (q *LoopQuota) List(ctx context.Context) ([]string, error) {
	imgs, err := listDir(filepath.Join(q.dir, "images"))
	if err != nil {
		return nil, err
	}
	mnts, err := listDir(filepath.Join(q.dir, "mnt"))
	if err != nil {
		return nil, err
	}
	for i, name := range imgs {
		imgs[i] = strings.TrimSuffix(strings.TrimSuffix(name, ".tmp"), ".img")
	}
	return sortedUnion(imgs, mnts), nil
}
