package isolation

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// HostPath is a host directory tasks may bind-mount (it and everything
// below it) through LabelHostMounts. Whether the mount may be writable is
// the host's choice, not the task's: a task may narrow ReadWrite to
// read-only, never widen a read-only path.
type HostPath struct {
	Path      string
	ReadWrite bool
}

// ParseHostPath reads the agent config's form "path[:ro|:rw]" (read-only
// unless ":rw").
func ParseHostPath(s string) (HostPath, error) {
	p, mode, _ := strings.Cut(s, ":")
	if !filepath.IsAbs(p) {
		return HostPath{}, fmt.Errorf("allowed host path %q must be absolute", s)
	}
	switch mode {
	case "", "ro":
		return HostPath{Path: filepath.Clean(p)}, nil
	case "rw":
		return HostPath{Path: filepath.Clean(p), ReadWrite: true}, nil
	}
	return HostPath{}, fmt.Errorf("allowed host path %q: mode must be ro or rw", s)
}

// openHostPath opens (O_PATH) what src names below the most specific
// allowed root that holds it, without following any symlink below that
// root: a task that can write into a shared allowed directory could
// otherwise plant "x -> /" there and have another task (or itself) mount
// the host's root. The path is walked with
// openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS) from the root; the
// descriptor is what gets mounted (HostMounts.Stage), never the tenant's
// string nor any path, so nothing renamed or swapped after the check
// changes what the task sees. The root itself is host config and may be
// reached through symlinks. The caller closes the descriptor.
func openHostPath(allowed []HostPath, src string) (int, HostPath, error) {
	src = filepath.Clean(src)
	root, ok := allowedRoot(allowed, src)
	if !ok {
		return -1, root, fmt.Errorf("host path %s: %w", src, ErrNotAllowed)
	}
	rootFD, err := unix.Open(root.Path, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, root, fmt.Errorf("allowed host path %s: %w", root.Path, err)
	}
	rel, err := filepath.Rel(root.Path, src)
	if err != nil {
		unix.Close(rootFD)
		return -1, root, fmt.Errorf("host path %s: %w", src, ErrNotAllowed)
	}
	if rel == "." {
		return rootFD, root, nil
	}
	defer unix.Close(rootFD)
	fd, err := unix.Openat2(rootFD, rel, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	})
	switch {
	case errors.Is(err, unix.ELOOP):
		return -1, root, fmt.Errorf("host path %s: a symlink below %s: %w", src, root.Path, ErrNotAllowed)
	case errors.Is(err, unix.EXDEV):
		return -1, root, fmt.Errorf("host path %s: escapes %s: %w", src, root.Path, ErrNotAllowed)
	case errors.Is(err, unix.ENOSYS):
		return -1, root, fmt.Errorf("host path %s: openat2 unavailable (kernel < 5.6), host mounts refused: %w", src, ErrNotAllowed)
	case err != nil:
		return -1, root, fmt.Errorf("host path %s: %w", src, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, root, fmt.Errorf("host path %s: %w", src, err)
	}
	if st.Mode&unix.S_IFMT == unix.S_IFLNK {
		unix.Close(fd)
		return -1, root, fmt.Errorf("host path %s: is a symlink: %w", src, ErrNotAllowed)
	}
	return fd, root, nil
}

// allowedRoot is the most specific allowed root that holds src (clean),
// by name alone.
func allowedRoot(allowed []HostPath, src string) (HostPath, bool) {
	var root HostPath
	for _, a := range allowed {
		a.Path = filepath.Clean(a.Path)
		if within(src, a.Path) && len(a.Path) >= len(root.Path) {
			root = a
		}
	}
	return root, root.Path != ""
}
