package agent

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"

	"github.com/containerd/containerd/v2/pkg/oci"

	"github.com/titus-agent/titus-agent/pkg/agent/taskrunner"
	"github.com/titus-agent/titus-agent/pkg/healthcheck"
	"github.com/titus-agent/titus-agent/pkg/isolation"
	"github.com/titus-agent/titus-agent/pkg/metrics"
	"github.com/titus-agent/titus-agent/pkg/refill"
	"github.com/titus-agent/titus-agent/pkg/runtime"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// wire builds the task lifecycle from the config:
//
//	stage 1: image ∥ host paths ∥ network ∥ secrets ∥ role credentials (prefetch)
//	stage 2: disk ∥ metadata ∥ bandwidth (they need the image or the netns)
//	stage 3: container create + start
//
// Stage 2 is no barrier: each of its hooks starts once what it reads is
// there (hookNeeds), so the disk is made while the network is set up.
func wire(ctx context.Context, cfg Config, log *slog.Logger, rt *runtime.Runtime, m *metrics.Agent) (*wiring, error) {
	w := &wiring{launches: &refill.Gate{}}
	first := []taskrunner.PrestartHook{&taskrunner.ImageHook{Puller: rt}}
	if stale, err := runtime.UseTempMountDir(filepath.Join(cfg.StateDir, "tmpmounts")); len(stale) > 0 || err != nil {
		log.Warn("unmounted temporary snapshot mounts of an earlier agent", "mounts", stale, "err", err)
	}
	w.reconcilers = append(w.reconcilers, orphanReaper{rt: rt, log: log})
	hostMounts := isolation.NewHostMounts(hostPaths(cfg.Isolation.AllowedHostPaths), filepath.Join(cfg.StateDir, "hostmounts"))
	first = append(first, &taskrunner.HostMountHook{Stager: hostMounts})
	w.reconcilers = append(w.reconcilers, reconcileFunc(func(ctx context.Context, keep map[string]bool) error {
		reaped, err := hostMounts.Reap(keep)
		if len(reaped) > 0 {
			log.Warn("unmounted host paths staged for unknown tasks", "tasks", reaped)
		}
		return err
	}))
	var second []taskrunner.PrestartHook

	disks, err := isolation.NewDisks(cfg.Isolation.DiskDir)
	if err != nil {
		return nil, fmt.Errorf("disk quota: %w", err)
	}
	log.Info("disk quota backend", "backend", disks.Backend(), "dir", cfg.Isolation.DiskDir)
	enableUserNS(cfg, disks, log)
	if err := wireDiskPool(ctx, cfg.Isolation, disks, log, w, m); err != nil {
		return nil, fmt.Errorf("disk pool: %w", err)
	}
	w.restorers = append(w.restorers, userNSRestorer{disks})
	second = append(second, &taskrunner.DiskHook{Disks: disks, Images: rt, LogDir: cfg.LogDir, KeepLogBytes: int64(cfg.Logs.MaxSizeMiB) << 20})
	w.reconcilers = append(w.reconcilers, reconcileFunc(func(ctx context.Context, keep map[string]bool) error {
		reaped, err := disks.Reap(ctx, keep)
		if len(reaped) > 0 {
			log.Warn("reaped disks of unknown tasks", "tasks", reaped)
		}
		return err
	}))

	if _, err := wireNetwork(ctx, cfg, log, w, &first, &second, m); err != nil {
		return nil, fmt.Errorf("network: %w", err)
	}
	if err := wireSecrets(ctx, cfg, log, w, &first, m); err != nil {
		return nil, fmt.Errorf("secrets: %w", err)
	}

	gpus, err := discoverGPUs(ctx, cfg.GPU, log)
	if err != nil {
		return nil, fmt.Errorf("gpu: %w", err)
	}
	if err := checkAllowedDevices(cfg.Isolation.AllowedDevices, gpus); err != nil {
		return nil, err
	}
	w.gpus = gpus

	iso := isolationOptions(cfg.Isolation)
	iso.XFSQuota = disks.Backend() == isolation.BackendXFSQuota
	iso.NoCPUBurst = !isolation.HasCPUBurst("/sys/fs/cgroup", kernelRelease())
	policy := hostPolicy(cfg.Isolation)
	noNetNS := cfg.Network.Provider == "none"
	w.hostCheck = func(s *task.Spec, c *task.Checker) {
		policy(s, c) // first: it may force the user namespace label
		iso.CheckHostRequests(s.Labels, c)
		iso.CheckCPUBurst(s.Resources, c)
		gpuHostCheck(s, c)
		if h := s.HealthCheck; h != nil && noNetNS && (h.Kind == task.HealthHTTP || h.Kind == task.HealthTCP) {
			c.Failf("health_check.kind", "%s checks dial from the task's own network namespace, and this host's network provider is none (use an exec check)", h.Kind)
		}
	}
	// Health checks run beside the running task, in its netns or container.
	w.poststart = append(w.poststart, &taskrunner.HealthHook{Checker: healthcheck.New(rt, log.With("component", "healthcheck"))})
	container := &taskrunner.ContainerHook{Runtime: rt, SpecOpts: func(s *task.Spec) []oci.SpecOpts { return isolation.SpecOpts(s, iso) }}
	w.stages = [][]taskrunner.PrestartHook{first}
	if len(second) > 0 {
		w.stages = append(w.stages, second)
	}
	w.stages = append(w.stages, []taskrunner.PrestartHook{container})
	return w, nil
}

// hookNeeds says which hooks of stage 1 each hook of stage 2 reads from;
// it starts when they are done, not after all of stage 1.
var hookNeeds = map[string][]string{
	"disk":      {"image"},   // the image's layers under the task's root
	"metadata":  {"network"}, // its listener in the task's netns
	"bandwidth": {"network"}, // the qdiscs of the task's veth
}

// reconcileFunc adapts a function to Reconciler.
type reconcileFunc func(ctx context.Context, keep map[string]bool) error

func (f reconcileFunc) Reconcile(ctx context.Context, keep map[string]bool) error {
	return f(ctx, keep)
}
