package isolation

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/titus-agent/titus-agent/pkg/backoff"
)

// Disk backends.
const (
	BackendLoopExt4 = "loop-ext4"
	BackendXFSQuota = "xfs-quota"
)

// ErrInvalidTaskID is returned for a task ID that cannot name a file.
var ErrInvalidTaskID = errors.New("invalid task id for a disk")

// Disk is a task's size-limited writable filesystem and the overlay root
// built on it.
type Disk struct {
	TaskID  string
	Backend string
	// ImagePath is the backing file (loop-ext4 only).
	ImagePath string
	// Path is the quota'd directory: it holds the overlay's upper and work
	// directories and the task's log directory.
	Path string
	// RootfsPath is the task's root filesystem: an overlay of the image's
	// layers with its upper directory on Path. Set by Disks.Setup.
	RootfsPath string
	// LogDir is a directory on the quota'd filesystem for the task's logs.
	LogDir string
	// UserNS is the task's own user namespace (Disks.SetupUserNS): its
	// root filesystem's layers are ID-mapped onto it.
	UserNS *UserNS
}

// DiskQuota makes per-task size-limited directories. Every method is
// idempotent.
type DiskQuota interface {
	Create(ctx context.Context, taskID string, sizeMiB int64) (*Disk, error)
	Remove(ctx context.Context, taskID string) error
	// List returns the tasks with anything left on the host, whole or not.
	List(ctx context.Context) ([]string, error)
}

// taskIDRe is a task id; its length (at most 128) is checked beside it, as
// a bounded repetition like {0,127} compiles to that many copies.
var taskIDRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)

func checkTaskID(id string) error {
	if len(id) > 128 || !taskIDRe.MatchString(id) {
		return fmt.Errorf("%q: %w", id, ErrInvalidTaskID)
	}
	return nil
}

// Disks gives tasks their root filesystem on a quota'd disk:
// an overlay mounted at <dir>/rootfs/<task> whose lower directories are the
// image's layers and whose upper directory lives on the task's DiskQuota.
type Disks struct {
	Quota DiskQuota
	dir   string
	sys   system

	mu  sync.Mutex // user namespace assignment
	ids *IDRanges  // nil: no user namespaces
	// slots are the user namespace slots assigned, by task: the agent's
	// task records seed them at start (RestoreUserNS), never the owner of
	// a directory the task can chown.
	slots map[string][]uint32
}

// NewDisks keeps its state under dir and picks the backend: XFS project
// quota when dir is on XFS mounted with project quotas, else loop-mounted
// ext4 images.
func NewDisks(dir string) (*Disks, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("disk dir: %w", err)
	}
	backend, mountpoint, err := detectBackend(dir)
	if err != nil {
		return nil, err
	}
	sys := hostSystem{}
	var q DiskQuota = NewLoopQuota(dir, sys)
	if backend == BackendXFSQuota {
		q = NewXFSQuota(dir, mountpoint, sys)
	}
	return &Disks{Quota: q, dir: dir, sys: sys}, nil
}

func newDisks(q DiskQuota, dir string, sys system) *Disks {
	return &Disks{Quota: q, dir: dir, sys: sys}
}

// EnableUserNS lets SetupUserNS give tasks user namespaces from r. The
// disk directory is made searchable (not readable) by others, and every
// directory above it must be: a task's unprivileged root has to pass them
// to reach its root filesystem.
func (d *Disks) EnableUserNS(r IDRanges) error {
	if err := r.Validate(); err != nil {
		return err
	}
	if err := os.Chmod(d.dir, 0o711); err != nil {
		return fmt.Errorf("user namespaces: %w", err)
	}
	if err := traversable(d.dir); err != nil {
		return fmt.Errorf("user namespaces: %w", err)
	}
	d.mu.Lock()
	d.ids = &r
	d.mu.Unlock()
	return nil
}

// Backend names the quota backend in use.
func (d *Disks) Backend() string {
	switch d.Quota.(type) {
	case *XFSQuota:
		return BackendXFSQuota
	case *LoopQuota:
		return BackendLoopExt4
	}
	return fmt.Sprintf("%T", d.Quota)
}

// detectBackend returns xfs-quota and the filesystem's mount point when dir
// is on XFS with project quotas enforced.
func detectBackend(dir string) (backend, mountpoint string, err error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return "", "", fmt.Errorf("statfs %s: %w", dir, err)
	}
	if st.Type != unix.XFS_SUPER_MAGIC {
		return BackendLoopExt4, "", nil
	}
	mounts, err := mountinfo.GetMounts(mountinfo.ParentsFilter(dir))
	if err != nil {
		return "", "", fmt.Errorf("mountinfo: %w", err)
	}
	var best *mountinfo.Info
	for _, m := range mounts {
		if best == nil || len(m.Mountpoint) > len(best.Mountpoint) {
			best = m
		}
	}
	if best != nil && hasProjectQuota(best.VFSOptions+","+best.Options) {
		return BackendXFSQuota, best.Mountpoint, nil
	}
	return BackendLoopExt4, "", nil
}

