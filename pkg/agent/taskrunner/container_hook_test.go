package taskrunner

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/titus-agent/titus-agent/pkg/isolation"
	"github.com/titus-agent/titus-agent/pkg/runtime"
	"github.com/titus-agent/titus-agent/pkg/task"
)

type fakeContainers struct {
	rec      *recorder
	created  runtime.ContainerSpec
	startErr error
}

func (f *fakeContainers) Create(ctx context.Context, cs runtime.ContainerSpec) error {
	f.rec.add("create " + cs.ID)
	f.created = cs
	return nil
}

func (f *fakeContainers) StartAfter(ctx context.Context, id string, ready func() error) (uint32, error) {
	if ready != nil {
		if err := ready(); err != nil {
			f.rec.add("not started " + id)
			return 0, err
		}
	}
	f.rec.add("start " + id)
	return 42, f.startErr
}

func (f *fakeContainers) Kill(ctx context.Context, id string, sig syscall.Signal) error {
	f.rec.add("kill " + id + " " + sig.String())
	return nil
}

func (f *fakeContainers) Delete(ctx context.Context, id string) error {
	f.rec.add("delete " + id)
	return nil
}

func TestContainerSpecFromTaskAndResources(t *testing.T) {
	spec := &task.Spec{ID: "t1", Image: "img", Entrypoint: []string{"sh"}, Command: []string{"-c", "true"},
		Env: map[string]string{"B": "2", "A": "1"}, Labels: map[string]string{"app": "x"},
		Resources: task.Resources{CPUMillicores: 500, MemoryMiB: 64, Pids: 100}}
	img := runtime.Image{Name: "docker.io/library/img:latest", Digest: testDigest}
	res := &Resources{
		Image:   &img,
		Network: &task.NetworkAttachment{NetNSPath: "/ns/t1", ResolvConfPath: "/f/resolv.conf", HostsPath: "/f/hosts"},
		Disk:    &DiskInfo{MountPath: "/disks/rootfs/t1"},
	}
	got := ContainerSpec(spec, res, []oci.SpecOpts{isolation.WithResources(spec.Resources, "")})
	want := runtime.ContainerSpec{
		ID: "t1", Image: img, Args: []string{"sh", "-c", "true"},
		Env:    []string{"A=1", "B=2", "NVIDIA_VISIBLE_DEVICES=void", "TITUS_TASK_ID=t1"},
		Labels: map[string]string{"app": "x"}, Hostname: "t1",
		NetNSPath: "/ns/t1", RootfsPath: "/disks/rootfs/t1",
		Mounts: []specs.Mount{
			{Destination: "/etc/hosts", Source: "/f/hosts", Type: "bind", Options: []string{"rbind", "ro"}},
			{Destination: "/etc/resolv.conf", Source: "/f/resolv.conf", Type: "bind", Options: []string{"rbind", "ro"}},
		},
	}
	if diff := cmp.Diff(want, got, cmpopts.IgnoreFields(runtime.ContainerSpec{}, "SpecOpts")); diff != "" {
		t.Fatalf("container spec (-want +got):\n%s", diff)
	}
	// The limits reach the container through isolation's options.
	s := &oci.Spec{}
	if err := oci.ApplyOpts(context.Background(), nil, &containers.Container{ID: "t1"}, s, got.SpecOpts...); err != nil {
		t.Fatal(err)
	}
	wantRes := &specs.LinuxResources{
		CPU:    &specs.LinuxCPU{Shares: ptr(uint64(512)), Quota: ptr(int64(50000)), Period: ptr(uint64(100000))},
		Memory: &specs.LinuxMemory{Limit: ptr(int64(64 << 20)), Swap: ptr(int64(64 << 20))},
		Pids:   &specs.LinuxPids{Limit: ptr(int64(100))},
	}
	if diff := cmp.Diff(wantRes, s.Linux.Resources); diff != "" {
		t.Errorf("limits (-want +got):\n%s", diff)
	}
}

