package isolation

import (
	"context"
	"errors"
	"fmt"
	"io/fs"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/titus-agent/titus-agent/pkg/hostcmd"
)

// system is the host side of the disk backends: commands (mkfs, mount,
// losetup, xfs_quota), in-process mounts (overlays, which may need
// ID-mapped layers that mount(8) cannot make) and the mount table. Fakes
// record the calls.
type system interface {
	Run(ctx context.Context, name string, args ...string) ([]byte, error)
	Mount(m mount.Mount, target string) error
	Mounted(path string) (bool, error)
	// AttachLoop attaches img to a free loop device doing direct I/O in
	// 4 KiB sectors and returns the device (what `losetup --find --show
	// --direct-io=on --sector-size 4096 img` does, without a process).
	AttachLoop(ctx context.Context, img string) (string, error)
	// MoveMount moves the mount at from to to (mount --move).
	MoveMount(from, to string) error
}

// hostSystem runs real commands on this host.
type hostSystem struct{}

// Run runs a host command in its own process group (package hostcmd).
func (hostSystem) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	return hostcmd.Run(ctx, name, args...)
}

func (hostSystem) Mount(m mount.Mount, target string) error {
	if err := m.Mount(target); err != nil {
		return fmt.Errorf("mount %s on %s: %w", m.Type, target, err)
	}
	return nil
}

// MoveMount moves a mount by MS_MOVE: no new superblock, no unmount. The
// kernel refuses it (EINVAL) for a mount whose parent mount is shared (a
// systemd host's /): there the mount is bound to to and from unmounted.
func (hostSystem) MoveMount(from, to string) error {
	err := unix.Mount(from, to, "", unix.MS_MOVE, "")
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("move mount %s to %s: %w", from, to, err)
	}
	if err := unix.Mount(from, to, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind mount %s to %s: %w", from, to, err)
	}
	if err := unix.Unmount(from, unix.MNT_DETACH); err != nil {
		return fmt.Errorf("unmount %s after binding it to %s: %w", from, to, err)
	}
	return nil
}

func (hostSystem) Mounted(path string) (bool, error) {
	ok, err := mountinfo.Mounted(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	return ok, err
}
