package secrets

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// Tmpfs is the real Mounter.
type Tmpfs struct{}

// Mount mounts a tmpfs nobody can execute from or make devices or setuid
// files on, that never swaps out to a disk... as far as the kernel allows:
// tmpfs pages can be swapped; hosts that run secrets should have no swap
// or encrypted swap (docs/security.md).
func (Tmpfs) Mount(dir string, size int64) error {
	return unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC,
		fmt.Sprintf("size=%d,nr_inodes=1024,mode=0700,uid=0,gid=0", size))
}

// Unmount detaches dir (lazily: a container that still holds a bind of it
// keeps its view until it is gone, and the values are freed then).
func (Tmpfs) Unmount(dir string) error {
	err := unix.Unmount(dir, unix.MNT_DETACH)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
		return nil // not a mount point (any more)
	}
	return err
}

// Mounted says whether dir is a mount point.
func (Tmpfs) Mounted(dir string) (bool, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return false, err
	}
	if _, err := os.Lstat(abs); errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	return mountinfo.Mounted(abs)
}
