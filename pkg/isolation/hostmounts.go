package isolation

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// mountSys is the part of the kernel HostMounts uses; sysMounts in
// production, a recording fake in tests.
type mountSys interface {
	// BindFD bind-mounts (recursively) the object fd refers to on target.
	BindFD(fd int, target string) error
	// Unmount detaches what is mounted on target; nothing mounted there
	// is not an error.
	Unmount(target string) error
}

// HostMounts grants the host paths tasks ask for (LabelHostMounts) so that
// what a task gets is exactly what was checked. Each source is opened
// from its allowed root without following symlinks (openHostPath), and the
// open descriptor, not a path, is bind-mounted on a staging point the
// agent owns, Dir/<task>/<n>; the container's mount names that point. A
// task that can write to a shared allowed directory may rename or swap a
// checked directory for a symlink at any moment: the staged mount holds
// the checked object itself and no path is resolved again. Stage and
// Release are idempotent; the staging points live until Release (the
// task's teardown), so an agent restart between the container's creation
// and its start finds them in place.
type HostMounts struct {
	Allowed []HostPath
	Dir     string
	sys     mountSys
}

// NewHostMounts stages the allowed paths' mounts under dir.
func NewHostMounts(allowed []HostPath, dir string) *HostMounts {
	return &HostMounts{Allowed: allowed, Dir: dir, sys: sysMounts{}}
}

// Stage checks every host mount in labels, stages each and returns the
// task's bind mounts. An error (ErrNotAllowed for a request the host does
// not grant) leaves whatever was staged for Release.
func (h *HostMounts) Stage(taskID string, labels map[string]string) ([]specs.Mount, error) {
	items := splitList(labels[LabelHostMounts])
	if len(items) == 0 {
		return nil, nil
	}
	if err := h.Release(taskID); err != nil {
		return nil, err
	}
	dir, err := h.taskDir(taskID)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o711); err != nil {
		return nil, fmt.Errorf("host mounts: %w", err)
	}
	var out []specs.Mount
	for i, item := range items {
		parts := strings.Split(item, ":")
		if len(parts) < 2 || len(parts) > 3 || !filepath.IsAbs(parts[0]) || !filepath.IsAbs(parts[1]) {
			return nil, fmt.Errorf("host mount %q: want src:dst[:rw] with absolute paths: %w", item, ErrNotAllowed)
		}
		mode := "ro"
		if len(parts) == 3 {
			if parts[2] != "rw" && parts[2] != "ro" {
				return nil, fmt.Errorf("host mount %q: mode must be ro or rw: %w", item, ErrNotAllowed)
			}
			mode = parts[2]
		}
		staged, err := h.stageOne(filepath.Join(dir, strconv.Itoa(i)), parts[0], mode)
		if err != nil {
			return nil, err
		}
		out = append(out, specs.Mount{
			Destination: filepath.Clean(parts[1]), Type: "bind", Source: staged,
			Options: bindOptions(mode),
		})
	}
	return out, nil
}

// bindOptions are a host mount's options. An rbind takes the
// filesystems mounted below the source along, and ro, nosuid and nodev
// hold for the top mount only: their recursive forms (runc applies them
// with mount_setattr, kernel 5.12) hold for the whole tree, else a task
// writes through a read-only grant into whatever is mounted below it.
func bindOptions(mode string) []string {
	o := []string{"rbind", mode, "nosuid", "nodev", "rnosuid", "rnodev"}
	if mode == "ro" {
		o = append(o, "rro")
	}
	return o
}

func (h *HostMounts) stageOne(target, src, mode string) (string, error) {
	fd, root, err := openHostPath(h.Allowed, src)
	if err != nil {
		return "", err
	}
	defer unix.Close(fd)
	if mode == "rw" && !root.ReadWrite {
		return "", fmt.Errorf("host path %s: read-write: %w (read-only here)", filepath.Clean(src), ErrNotAllowed)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return "", fmt.Errorf("host path %s: %w", src, err)
	}
	// The staging point has the source's kind: a bind mount needs a
	// directory for a directory and a file for anything else.
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		err = os.Mkdir(target, 0o711)
	} else {
		var f *os.File
		if f, err = os.OpenFile(target, os.O_CREATE|os.O_EXCL|os.O_RDONLY, 0o600); err == nil {
			err = f.Close()
		}
	}
	if err != nil {
		return "", fmt.Errorf("host path %s: staging point: %w", src, err)
	}
	if err := h.sys.BindFD(fd, target); err != nil {
		return "", fmt.Errorf("host path %s: stage: %w", src, err)
	}
	return target, nil
}

// Release unmounts and removes a task's staging points. A staging point
// is only ever removed (never emptied): a mount that would not go away
// stays, with its contents, and Release fails.
func (h *HostMounts) Release(taskID string) error {
	dir, err := h.taskDir(taskID)
	if err != nil {
		return err
	}
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return fmt.Errorf("host mounts of %s: %w", taskID, err)
	}
	var errs []error
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		if err := h.sys.Unmount(p); err != nil {
			errs = append(errs, fmt.Errorf("host mounts of %s: unmount %s: %w", taskID, p, err))
			continue
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("host mounts of %s: %w", taskID, err))
		}
	}
	if len(errs) == 0 {
		if err := os.Remove(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("host mounts of %s: %w", taskID, err))
		}
	}
	return errors.Join(errs...)
}

// Reap releases the staging points of tasks not in keep and returns their
// ids.
func (h *HostMounts) Reap(keep map[string]bool) ([]string, error) {
	ents, err := os.ReadDir(h.Dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, fmt.Errorf("host mounts: %w", err)
	}
	var reaped []string
	var errs []error
	for _, e := range ents {
		if keep[e.Name()] || !e.IsDir() {
			continue
		}
		if err := h.Release(e.Name()); err != nil {
			errs = append(errs, err)
			continue
		}
		reaped = append(reaped, e.Name())
	}
	slices.Sort(reaped)
	return reaped, errors.Join(errs...)
}

func (h *HostMounts) taskDir(taskID string) (string, error) {
	if taskID == "" || taskID == "." || taskID == ".." || strings.ContainsAny(taskID, "/\x00") {
		return "", fmt.Errorf("host mounts: task id %q: %w", taskID, ErrNotAllowed)
	}
	return filepath.Join(h.Dir, taskID), nil
}

// sysMounts mounts with the kernel. BindFD goes through /proc/self/fd:
// mount(2) follows that magic link to the very object the descriptor
// holds, whatever its path has become since.
type sysMounts struct{}

func (sysMounts) BindFD(fd int, target string) error {
	if err := unix.Mount("/proc/self/fd/"+strconv.Itoa(fd), target, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind: %w", err)
	}
	// Private: the staging point neither sends nor receives later mounts.
	if err := unix.Mount("", target, "", unix.MS_PRIVATE|unix.MS_REC, ""); err != nil {
		_ = unix.Unmount(target, unix.MNT_DETACH)
		return fmt.Errorf("make private: %w", err)
	}
	return nil
}

func (sysMounts) Unmount(target string) error {
	for {
		err := unix.Unmount(target, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW)
		switch {
		case err == nil:
			continue // bound twice (a Stage cut short and repeated): take all
		case errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOENT):
			return nil // not (or no longer) a mount point
		default:
			return err
		}
	}
}
