package isolation

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os/exec"
	"strings"
	"syscall"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/moby/sys/mountinfo"
)

// system is the host side of the disk backends: commands (mkfs, mount,
// losetup, xfs_quota), in-process mounts (overlays, which may need
// ID-mapped layers that mount(8) cannot make) and the mount table. Fakes
// record the calls.
type system interface {
	Run(ctx context.Context, name string, args ...string) ([]byte, error)
	Mount(m mount.Mount, target string) error
	Mounted(path string) (bool, error)
}

// hostSystem runs real commands on this host.
type hostSystem struct{}

func (hostSystem) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	// Its own process group: a SIGTERM or Ctrl-C sent to the agent's group
	// must not kill a umount or losetup of a teardown the stopping agent
	// still waits for (that left a task's disk mounted and looped).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Run(); err != nil {
		return out.Bytes(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.Bytes(), nil
}

func (hostSystem) Mount(m mount.Mount, target string) error {
	if err := m.Mount(target); err != nil {
		return fmt.Errorf("mount %s on %s: %w", m.Type, target, err)
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
