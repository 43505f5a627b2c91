package runtime

import (
	"maps"

	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// ContainerSpec is what the task runner asks for; Create turns it into an
// OCI spec on top of the image's config.
type ContainerSpec struct {
	ID       string // container ID == task ID
	Image    Image  // as Pull returned it; not resolved again
	Args     []string
	Env      []string
	Labels   map[string]string
	Hostname string

	NetNSPath string        // join this network namespace if set
	Mounts    []specs.Mount // extra bind mounts (resolv.conf, hosts, ...)
	// RootfsPath, if set, is a pre-mounted root filesystem used instead of
	// a containerd snapshot of the image.
	RootfsPath string
	// SpecOpts are the task's limits and hardening (package isolation owns
	// both), applied last.
	SpecOpts []oci.SpecOpts
}

// specOpts lists the OCI options for cs, applied on top of containerd's
// default Linux spec. image applies the image config (oci.WithImageConfig in
// production, a stand-in in tests); explicit Args replace entrypoint and cmd.
func specOpts(cs ContainerSpec, image oci.SpecOpts) []oci.SpecOpts {
	var opts []oci.SpecOpts
	if cs.RootfsPath != "" {
		// First: the image config reads /etc/group from the root path.
		opts = append(opts, oci.WithRootFSPath(cs.RootfsPath))
	}
	opts = append(opts, image)
	if len(cs.Args) > 0 {
		opts = append(opts, oci.WithProcessArgs(cs.Args...))
	}
	if len(cs.Env) > 0 {
		opts = append(opts, oci.WithEnv(cs.Env))
	}
	if cs.Hostname != "" {
		opts = append(opts, oci.WithHostname(cs.Hostname))
	}
	if cs.NetNSPath != "" {
		opts = append(opts, oci.WithLinuxNamespace(specs.LinuxNamespace{
			Type: specs.NetworkNamespace, Path: cs.NetNSPath,
		}))
	}
	if len(cs.Mounts) > 0 {
		opts = append(opts, oci.WithMounts(cs.Mounts))
	}
	return append(opts, cs.SpecOpts...)
}

// containerLabels merges the caller's labels with ours; ours win.
func containerLabels(cs ContainerSpec) map[string]string {
	l := make(map[string]string, len(cs.Labels)+2)
	maps.Copy(l, cs.Labels)
	l[LabelManaged] = "true"
	l[LabelTaskID] = cs.ID
	return l
}