// hasProjectQuota reports whether XFS mount options enforce project quotas.
func hasProjectQuota(opts string) bool {
	for o := range strings.SplitSeq(opts, ",") {
		if o == "prjquota" || o == "pquota" {
			return true
		}
	}
	return false
}

func (d *Disks) rootfsPath(taskID string) string { return filepath.Join(d.dir, "rootfs", taskID) }

// Setup creates the task's disk of sizeMiB and mounts its root filesystem
// over lowerDirs (top layer first). Calling it again returns the same disk.
func (d *Disks) Setup(ctx context.Context, taskID string, sizeMiB int64, lowerDirs []string) (*Disk, error) {
	return d.setup(ctx, taskID, sizeMiB, lowerDirs, false)
}

// SetupUserNS is Setup for a task in its own user namespace: the task gets
// a range of host IDs no other task has (Disk.UserNS), its upper directory
// belongs to that range's root and the image's layers are ID-mapped onto
// it, so the task's root owns its files without being root on the host.
func (d *Disks) SetupUserNS(ctx context.Context, taskID string, sizeMiB int64, lowerDirs []string) (*Disk, error) {
	return d.setup(ctx, taskID, sizeMiB, lowerDirs, true)
}

func (d *Disks) setup(ctx context.Context, taskID string, sizeMiB int64, lowerDirs []string, userNS bool) (*Disk, error) {
	if err := checkTaskID(taskID); err != nil {
		return nil, err
	}
	if len(lowerDirs) == 0 {
		return nil, errors.New("rootfs: no image layers")
	}
	disk, err := d.Quota.Create(ctx, taskID, sizeMiB)
	if err != nil {
		return nil, err
	}
	upper, work := filepath.Join(disk.Path, "upper"), filepath.Join(disk.Path, "work")
	disk.LogDir = filepath.Join(disk.Path, "logs")
	disk.RootfsPath = d.rootfsPath(taskID)
	for _, p := range []string{upper, work, disk.LogDir, disk.RootfsPath} {
		if err := os.MkdirAll(p, 0o755); err != nil {
			return disk, fmt.Errorf("rootfs: %w", err)
		}
	}
	if userNS {
		if disk.UserNS, err = d.assignUserNS(taskID, upper, work); err != nil {
			return disk, fmt.Errorf("rootfs: %w", err)
		}
	}
	mounted, err := d.sys.Mounted(disk.RootfsPath)
	if err != nil {
		return disk, fmt.Errorf("rootfs: %w", err)
	}
	if !mounted {
		m := mount.Mount{Type: "overlay", Source: "overlay", Options: []string{
			"lowerdir=" + strings.Join(lowerDirs, ":"), "upperdir=" + upper, "workdir=" + work,
		}}
		if u := disk.UserNS; u != nil {
			m.Options = append(m.Options, "uidmap="+idmapOption(u.UIDMap), "gidmap="+idmapOption(u.GIDMap))
		}
		if err := d.sys.Mount(m, disk.RootfsPath); err != nil {
			return disk, fmt.Errorf("rootfs overlay: %w", err)
		}
	}
	return disk, nil
}

// RestoreUserNS tells Disks which user namespaces the agent's task
// records say tasks have, before any task is set up after an agent
// restart: those tasks keep their ranges, and no other task gets a slot
// they overlap. A recorded range that is not one slot of the current
// ranges (the configuration changed) still blocks every slot it overlaps.
func (d *Disks) RestoreUserNS(byTask map[string]*UserNS) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.slots == nil {
		d.slots = map[string][]uint32{}
	}
	if d.ids == nil {
		return
	}
	r := *d.ids
	for id, u := range byTask {
		if u == nil {
			continue
		}
		var slots []uint32
		for _, m := range append(slices.Clone(u.UIDMap), u.GIDMap...) {
			slots = append(slots, r.overlapping(m.HostID, m.Size)...)
		}
		slices.Sort(slots)
		d.slots[id] = slices.Compact(slots)
	}
}

// overlapping returns the slots that [host, host+size) overlaps.
func (r IDRanges) overlapping(host, size uint32) []uint32 {
	lo, hi := uint64(host), uint64(host)+uint64(size) // [lo, hi)
	base, end := uint64(r.Base), uint64(r.Base)+uint64(r.Size)*uint64(r.Count)
	if size == 0 || hi <= base || lo >= end {
		return nil
	}
	lo, hi = max(lo, base), min(hi, end)
	var out []uint32
	for s := (lo - base) / uint64(r.Size); s*uint64(r.Size)+base < hi; s++ {
		out = append(out, uint32(s))
	}
	return out
}

