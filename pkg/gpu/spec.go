package gpu

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"tags.cncf.io/container-device-interface/pkg/cdi"
)

// CDIKind is the NVIDIA Container Toolkit's CDI device kind; its devices
// are named by GPU index ("nvidia.com/gpu=0").
const CDIKind = "nvidia.com/gpu"

// DefaultCDISpecDirs are where the toolkit writes its CDI spec.
var DefaultCDISpecDirs = []string{"/etc/cdi", "/var/run/cdi"}

// Assignment is what one task gets.
type Assignment struct {
	// Devices are the task's own GPUs.
	Devices []Device
	// Shared are the driver nodes every GPU task gets.
	Shared []Node
	// DriverFiles are host files (libraries, tools) mounted read-only at
	// the same path.
	DriverFiles []string
	// CDI, when not empty, are the qualified CDI names of Devices: the CDI
	// spec in CDISpecDirs then says what the task gets instead of Shared
	// and DriverFiles.
	CDI         []string
	CDISpecDirs []string
}

// RuntimeExtras are the NVIDIA container runtime's variables that give a
// container, besides its GPUs, nodes the whole host shares: NVSwitch and
// MIG control, IMEX channels, GPUDirect Storage and RDMA, GDRCopy. The
// agent sets them empty in a GPU task's container (an image's value does
// not hold) and refuses them in a task's env.
var RuntimeExtras = []string{"NVIDIA_GDRCOPY", "NVIDIA_GDS", "NVIDIA_IMEX_CHANNELS", "NVIDIA_MIG_CONFIG_DEVICES",
	"NVIDIA_MIG_MONITOR_DEVICES", "NVIDIA_MOFED", "NVIDIA_NVSWITCH"}

// VisibleDevices is NVIDIA_VISIBLE_DEVICES for the devices: their indices.
func VisibleDevices(ds []Device) string {
	ids := make([]string, len(ds))
	for i, d := range ds {
		ids[i] = strconv.Itoa(d.Index)
	}
	return strings.Join(ids, ",")
}

// SpecOpts gives a task its assignment: the device nodes and cgroup rules
// allowing read and write of exactly those nodes (the spec's default rule
// denies every other device; runc turns the rules into the v1 devices
// controller or a v2 eBPF program), the driver files read-only and
// NVIDIA_VISIBLE_DEVICES; or the CDI injection of the devices.
func SpecOpts(a Assignment) oci.SpecOpts {
	return func(ctx context.Context, c oci.Client, ctr *containers.Container, s *oci.Spec) error {
		if len(a.Devices) == 0 {
			return nil
		}
		if len(a.CDI) > 0 {
			if err := injectCDI(s, a.CDISpecDirs, a.CDI); err != nil {
				return err
			}
		} else {
			addNodes(s, a)
			for _, f := range a.DriverFiles {
				s.Mounts = append(s.Mounts, specs.Mount{Destination: f, Type: "bind", Source: f,
					Options: []string{"rbind", "ro", "nosuid", "nodev"}})
			}
		}
		return oci.WithEnv([]string{"NVIDIA_VISIBLE_DEVICES=" + VisibleDevices(a.Devices)})(ctx, c, ctr, s)
	}
}

func addNodes(s *oci.Spec, a Assignment) {
	if s.Linux == nil {
		s.Linux = &specs.Linux{}
	}
	if s.Linux.Resources == nil {
		s.Linux.Resources = &specs.LinuxResources{}
	}
	nodes := make([]Node, 0, len(a.Devices)+len(a.Shared))
	for _, d := range a.Devices {
		nodes = append(nodes, d.Node)
	}
	nodes = append(nodes, a.Shared...)
	for _, n := range nodes {
		mode := os.FileMode(0o666)
		zero := uint32(0)
		s.Linux.Devices = append(s.Linux.Devices, specs.LinuxDevice{
			Path: n.ContainerPath(), Type: "c", Major: int64(n.Major), Minor: int64(n.Minor),
			FileMode: &mode, UID: &zero, GID: &zero,
		})
		major, minor := int64(n.Major), int64(n.Minor)
		s.Linux.Resources.Devices = append(s.Linux.Resources.Devices, specs.LinuxDeviceCgroup{
			Allow: true, Type: "c", Major: &major, Minor: &minor, Access: "rw",
		})
	}
}

func injectCDI(s *oci.Spec, dirs, names []string) error {
	cache, err := cdi.NewCache(cdi.WithSpecDirs(dirs...), cdi.WithAutoRefresh(false))
	if err != nil {
		return fmt.Errorf("gpu: CDI specs in %v: %w", dirs, err)
	}
	if unresolved, err := cache.InjectDevices(s, names...); err != nil {
		return fmt.Errorf("gpu: CDI injection of %v (unresolved %v): %w", names, unresolved, err)
	}
	return nil
}

// CDINames are the CDI names of the devices if a CDI spec in dirs names
// every one of them (nvidia.com/gpu=INDEX), else nil: the agent then
// gives the devices itself.
func CDINames(dirs []string, ds []Device) ([]string, error) {
	cache, err := cdi.NewCache(cdi.WithSpecDirs(dirs...), cdi.WithAutoRefresh(false))
	if err != nil {
		return nil, fmt.Errorf("gpu: CDI specs in %v: %w", dirs, err)
	}
	have := cache.ListDevices()
	out := make([]string, 0, len(ds))
	for _, d := range ds {
		n := CDIKind + "=" + strconv.Itoa(d.Index)
		if !slices.Contains(have, n) {
			return nil, nil
		}
		out = append(out, n)
	}
	return out, nil
}

// DriverGlobs are the NVIDIA driver's user-space files a CUDA task needs
// (what the toolkit's "utility" and "compute" capabilities mount).
var DriverGlobs = []string{
	"/usr/bin/nvidia-smi", "/usr/bin/nvidia-debugdump", "/usr/bin/nvidia-persistenced",
	"/usr/bin/nvidia-cuda-mps-control", "/usr/bin/nvidia-cuda-mps-server",
	"/usr/lib/x86_64-linux-gnu/libnvidia-ml.so*", "/usr/lib/x86_64-linux-gnu/libcuda.so*",
	"/usr/lib/x86_64-linux-gnu/libnvidia-ptxjitcompiler.so*", "/usr/lib/x86_64-linux-gnu/libnvidia-nvvm.so*",
	"/usr/lib/x86_64-linux-gnu/libnvidia-opencl.so*", "/usr/lib/x86_64-linux-gnu/libcudadebugger.so*",
	"/usr/lib64/libnvidia-ml.so*", "/usr/lib64/libcuda.so*", "/usr/lib64/libnvidia-ptxjitcompiler.so*",
	"/usr/lib64/libnvidia-nvvm.so*",
}

// DriverFiles are the regular files (symlinks resolved to a file below
// the same directory are kept as the link's path) matching globs.
func DriverFiles(globs []string) []string {
	var out []string
	for _, g := range globs {
		ms, _ := filepath.Glob(g)
		for _, m := range ms {
			if fi, err := os.Stat(m); err == nil && fi.Mode().IsRegular() && !slices.Contains(out, m) {
				out = append(out, m)
			}
		}
	}
	slices.Sort(out)
	return out
}
