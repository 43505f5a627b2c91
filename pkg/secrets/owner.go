package secrets

import (
	"context"
	"fmt"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// WithOwner gives the task's secrets in dir to the user the container's
// process runs as. Apply it last: it reads the user the image config
// resolved and, in a user namespace, maps it to the host IDs.
func WithOwner(dir string) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		if s.Process == nil {
			return fmt.Errorf("secrets: the container spec has no process")
		}
		uid, gid := s.Process.User.UID, s.Process.User.GID
		if s.Linux != nil && len(s.Linux.UIDMappings) > 0 {
			var ok bool
			if uid, ok = hostID(s.Linux.UIDMappings, uid); !ok {
				return fmt.Errorf("secrets: the task's uid %d is not mapped in its user namespace", s.Process.User.UID)
			}
			if gid, ok = hostID(s.Linux.GIDMappings, gid); !ok {
				return fmt.Errorf("secrets: the task's gid %d is not mapped in its user namespace", s.Process.User.GID)
			}
		}
		return Chown(dir, int(uid), int(gid))
	}
}

func hostID(ms []specs.LinuxIDMapping, id uint32) (uint32, bool) {
	for _, m := range ms {
		if id >= m.ContainerID && id-m.ContainerID < m.Size {
			return m.HostID + (id - m.ContainerID), true
		}
	}
	return 0, false
}
