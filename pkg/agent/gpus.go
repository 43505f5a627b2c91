package agent

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"

	"github.com/containerd/errdefs"

	"github.com/titus-agent/titus-agent/pkg/agent/taskrunner"
	"github.com/titus-agent/titus-agent/pkg/gpu"
	"github.com/titus-agent/titus-agent/pkg/schedlink"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// ErrNoFreeGPUs refuses a launch asking for more GPUs than are free here.
var ErrNoFreeGPUs = errdefs.ErrResourceExhausted.WithMessage("not enough free GPUs")

// GPUAssigner chooses a task's GPUs among those not inUse.
type GPUAssigner interface {
	Assign(n int, inUse map[int]bool) (*taskrunner.GPUs, error)
}

// assignGPUs gives a task n GPUs no other task holds (a task holds its
// GPUs from its Accepted record until its teardown completed). Call with
// m.mu held.
func (m *Manager) assignGPUs(n int) (*taskrunner.GPUs, error) {
	if n <= 0 {
		return nil, nil
	}
	if m.cfg.GPUs == nil {
		return nil, fmt.Errorf("%w: the task asks for %d, this host has none", ErrNoFreeGPUs, n)
	}
	if m.gpuDoubt {
		return nil, fmt.Errorf("%w: a task whose record is quarantined may hold GPUs; "+
			"GPU tasks are refused until an operator resolves it (docs/operations.md)", ErrNoFreeGPUs)
	}
	inUse := map[int]bool{}
	for _, r := range m.runners {
		for _, i := range r.HeldGPUs() {
			inUse[i] = true
		}
	}
	for _, rec := range m.pending {
		for _, i := range rec.Resources.GPUs.Indices() {
			inUse[i] = true
		}
	}
	g, err := m.cfg.GPUs.Assign(n, inUse)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNoFreeGPUs, err)
	}
	return g, nil
}

// gpuAssigner is p as a GPUAssigner: nil (no GPUs) for nil.
func gpuAssigner(p *gpuPool) GPUAssigner {
	if p == nil {
		return nil
	}
	return p
}

// gpuPool is the host's GPUs as discovered at start.
type gpuPool struct {
	inv         gpu.Inventory
	driverFiles []string
	cdiDirs     []string
}

// Assign picks free devices and says how the task gets them: through the
// toolkit's CDI spec when one names every picked device, else the agent's
// own device nodes and driver files.
func (p *gpuPool) Assign(n int, inUse map[int]bool) (*taskrunner.GPUs, error) {
	ds, err := gpu.Pick(p.inv, n, inUse)
	if err != nil {
		return nil, err
	}
	a := gpu.Assignment{Devices: ds}
	names, err := gpu.CDINames(p.cdiDirs, ds)
	if err != nil {
		return nil, err
	}
	if names != nil {
		a.CDI, a.CDISpecDirs = names, p.cdiDirs
	} else {
		a.Shared, a.DriverFiles = p.inv.Shared, p.driverFiles
	}
	return taskrunner.GPUsFrom(a), nil
}

// advertise puts the GPUs in what the scheduler link reports.
func (p *gpuPool) advertise(cfg *schedlink.Config) {
	if p == nil {
		return
	}
	cfg.Capacity.GPUs = int32(len(p.inv.Devices))
	for _, d := range p.inv.Devices {
		// Model and memory are placement attributes (gpu.model, gpu.memoryMiB).
		cfg.Attributes.GPUs = append(cfg.Attributes.GPUs, schedlink.GPU{Index: int32(d.Index), Model: d.Model, MemoryMiB: d.MemoryMiB})
	}
}

// discoverGPUs finds the host's GPUs under cfg.DevRoot; nil when it has
// none.
func discoverGPUs(ctx context.Context, cfg GPUConfig, log *slog.Logger) (*gpuPool, error) {
	inv, err := gpu.Discover(ctx, cfg.DevRoot, gpu.OSDevFS{}, gpu.NvidiaSMI{Path: cfg.NvidiaSMI})
	if err != nil {
		return nil, err
	}
	for _, w := range inv.Warnings {
		log.Warn("gpu discovery", "warning", w)
	}
	if len(inv.Devices) == 0 {
		return nil, nil
	}
	globs := cfg.DriverFiles
	if globs == nil {
		globs = gpu.DriverGlobs
	}
	p := &gpuPool{inv: inv, driverFiles: gpu.DriverFiles(globs), cdiDirs: cfg.CDISpecDirs}
	log.Info("GPUs", "count", len(inv.Devices), "model", inv.Model(), "memoryMiB", inv.MemoryMiB(),
		"devRoot", cfg.DevRoot, "driverFiles", len(p.driverFiles))
	return p, nil
}

// gpuHostCheck refuses a task's own NVIDIA_VISIBLE_DEVICES,
// NVIDIA_DRIVER_CAPABILITIES and gpu.RuntimeExtras: a host whose
// containerd runs the NVIDIA container runtime would give the task the
// GPUs they name, or nodes the whole host shares. Its GPUs come from
// resources.gpus only.
func gpuHostCheck(s *task.Spec, c *task.Checker) {
	for _, k := range append([]string{"NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES"}, gpu.RuntimeExtras...) {
		if _, ok := s.Env[k]; ok {
			c.Failf("env."+k, "is set by the agent from resources.gpus")
		}
	}
}

// checkAllowedDevices refuses an allowedDevices entry that is one of the
// GPUs' nodes: any task could then name it and share a GPU.
func checkAllowedDevices(allowed []string, p *gpuPool) error {
	if p == nil {
		return nil
	}
	nodes := p.inv.Shared
	for _, d := range p.inv.Devices {
		nodes = append(nodes, d.Node)
	}
	for _, a := range allowed {
		ni, err := gpu.OSDevFS{}.Lstat(a)
		for _, n := range nodes {
			if filepath.Clean(a) == n.HostPath || filepath.Clean(a) == n.ContainerPath() ||
				(err == nil && ni.CharDevice && ni.Major == n.Major && ni.Minor == n.Minor) {
				return fmt.Errorf("isolation.allowedDevices: %s is the GPU node %s, given only through resources.gpus", a, n.HostPath)
			}
		}
	}
	return nil
}
