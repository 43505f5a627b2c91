package taskrunner

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/titus-agent/titus-agent/pkg/gpu"
	"github.com/titus-agent/titus-agent/pkg/isolation"
	"github.com/titus-agent/titus-agent/pkg/runtime"
	"github.com/titus-agent/titus-agent/pkg/secrets"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// containerRuntime is the part of the runtime the container hook uses.
type containerRuntime interface {
	Create(ctx context.Context, cs runtime.ContainerSpec) error
	StartAfter(ctx context.Context, id string, ready func() error) (uint32, error)
	Kill(ctx context.Context, id string, sig syscall.Signal) error
	Delete(ctx context.Context, id string) error
}

// ContainerHook creates and starts the task's container from the spec and
// what earlier hooks prepared; its stop step deletes container and snapshot.
type ContainerHook struct {
	Runtime containerRuntime
	// SpecOpts gives a task's isolation options: its limits (CPU, memory,
	// pids), hardening and init.
	SpecOpts func(*task.Spec) []oci.SpecOpts
}

func (h *ContainerHook) Name() string { return "container" }

// ContainerSpec builds the runtime request for a task; exported for tests
// and the bench.
func ContainerSpec(spec *task.Spec, res *Resources, opts []oci.SpecOpts) runtime.ContainerSpec {
	env := map[string]string{"TITUS_TASK_ID": spec.ID}
	maps.Copy(env, res.Env)
	maps.Copy(env, spec.Env)
	// Validation keeps secret names apart from env's.
	maps.Copy(env, res.SecretEnv)
	// The agent's, never the task's (validation refuses it) nor the
	// image's: a CUDA image says "all", which the NVIDIA container runtime
	// would honour with every GPU of the host, other tasks' too. "void":
	// none, and no driver either.
	env["NVIDIA_VISIBLE_DEVICES"] = "void"
	if res.GPUs != nil {
		env["NVIDIA_VISIBLE_DEVICES"] = gpu.VisibleDevices(res.GPUs.Assignment().Devices)
		for _, k := range gpu.RuntimeExtras { // "void" above covers them
			env[k] = ""
		}
	}
	envList := make([]string, 0, len(env))
	for _, k := range slices.Sorted(maps.Keys(env)) {
		envList = append(envList, k+"="+env[k])
	}
	cs := runtime.ContainerSpec{
		ID:       spec.ID,
		Args:     spec.Args(),
		Env:      envList,
		Labels:   spec.Labels,
		Hostname: hostname(spec.ID),
		SpecOpts: opts,
	}
	for _, m := range res.Mounts {
		cs.Mounts = append(cs.Mounts, m.oci())
	}
	if res.Image != nil {
		cs.Image = *res.Image
	}
	if n := res.Network; n != nil {
		cs.NetNSPath = n.NetNSPath
		for dst, src := range map[string]string{"/etc/resolv.conf": n.ResolvConfPath, "/etc/hosts": n.HostsPath, "/etc/hostname": n.HostnamePath} {
			if src != "" {
				cs.Mounts = append(cs.Mounts, specs.Mount{Destination: dst, Source: src, Type: "bind", Options: []string{"rbind", "ro"}})
			}
		}
		slices.SortFunc(cs.Mounts, func(a, b specs.Mount) int {
			if a.Destination < b.Destination {
				return -1
			}
			if a.Destination > b.Destination {
				return 1
			}
			return 0
		})
	}
	if res.GPUs != nil {
		cs.SpecOpts = append(slices.Clip(cs.SpecOpts), gpu.SpecOpts(res.GPUs.Assignment()))
	}
	if res.Disk != nil {
		cs.RootfsPath = res.Disk.MountPath
		if res.Disk.UserNS != nil {
			cs.SpecOpts = append(slices.Clip(cs.SpecOpts), isolation.WithUserNS(res.Disk.UserNS.Isolation()))
		}
	}
	if res.SecretsDir != "" {
		// Last: it reads the user the image config and user namespace set.
		cs.SpecOpts = append(slices.Clip(cs.SpecOpts), secrets.WithOwner(res.SecretsDir))
	}
	return cs
}

func hostname(id string) string {
	if len(id) > 63 {
		return id[:63]
	}
	return id
}

func (h *ContainerHook) Prestart(ctx context.Context, req *PrestartRequest, resp *PrestartResponse) error {
	var opts []oci.SpecOpts
	if h.SpecOpts != nil {
		opts = h.SpecOpts(req.Spec)
	}
	cs := ContainerSpec(req.Spec, req.Resources, opts)
	ctx = runtime.WithStepTrace(ctx, func(name string, start time.Time, took time.Duration, err error) {
		resp.Steps = append(resp.Steps, task.Step{Name: name, Start: start.UTC(), Took: took, Failed: err != nil})
	})
	if err := retryTransient(ctx, func() error { return h.Runtime.Create(ctx, cs) }); err != nil {
		reason := task.ReasonStartFailed
		if errors.Is(err, isolation.ErrNotAllowed) {
			reason = task.ReasonInvalidSpec // a host path or device this host does not give
		}
		return &HookError{Hook: h.Name(), Reason: reason, Err: fmt.Errorf("create: %w", err)}
	}
	resp.Container = true
	// The record, written meanwhile, must be on disk before the task's
	// process starts (PrestartRequest.Recorded).
	var recordErr error
	ready := func() error {
		if req.Recorded != nil {
			recordErr = req.Recorded()
		}
		return recordErr
	}
	var pid uint32
	err := retryTransient(ctx, func() error {
		var err error
		pid, err = h.Runtime.StartAfter(ctx, req.Spec.ID, ready)
		if recordErr != nil {
			return nil // not retried: reported below
		}
		return err
	})
	if recordErr != nil {
		return &HookError{Hook: h.Name(), Reason: task.ReasonPlatformError, Err: fmt.Errorf("not started: the task's record could not be written: %w", recordErr)}
	}
	if err != nil {
		return &HookError{Hook: h.Name(), Reason: task.ReasonStartFailed, Err: fmt.Errorf("start: %w", err)}
	}
	resp.Pid = pid
	return nil
}

// Stop deletes the container (its task must have exited; a stray process
// is killed first) and its snapshot. Safe to repeat.
func (h *ContainerHook) Stop(ctx context.Context, req *StopRequest) error {
	_ = h.Runtime.Kill(ctx, req.Spec.ID, syscall.SIGKILL)
	return h.Runtime.Delete(ctx, req.Spec.ID)
}