func TestContainerHook(t *testing.T) {
	rec := &recorder{}
	rt := &fakeContainers{rec: rec}
	h := &ContainerHook{Runtime: rt}
	spec := &task.Spec{ID: "t1", Image: "img"}
	resp := &PrestartResponse{}
	if err := h.Prestart(context.Background(), &PrestartRequest{Spec: spec, Resources: &Resources{}}, resp); err != nil {
		t.Fatal(err)
	}
	if !resp.Container || resp.Pid != 42 {
		t.Fatalf("resp = %+v", resp)
	}
	h.Stop(context.Background(), &StopRequest{Spec: spec, Resources: &Resources{}})
	h.Stop(context.Background(), &StopRequest{Spec: spec, Resources: &Resources{}})
	want := []string{"create t1", "start t1", "kill t1 killed", "delete t1", "kill t1 killed", "delete t1"}
	if diff := cmp.Diff(want, rec.get()); diff != "" {
		t.Fatalf("ops (-want +got):\n%s", diff)
	}
	// A failed start still records the container so teardown deletes it.
	rt.startErr = errors.New("runc: boom")
	resp = &PrestartResponse{}
	err := h.Prestart(context.Background(), &PrestartRequest{Spec: spec, Resources: &Resources{}}, resp)
	var he *HookError
	if !errors.As(err, &he) || he.Reason != task.ReasonStartFailed || !resp.Container {
		t.Fatalf("err = %v resp = %+v", err, resp)
	}
}

func TestContainerSpecUserNSFromDisk(t *testing.T) {
	spec := &task.Spec{ID: "t1", Image: "img"}
	cs := ContainerSpec(spec, &Resources{Disk: &DiskInfo{MountPath: "/d/rootfs/t1", UserNS: UserNSFrom(testUserNS)}}, nil)
	s := &oci.Spec{Linux: &specs.Linux{}}
	if err := oci.ApplyOpts(context.Background(), nil, &containers.Container{ID: "t1"}, s, cs.SpecOpts...); err != nil {
		t.Fatal(err)
	}
	want := &specs.Linux{
		Namespaces:  []specs.LinuxNamespace{{Type: specs.UserNamespace}},
		UIDMappings: testUserNS.UIDMap,
		GIDMappings: testUserNS.GIDMap,
	}
	if diff := cmp.Diff(want, s.Linux); diff != "" || cs.RootfsPath != "/d/rootfs/t1" {
		t.Errorf("rootfs %q, linux (-want +got):\n%s", cs.RootfsPath, diff)
	}
	if plain := ContainerSpec(spec, &Resources{Disk: &DiskInfo{MountPath: "/d/rootfs/t1"}}, nil); len(plain.SpecOpts) != 0 {
		t.Errorf("a task without a user namespace got %d extra options", len(plain.SpecOpts))
	}
}

func ptr[T any](v T) *T { return &v }

