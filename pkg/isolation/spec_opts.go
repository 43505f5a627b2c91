package isolation

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"github.com/containerd/containerd/v2/contrib/seccomp"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/titus-agent/titus-agent/pkg/task"
)

// Defaults for Options left empty.
const (
	// DefaultInitPath is Debian's static tini (package tini).
	DefaultInitPath = "/usr/bin/tini-static"
	// InitMountPath is where the init binary appears inside the task.
	InitMountPath = "/sbin/titus-init"
	// DefaultOOMScoreAdj makes the kernel pick a task's processes long
	// before the agent (which should run at a negative score).
	DefaultOOMScoreAdj = 500
	// CFSPeriod is the CFS period in microseconds.
	CFSPeriod uint64 = 100000
)

// Labels through which a task asks for host paths and devices; each is
// granted only if the host's Options allow it.
const (
	// LabelHostMounts is a comma-separated list of "src:dst[:rw]" bind
	// mounts (read-only unless ":rw", which the host must allow for src).
	LabelHostMounts = "titus.isolation/host-mounts"
	// LabelDevices is a comma-separated list of host device paths.
	LabelDevices = "titus.isolation/devices"
)

// ErrNotAllowed is returned (wrapped) when a task asks for a host path or
// device the host does not allow.
var ErrNotAllowed = errors.New("not allowed on this host")

// UserNS remaps the task's users to an unprivileged host range. A task gets
// one from Disks.SetupUserNS (its range matches its upper directory's
// owner) and runs in it by WithUserNS: the only path into a user namespace.
type UserNS struct {
	UIDMap []specs.LinuxIDMapping
	GIDMap []specs.LinuxIDMapping
}

// Options are the host's isolation settings.
type Options struct {
	// InitPath is the host's static init binary; DefaultInitPath if empty.
	InitPath string
	// NoInit runs the task's process as PID 1 without an init.
	NoInit bool
	// OOMScoreAdj for the task's processes; DefaultOOMScoreAdj if zero.
	OOMScoreAdj int
	// CPUSet pins tasks to these CPUs ("2-3"); empty means any.
	CPUSet string
	// AllowedHostPaths are host paths (and everything below them) tasks may
	// bind-mount via LabelHostMounts, each read-only unless it says
	// otherwise: CheckHostRequests checks requests against them at the
	// door, HostMounts grants them (SpecOpts does not).
	AllowedHostPaths []HostPath
	// AllowedDevices are host devices tasks may get via LabelDevices.
	AllowedDevices []string
	// XFSQuota says disks are XFS project quotas: a task that is not in
	// its own user namespace then runs without CAP_FOWNER (see
	// TaskCapabilities).
	XFSQuota bool
	// Compat32Bit lets tasks make 32-bit (x86, x32) system calls. Off, the
	// seccomp profile covers the native ABI only and the kernel refuses the
	// others: 32-bit binaries do not run, a long-standing kernel attack
	// surface is closed, and runc 1.1 compiles a third of the filter (on
	// Debian 12's runc that is most of a launch's seccomp cost).
	Compat32Bit bool
	// NoCPUBurst: the kernel has no CFS burst control (see HasCPUBurst);
	// CheckCPUBurst then refuses a burst allowance.
	NoCPUBurst bool
}

// DefaultCapabilities is what a task's root gets: containerd's default set
// without CAP_NET_RAW (no raw sockets); CAP_SYS_ADMIN and CAP_NET_ADMIN are
// never in it.
var DefaultCapabilities = []string{
	"CAP_AUDIT_WRITE",
	"CAP_CHOWN",
	"CAP_DAC_OVERRIDE",
	"CAP_FOWNER",
	"CAP_FSETID",
	"CAP_KILL",
	"CAP_MKNOD",
	"CAP_NET_BIND_SERVICE",
	"CAP_SETFCAP",
	"CAP_SETGID",
	"CAP_SETPCAP",
	"CAP_SETUID",
	"CAP_SYS_CHROOT",
}

