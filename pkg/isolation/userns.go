package isolation

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"
	"slices"
	"syscall"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// LabelUserNS set to "true" asks for the task to run in its own user
// namespace: its root is an unprivileged host user, with a range of host
// IDs no other task has. It needs a disk quota (the task's root filesystem
// is then an overlay with ID-mapped layers).
const LabelUserNS = "titus.isolation/user-namespace"

// ErrUserNSUnavailable is returned (wrapped) when a task asks for a user
// namespace on a host that does not give them.
var ErrUserNSUnavailable = errors.New("user namespaces not available on this host")

// IDRanges hands tasks disjoint ranges of host IDs: slot i is
// [Base+i*Size, Base+(i+1)*Size).
type IDRanges struct {
	Base, Size, Count uint32
}

// Validate checks that the ranges are usable and fit in 32 bits.
func (r IDRanges) Validate() error {
	if r.Base == 0 || r.Size == 0 || r.Count == 0 {
		return errors.New("user namespace ranges: base, size and count must be positive")
	}
	if uint64(r.Base)+uint64(r.Size)*uint64(r.Count) > 1<<32-1 {
		return errors.New("user namespace ranges: base + size*count must fit in 32 bits")
	}
	return nil
}

// slotOf returns the slot whose range starts at hostID.
func (r IDRanges) slotOf(hostID uint32) (uint32, bool) {
	if hostID < r.Base || (hostID-r.Base)%r.Size != 0 {
		return 0, false
	}
	slot := (hostID - r.Base) / r.Size
	return slot, slot < r.Count
}

// userNS is the mapping of slot: container IDs 0..Size-1 onto its range.
func (r IDRanges) userNS(slot uint32) *UserNS {
	m := []specs.LinuxIDMapping{{ContainerID: 0, HostID: r.Base + slot*r.Size, Size: r.Size}}
	return &UserNS{UIDMap: m, GIDMap: append([]specs.LinuxIDMapping(nil), m...)}
}

// pick returns a free slot for taskID: from a hash of the ID, probed past
// slots in use.
func (r IDRanges) pick(taskID string, used map[uint32]bool) (uint32, error) {
	h := fnv.New32a()
	h.Write([]byte(taskID))
	start := h.Sum32() % r.Count
	for i := range r.Count {
		if slot := (start + i) % r.Count; !used[slot] {
			return slot, nil
		}
	}
	return 0, fmt.Errorf("user namespace ranges: all %d in use", r.Count)
}

// WithUserNS runs the container in a user namespace with u's maps. Apply
// it after the network namespace is set: a task joining a network
// namespace made outside its user namespace (the agent's VPC netns) may not
// mount a sysfs there, so it gets the host's /sys bound read-only instead,
// as rootless runtimes do (the masked paths still apply).
func WithUserNS(u *UserNS) oci.SpecOpts {
	return func(ctx context.Context, c oci.Client, ctr *containers.Container, s *oci.Spec) error {
		if u == nil {
			return nil
		}
		if err := oci.WithUserNamespace(u.UIDMap, u.GIDMap)(ctx, c, ctr, s); err != nil {
			return err
		}
		if s.Linux == nil || !slices.ContainsFunc(s.Linux.Namespaces, func(n specs.LinuxNamespace) bool {
			return n.Type == specs.NetworkNamespace && n.Path != ""
		}) {
			return nil
		}
		for i, m := range s.Mounts {
			if m.Destination == "/sys" && m.Type == "sysfs" {
				s.Mounts[i] = specs.Mount{Destination: "/sys", Type: "bind", Source: "/sys",
					Options: []string{"rbind", "nosuid", "noexec", "nodev", "ro"}}
			}
		}
		return nil
	}
}

// HostRoot is the host UID the task's root runs as.
func (u *UserNS) HostRoot() uint32 {
	for _, m := range u.UIDMap {
		if m.ContainerID == 0 {
			return m.HostID
		}
	}
	return 0
}

// idmapOption renders a mapping as containerd's overlay mount option
// (uidmap=/gidmap=) wants it: "container:host:size[,...]".
func idmapOption(ms []specs.LinuxIDMapping) string {
	var s string
	for i, m := range ms {
		if i > 0 {
			s += ","
		}
		s += fmt.Sprintf("%d:%d:%d", m.ContainerID, m.HostID, m.Size)
	}
	return s
}

// ownerUID returns the owner of path.
func ownerUID(path string) (uint32, error) {
	st, err := os.Stat(path)
	if err != nil {
		return 0, err
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, fmt.Errorf("%s: no owner", path)
	}
	return sys.Uid, nil
}

// traversable checks that every directory from dir up to / lets others
// through (x for others), as a task's unprivileged root must pass them to
// reach its root filesystem.
func traversable(dir string) error {
	for p := filepath.Clean(dir); ; p = filepath.Dir(p) {
		st, err := os.Stat(p)
		if err != nil {
			return err
		}
		if st.Mode().Perm()&0o001 == 0 {
			return fmt.Errorf("%s (mode %o) is not searchable by others, as unprivileged task roots need", p, st.Mode().Perm())
		}
		if p == "/" {
			return nil
		}
	}
}