// assignUserNS gives the task the user namespace it was assigned (at
// setup, or from its record after an agent restart), or a free one, and
// hands it the upper and work directories. A slot is free when no task
// holds it; the owners of other tasks' upper directories only ever add to
// the slots in use (a task whose record could not be read still has its
// directory), never decide a task's own range: the task owns its root
// directory and may chown it.
func (d *Disks) assignUserNS(taskID, upper, work string) (*UserNS, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ids == nil {
		return nil, ErrUserNSUnavailable
	}
	if d.slots == nil {
		d.slots = map[string][]uint32{}
	}
	r := *d.ids
	var slot uint32
	if mine := d.slots[taskID]; len(mine) == 1 {
		slot = mine[0]
	} else {
		used := map[uint32]bool{}
		for id, ss := range d.slots {
			if id != taskID {
				for _, s := range ss {
					used[s] = true
				}
			}
		}
		others, err := filepath.Glob(filepath.Join(d.dir, "mnt", "*", "upper"))
		if err != nil {
			return nil, err
		}
		for _, p := range others {
			if filepath.Base(filepath.Dir(p)) == taskID {
				continue
			}
			if uid, err := ownerUID(p); err == nil {
				if s, ok := r.slotOf(uid); ok {
					used[s] = true
				}
			}
		}
		if slot, err = r.pick(taskID, used); err != nil {
			return nil, err
		}
		d.slots[taskID] = []uint32{slot}
	}
	u := r.userNS(slot)
	root := int(u.HostRoot())
	for _, p := range []string{work, upper} {
		if err := os.Lchown(p, root, root); err != nil {
			return nil, fmt.Errorf("user namespace: %w", err)
		}
	}
	return u, nil
}

// Teardown unmounts the task's root filesystem and removes its disk. The
// container must be gone. Safe to repeat.
func (d *Disks) Teardown(ctx context.Context, taskID string) error {
	if err := checkTaskID(taskID); err != nil {
		return err
	}
	rootfs := d.rootfsPath(taskID)
	if err := unmount(ctx, d.sys, rootfs); err != nil {
		return fmt.Errorf("rootfs: %w", err)
	}
	if err := os.Remove(rootfs); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("rootfs: %w", err)
	}
	if err := d.Quota.Remove(ctx, taskID); err != nil {
		return err
	}
	d.mu.Lock()
	delete(d.slots, taskID) // its files are gone: its range is free
	d.mu.Unlock()
	return nil
}

// Reap tears down every disk whose task is not in keep, e.g. left behind
// by an agent that crashed, and returns the tasks it reaped.
func (d *Disks) Reap(ctx context.Context, keep map[string]bool) ([]string, error) {
	ids, err := d.Quota.List(ctx)
	if err != nil {
		return nil, err
	}
	rootfs, err := listDir(filepath.Join(d.dir, "rootfs"))
	if err != nil {
		return nil, err
	}
	var reaped []string
	var errs []error
	for _, id := range sortedUnion(ids, rootfs) {
		if keep[id] {
			continue
		}
		if err := d.Teardown(ctx, id); err != nil {
			errs = append(errs, fmt.Errorf("reap disk of %s: %w", id, err))
			continue
		}
		reaped = append(reaped, id)
	}
	return reaped, errors.Join(errs...)
}

// unmount unmounts path if it is a mount point (every layer of it).
func unmount(ctx context.Context, sys system, path string) error {
	for range 8 {
		mounted, err := sys.Mounted(path)
		if err != nil || !mounted {
			return err
		}
		if err := umountBusy(ctx, sys, path); err != nil {
			return err
		}
	}
	return fmt.Errorf("%s: still mounted", path)
}

// busyRetries is how long umountBusy waits out a busy mount: the first
// delay, doubled each time, for this many tries (about 3 s in all).
var busyRetries = struct {
	first time.Duration
	tries int
}{50 * time.Millisecond, 6}

// umountBusy unmounts path, waiting a little while it is busy: a process
// that just ended (the task's log writer) may still hold a file on it.
func umountBusy(ctx context.Context, sys system, path string) error {
	b := backoff.New(backoff.Policy{Base: busyRetries.first})
	for try := 1; ; try++ {
		_, err := sys.Run(ctx, "umount", path)
		if err == nil || !strings.Contains(err.Error(), "busy") || try >= busyRetries.tries {
			return err
		}
		if !b.Wait(ctx) {
			return err
		}
	}
}

// listDir returns the names in dir; a missing dir is empty.
func listDir(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(ents))
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names, nil
}

func sortedUnion(lists ...[]string) []string {
	var out []string
	for _, l := range lists {
		out = append(out, l...)
	}
	slices.Sort(out)
	return slices.Compact(out)
}