// TaskCapabilities is DefaultCapabilities for spec on a host with o, less
// CAP_FOWNER when disks are XFS project quotas and the task is not in its
// own user namespace: with it, the task's root could set the project ID
// (FS_IOC_FSSETXATTR) of files it does not own and move them out of its
// quota. A task in a user namespace keeps it: the kernel refuses project
// ID changes from any namespace but the host's. (The file's owner needs no
// capability for that ioctl: see docs/security.md for what closes it.)
func TaskCapabilities(spec *task.Spec, o Options) []string {
	if !o.XFSQuota || (spec.Labels[LabelUserNS] == "true" && spec.Resources.DiskMiB > 0) {
		return DefaultCapabilities
	}
	return slices.DeleteFunc(slices.Clone(DefaultCapabilities), func(c string) bool { return c == "CAP_FOWNER" })
}

// MaskedPaths are hidden from tasks (in addition to what the base spec
// masks).
var MaskedPaths = []string{
	"/proc/acpi",
	"/proc/asound",
	"/proc/interrupts",
	"/proc/kcore",
	"/proc/keys",
	"/proc/latency_stats",
	"/proc/sched_debug",
	"/proc/scsi",
	"/proc/timer_list",
	"/proc/timer_stats",
	"/sys/devices/virtual/powercap",
	"/sys/firmware",
	"/sys/kernel/debug",
}

// ReadonlyPaths are read-only for tasks.
var ReadonlyPaths = []string{
	"/proc/bus",
	"/proc/fs",
	"/proc/irq",
	"/proc/sys",
	"/proc/sysrq-trigger",
}

// SpecOpts returns the OCI options that set spec's resource limits and
// harden its container. Apply them after the image config and args: the
// init wraps whatever the process args are by then, and the seccomp
// profile follows the final capability set.
func SpecOpts(spec *task.Spec, o Options) []oci.SpecOpts {
	opts := []oci.SpecOpts{WithResources(spec.Resources, o.CPUSet)}
	opts = append(opts,
		withCapabilities(TaskCapabilities(spec, o)),
		oci.WithNoNewPrivileges,
		withPaths(MaskedPaths, ReadonlyPaths),
		withReadonlySys,
		withOOMScoreAdj(cmpOr(o.OOMScoreAdj, DefaultOOMScoreAdj)),
		withDevices(spec.Labels, o.AllowedDevices),
	)
	if !o.NoInit {
		opts = append(opts, withInit(cmpOr(o.InitPath, DefaultInitPath)))
	}
	// Last: the profile allows syscalls by the capabilities set above.
	opts = append(opts, seccomp.WithDefaultProfile(), withoutProjectIDChanges)
	if !o.Compat32Bit {
		opts = append(opts, withNativeSyscallsOnly)
	}
	return opts
}

// withNativeSyscallsOnly drops the profile's extra architectures: runc then
// filters for the native ABI only and refuses system calls of any other.
func withNativeSyscallsOnly(_ context.Context, _ oci.Client, _ *containers.Container, s *specs.Spec) error {
	if s.Linux != nil && s.Linux.Seccomp != nil {
		s.Linux.Seccomp.Architectures = nil
	}
	return nil
}

func cmpOr[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// WithResources sets CPU (CFS quota + shares and a burst allowance, or
// shares only for cpuBurst),
// memory without swap, pids and cpuset: the one place a task's limits are
// set (SpecOpts includes it; the runtime applies what it is given). The same spec fields drive cgroup
// v1 and v2 (runc converts shares to weight and swap to memory.swap.max).
func WithResources(r task.Resources, cpuset string) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		res := linuxResources(s)
		if r.CPUMillicores > 0 {
			shares := max(uint64(r.CPUMillicores)*1024/1000, 2)
			if res.CPU == nil {
				res.CPU = &specs.LinuxCPU{}
			}
			res.CPU.Shares = &shares
			if r.CPUBurst {
				res.CPU.Quota, res.CPU.Period = nil, nil
			} else {
				quota, period := r.CPUMillicores*int64(CFSPeriod)/1000, CFSPeriod
				res.CPU.Quota, res.CPU.Period = &quota, &period
				if r.CPUBurstMillicores > 0 {
					// runc >= 1.2 writes it to cpu.max.burst (v2) or
					// cpu.cfs_burst_us (v1); task.Validate keeps it <= quota.
					burst := uint64(r.CPUBurstMillicores) * CFSPeriod / 1000
					res.CPU.Burst = &burst
				}
			}
		}
		if cpuset != "" {
			if res.CPU == nil {
				res.CPU = &specs.LinuxCPU{}
			}
			res.CPU.Cpus = cpuset
		}
		if r.MemoryMiB > 0 {
			limit := r.MemoryMiB << 20
			swap := limit // v1 memsw = limit + swap: equal means no swap
			if res.Memory == nil {
				res.Memory = &specs.LinuxMemory{}
			}
			res.Memory.Limit, res.Memory.Swap = &limit, &swap
		}
		if r.Pids > 0 {
			pids := r.Pids
			res.Pids = &specs.LinuxPids{Limit: &pids}
		}
		return nil
	}
}