// A task's recorded GPUs reach its container: the agent's
// NVIDIA_VISIBLE_DEVICES (never the task's own) and the device nodes and
// cgroup rules of exactly those GPUs.
func TestContainerSpecGPUs(t *testing.T) {
	spec := &task.Spec{ID: "t1", Env: map[string]string{"NVIDIA_VISIBLE_DEVICES": "all"}}
	g := &GPUs{
		Devices: []GPUDevice{{Index: 1, Node: GPUNode{Name: "nvidia1", HostPath: "/d/nvidia1", Major: 195, Minor: 1}}},
		Shared:  []GPUNode{{Name: "nvidiactl", HostPath: "/d/nvidiactl", Major: 195, Minor: 255}},
	}
	cs := ContainerSpec(spec, &Resources{GPUs: g}, nil)
	if d := cmp.Diff([]string{"NVIDIA_GDRCOPY=", "NVIDIA_GDS=", "NVIDIA_IMEX_CHANNELS=", "NVIDIA_MIG_CONFIG_DEVICES=",
		"NVIDIA_MIG_MONITOR_DEVICES=", "NVIDIA_MOFED=", "NVIDIA_NVSWITCH=", "NVIDIA_VISIBLE_DEVICES=1", "TITUS_TASK_ID=t1"}, cs.Env); d != "" {
		t.Errorf("env (-want +got):\n%s", d)
	}
	s := &oci.Spec{Process: &specs.Process{}}
	for _, o := range cs.SpecOpts {
		if err := o(context.Background(), nil, nil, s); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	for _, d := range s.Linux.Devices {
		got = append(got, fmt.Sprintf("%s %d:%d", d.Path, d.Major, d.Minor))
	}
	for _, r := range s.Linux.Resources.Devices {
		got = append(got, fmt.Sprintf("allow %s %d:%d %s", r.Type, *r.Major, *r.Minor, r.Access))
	}
	want := []string{"/dev/nvidia1 195:1", "/dev/nvidiactl 195:255", "allow c 195:1 rw", "allow c 195:255 rw"}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("devices (-want +got):\n%s", d)
	}
	if plain := ContainerSpec(&task.Spec{ID: "t2"}, &Resources{}, nil); len(plain.SpecOpts) != 0 {
		t.Errorf("a task without GPUs got spec options: %d", len(plain.SpecOpts))
	}
}

// TestContainerSpecNoGPUsFromTheImage: an image whose config says
// NVIDIA_VISIBLE_DEVICES=all (the CUDA base images do) run by a task
// without resources.gpus, on a host whose containerd runs the NVIDIA
// container runtime, would be given every GPU, those other tasks hold
// included. The agent's own value ("void": no GPU, no driver) replaces
// the image's in the container's environment.
func TestContainerSpecNoGPUsFromTheImage(t *testing.T) {
	cs := ContainerSpec(&task.Spec{ID: "t1"}, &Resources{}, nil)
	s := &oci.Spec{Process: &specs.Process{Env: []string{"PATH=/bin", "NVIDIA_VISIBLE_DEVICES=all"}}} // the image's
	if err := oci.WithEnv(cs.Env)(context.Background(), nil, nil, s); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]string{"PATH=/bin", "NVIDIA_VISIBLE_DEVICES=void", "TITUS_TASK_ID=t1"}, s.Process.Env); d != "" {
		t.Errorf("container env (-want +got):\n%s", d)
	}
}

// TestContainerSpecGPUTaskNoExtrasFromTheImage: a GPU task's image (or a
// CUDA base image's config) asking the NVIDIA container runtime for the
// host's shared nodes (NVSwitch, MIG control, IMEX channels, GPUDirect)
// gets the agent's empty values instead: a task's GPUs are what
// resources.gpus gives, nothing the whole host shares.
func TestContainerSpecGPUTaskNoExtrasFromTheImage(t *testing.T) {
	g := &GPUs{Devices: []GPUDevice{{Index: 0, Node: GPUNode{Name: "nvidia0", HostPath: "/d/nvidia0", Major: 195, Minor: 0}}}}
	cs := ContainerSpec(&task.Spec{ID: "t1"}, &Resources{GPUs: g}, nil)
	image := []string{"NVIDIA_NVSWITCH=enabled", "NVIDIA_MIG_CONFIG_DEVICES=all", "NVIDIA_MIG_MONITOR_DEVICES=all",
		"NVIDIA_IMEX_CHANNELS=all", "NVIDIA_GDS=enabled", "NVIDIA_MOFED=enabled", "NVIDIA_GDRCOPY=enabled"}
	s := &oci.Spec{Process: &specs.Process{Env: slices.Clone(image)}}
	if err := oci.WithEnv(cs.Env)(context.Background(), nil, nil, s); err != nil {
		t.Fatal(err)
	}
	for _, kv := range s.Process.Env {
		if k, v, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "NVIDIA_") && k != "NVIDIA_VISIBLE_DEVICES" && v != "" {
			t.Errorf("container env %s: the image's value survived", kv)
		}
	}
}
