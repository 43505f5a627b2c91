package isolation

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
)

// XFS project IDs handed to tasks lie in [xfsProjectBase, xfsProjectBase+xfsProjectSpan).
const (
	xfsProjectBase = 1 << 20
	xfsProjectSpan = 1 << 30
)

// XFSQuota gives each task a directory <dir>/mnt/<task> on an XFS
// filesystem mounted with prjquota, limited by a project quota. The task's
// project ID is kept in <dir>/projects/<task>.
type XFSQuota struct {
	dir        string
	mountpoint string // of the XFS filesystem holding dir
	sys        system
	mu         sync.Mutex // project ID allocation
}

var _ DiskQuota = (*XFSQuota)(nil)

// NewXFSQuota uses dir on the XFS filesystem mounted at mountpoint.
func NewXFSQuota(dir, mountpoint string, sys system) *XFSQuota {
	return &XFSQuota{dir: dir, mountpoint: mountpoint, sys: sys}
}

func (q *XFSQuota) path(id string) string     { return filepath.Join(q.dir, "mnt", id) }
func (q *XFSQuota) projFile(id string) string { return filepath.Join(q.dir, "projects", id) }

func (q *XFSQuota) xfsQuota(ctx context.Context, cmd string) error {
	_, err := q.sys.Run(ctx, "xfs_quota", "-x", "-c", cmd, q.mountpoint)
	return err
}

// Create makes the task's directory, tags it with the task's project and
// sets the project's hard block limit. Repeating it re-applies the limit.
func (q *XFSQuota) Create(ctx context.Context, taskID string, sizeMiB int64) (*Disk, error) {
	if err := checkTaskID(taskID); err != nil {
		return nil, err
	}
	if sizeMiB <= 0 {
		return nil, fmt.Errorf("disk size %d MiB: must be positive", sizeMiB)
	}
	d := &Disk{TaskID: taskID, Backend: BackendXFSQuota, Path: q.path(taskID)}
	id, err := q.projectID(taskID)
	if err != nil {
		return nil, fmt.Errorf("disk %s: %w", taskID, err)
	}
	if err := os.MkdirAll(d.Path, 0o700); err != nil {
		return nil, fmt.Errorf("disk %s: %w", taskID, err)
	}
	for _, cmd := range []string{
		fmt.Sprintf("project -s -p %s %d", d.Path, id),
		fmt.Sprintf("limit -p bhard=%dm %d", sizeMiB, id),
	} {
		if err := q.xfsQuota(ctx, cmd); err != nil {
			return nil, fmt.Errorf("disk %s: %w", taskID, err)
		}
	}
	return d, nil
}

// projectID returns the task's recorded project ID or records a free one,
// derived from a hash of the task ID and probed past collisions.
func (q *XFSQuota) projectID(taskID string) (uint32, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if id, err := q.readProjectID(taskID); err == nil {
		return id, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return 0, err
	}
	names, err := listDir(filepath.Join(q.dir, "projects"))
	if err != nil {
		return 0, err
	}
	used := map[uint32]bool{}
	for _, n := range names {
		if id, err := q.readProjectID(n); err == nil {
			used[id] = true
		}
	}
	h := fnv.New32a()
	h.Write([]byte(taskID))
	off := h.Sum32() % xfsProjectSpan
	for used[xfsProjectBase+off] {
		off = (off + 1) % xfsProjectSpan
	}
	id := uint32(xfsProjectBase + off)
	if err := os.MkdirAll(filepath.Dir(q.projFile(taskID)), 0o700); err != nil {
		return 0, err
	}
	tmp := q.projFile(taskID) + ".tmp"
	if err := os.WriteFile(tmp, []byte(strconv.FormatUint(uint64(id), 10)), 0o600); err != nil {
		return 0, err
	}
	return id, os.Rename(tmp, q.projFile(taskID))
}

func (q *XFSQuota) readProjectID(taskID string) (uint32, error) {
	b, err := os.ReadFile(q.projFile(taskID))
	if err != nil {
		return 0, err
	}
	id, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 32)
	if err != nil {
		return 0, fmt.Errorf("project id of %s: %w", taskID, err)
	}
	return uint32(id), nil
}

// Remove deletes the task's directory and lifts its project's limit.
func (q *XFSQuota) Remove(ctx context.Context, taskID string) error {
	if err := checkTaskID(taskID); err != nil {
		return err
	}
	if err := os.RemoveAll(q.path(taskID)); err != nil {
		return fmt.Errorf("disk %s: %w", taskID, err)
	}
	id, err := q.readProjectID(taskID)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("disk %s: %w", taskID, err)
	}
	if err := q.xfsQuota(ctx, fmt.Sprintf("limit -p bhard=0 %d", id)); err != nil {
		return fmt.Errorf("disk %s: %w", taskID, err)
	}
	if err := os.Remove(q.projFile(taskID)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("disk %s: %w", taskID, err)
	}
	return nil
}

// List returns the tasks with a directory or a project record.
func (q *XFSQuota) List(ctx context.Context) ([]string, error) {
	dirs, err := listDir(filepath.Join(q.dir, "mnt"))
	if err != nil {
		return nil, err
	}
	projs, err := listDir(filepath.Join(q.dir, "projects"))
	if err != nil {
		return nil, err
	}
	for i, p := range projs {
		projs[i] = strings.TrimSuffix(p, ".tmp")
	}
	return sortedUnion(dirs, projs), nil
}