func linuxResources(s *oci.Spec) *specs.LinuxResources {
	if s.Linux == nil {
		s.Linux = &specs.Linux{}
	}
	if s.Linux.Resources == nil {
		s.Linux.Resources = &specs.LinuxResources{}
	}
	return s.Linux.Resources
}

// withCapabilities sets exactly caps as bounding, effective and permitted
// and no inheritable or ambient ones.
func withCapabilities(caps []string) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		if s.Process == nil {
			s.Process = &specs.Process{}
		}
		s.Process.Capabilities = &specs.LinuxCapabilities{
			Bounding:  slices.Clone(caps),
			Effective: slices.Clone(caps),
			Permitted: slices.Clone(caps),
		}
		return nil
	}
}

// withPaths adds masked and read-only paths to those already in the spec.
func withPaths(masked, readonly []string) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		if s.Linux == nil {
			s.Linux = &specs.Linux{}
		}
		s.Linux.MaskedPaths = union(s.Linux.MaskedPaths, masked)
		s.Linux.ReadonlyPaths = union(s.Linux.ReadonlyPaths, readonly)
		return nil
	}
}

func union(a, b []string) []string {
	out := slices.Clone(a)
	for _, p := range b {
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out
}

// withReadonlySys makes the /sys mount (and a cgroup mount) read-only.
func withReadonlySys(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
	for i, m := range s.Mounts {
		if (m.Type == "sysfs" || m.Type == "cgroup" || m.Type == "cgroup2") && !slices.Contains(m.Options, "ro") {
			s.Mounts[i].Options = append(slices.DeleteFunc(slices.Clone(m.Options), func(o string) bool { return o == "rw" }), "ro")
		}
	}
	return nil
}

func withOOMScoreAdj(adj int) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		if s.Process == nil {
			s.Process = &specs.Process{}
		}
		s.Process.OOMScoreAdj = &adj
		return nil
	}
}

// withInit bind-mounts the static init read-only and makes it PID 1: it
// reaps zombies (-s also as subreaper) and forwards signals to the task's
// process group (-g).
func withInit(hostPath string) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		if s.Process == nil {
			s.Process = &specs.Process{}
		}
		if len(s.Process.Args) == 0 {
			return errors.New("init: task has no command")
		}
		if s.Process.Args[0] == InitMountPath {
			return nil
		}
		s.Mounts = append(s.Mounts, specs.Mount{
			Destination: InitMountPath,
			Type:        "bind",
			Source:      hostPath,
			Options:     []string{"rbind", "ro", "nosuid", "nodev"},
		})
		s.Process.Args = append([]string{InitMountPath, "-s", "-g", "--"}, s.Process.Args...)
		return nil
	}
}

// withDevices grants the host devices a task asks for in its labels, each
// only if the host allows it. (Host paths are staged by HostMounts: they
// reach the spec as the task's mounts.)
func withDevices(labels map[string]string, allowedDevices []string) oci.SpecOpts {
	return func(ctx context.Context, c oci.Client, ctr *containers.Container, s *oci.Spec) error {
		for _, d := range splitList(labels[LabelDevices]) {
			if !slices.Contains(allowedDevices, filepath.Clean(d)) {
				return fmt.Errorf("device %s: %w", d, ErrNotAllowed)
			}
			if err := oci.WithDevices(d, d, "rwm")(ctx, c, ctr, s); err != nil {
				return fmt.Errorf("device %s: %w", d, err)
			}
		}
		return nil
	}
}

func within(p, dir string) bool {
	rel, err := filepath.Rel(dir, p)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}

func splitList(v string) []string {
	var out []string
	for s := range strings.SplitSeq(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}
