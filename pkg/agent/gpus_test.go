package agent

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/titus-agent/titus-agent/pkg/agent/taskrunner"
	"github.com/titus-agent/titus-agent/pkg/gpu"
	"github.com/titus-agent/titus-agent/pkg/runtime"
	"github.com/titus-agent/titus-agent/pkg/schedlink"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// blockHook holds every launch in Preparing until the task is killed.
type blockHook struct{}

func (blockHook) Name() string { return "block" }
func (blockHook) Prestart(ctx context.Context, _ *taskrunner.PrestartRequest, _ *taskrunner.PrestartResponse) error {
	<-ctx.Done()
	return ctx.Err()
}

func twoGPUs(t *testing.T) *gpuPool {
	return &gpuPool{
		inv: gpu.Inventory{
			Devices: []gpu.Device{
				{Index: 0, Node: gpu.Node{Name: "nvidia0", HostPath: "/d/nvidia0", Major: 195, Minor: 0}},
				{Index: 1, Node: gpu.Node{Name: "nvidia1", HostPath: "/d/nvidia1", Major: 195, Minor: 1}},
			},
			Shared: []gpu.Node{{Name: "nvidiactl", HostPath: "/d/nvidiactl", Major: 195, Minor: 255}},
		},
		cdiDirs: []string{filepath.Join(t.TempDir(), "no-cdi")},
	}
}

func gpuSpec(id string, n int32) *task.Spec {
	return &task.Spec{ID: id, OwnerEmail: "a@example.com", Image: "img", Resources: task.Resources{GPUs: n}}
}

func recordedGPUs(t *testing.T, store *Store) map[string][]int {
	t.Helper()
	recs, err := store.Load()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]int{}
	for _, r := range recs {
		out[r.Spec.ID] = r.Resources.GPUs.Indices()
	}
	return out
}

// GPUs are assigned in the Accepted record, before any hook runs; never
// twice; a launch asking for more than are free is refused, unrecorded;
// devices come back once a task's teardown completed; and after an agent
// restart the records say which devices are taken.
func TestLaunchAssignsGPUsExclusively(t *testing.T) {
	dir := t.TempDir()
	store, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithCancel(context.Background())
	cfg := ManagerConfig{Store: store, Runtime: &fakeRuntime{}, Logger: log, GPUs: twoGPUs(t),
		Stages: [][]taskrunner.PrestartHook{{blockHook{}}}}
	m := NewManager(ctx, cfg)
	for _, id := range []string{"a", "b"} {
		if _, err := m.Launch(ctx, gpuSpec(id, 1)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := m.Launch(ctx, gpuSpec("cpu-only", 0)); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(map[string][]int{"a": {0}, "b": {1}, "cpu-only": nil}, recordedGPUs(t, store)); d != "" {
		t.Fatalf("recorded GPUs (-want +got):\n%s", d)
	}
	_, err = m.Launch(ctx, gpuSpec("c", 1))
	if !errors.Is(err, ErrNoFreeGPUs) || !errdefs.IsResourceExhausted(err) {
		t.Fatalf("a third 1-GPU task on a 2-GPU host: %v, want ErrNoFreeGPUs (resource exhausted)", err)
	}
	if want := "the task asks for 1, 0 of this host's 2 GPUs are free"; !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not say %q", err, want)
	}
	if _, ok := recordedGPUs(t, store)["c"]; ok {
		t.Error("a refused launch was recorded")
	}

	// A killed task's devices are free once its teardown completed.
	r, _ := m.runner("a")
	m.Kill(ctx, "a", 0)
	<-r.Done()
	if _, err := m.Launch(ctx, gpuSpec("c", 1)); err != nil {
		t.Fatalf("after a's teardown: %v", err)
	}
	if got := recordedGPUs(t, store)["c"]; !cmp.Equal(got, []int{0}) {
		t.Errorf("c got %v, want a's freed [0]", got)
	}

	// A restarted agent knows b and c hold both devices.
	cancel()
	m.Wait()
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	m2 := NewManager(ctx2, cfg)
	if err := m2.Restore(ctx2); err != nil {
		t.Fatal(err)
	}
	if _, err := m2.Launch(ctx2, gpuSpec("d", 1)); !errors.Is(err, ErrNoFreeGPUs) {
		t.Fatalf("after a restart with both devices held: %v, want ErrNoFreeGPUs", err)
	}
	cancel2()
	m2.Wait()
	store.Close()
}

func TestLaunchRefusesGPUsWhereThereAreNone(t *testing.T) {
	store, err := OpenStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	m := NewManager(ctx, ManagerConfig{Store: store, Runtime: &fakeRuntime{}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	_, err = m.Launch(ctx, gpuSpec("g", 1))
	if !errors.Is(err, ErrNoFreeGPUs) || !strings.Contains(err.Error(), "this host has none") {
		t.Fatalf("launch: %v", err)
	}
}

// The running container of a quarantined task (its record unreadable) may
// hold GPUs: none are given out until an operator resolves it.
func TestQuarantinedTaskBlocksGPUs(t *testing.T) {
	dir := t.TempDir()
	putRaw(t, dir, map[string][]byte{"victim": []byte(`not json`)})
	store, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rt := &fakeRuntime{containers: []runtime.ContainerStatus{{ID: "victim", TaskID: "victim", State: runtime.StateRunning, Pid: 9}}}
	m := NewManager(ctx, ManagerConfig{Store: store, Runtime: rt, GPUs: twoGPUs(t), Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Stages: [][]taskrunner.PrestartHook{{blockHook{}}}})
	if err := m.Restore(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Launch(ctx, gpuSpec("g", 1)); !errors.Is(err, ErrNoFreeGPUs) || !strings.Contains(err.Error(), "quarantined") {
		t.Fatalf("launch: %v", err)
	}
	if _, err := m.Launch(ctx, gpuSpec("cpu", 0)); err != nil {
		t.Fatalf("a task without GPUs: %v", err)
	}
}

// A tenant cannot pick GPUs through the NVIDIA runtime's variables.
func TestGPUHostCheckRefusesNvidiaEnv(t *testing.T) {
	s := gpuSpec("x", 0)
	s.Env = map[string]string{"NVIDIA_VISIBLE_DEVICES": "all", "NVIDIA_DRIVER_CAPABILITIES": "all", "OK": "1",
		// Attack: the host's shared fabric and MIG control nodes.
		"NVIDIA_NVSWITCH": "enabled", "NVIDIA_MIG_CONFIG_DEVICES": "all", "NVIDIA_IMEX_CHANNELS": "all"}
	c := &task.Checker{}
	gpuHostCheck(s, c)
	want := []*task.FieldError{
		{Field: "env.NVIDIA_VISIBLE_DEVICES", Rule: "is set by the agent from resources.gpus"},
		{Field: "env.NVIDIA_DRIVER_CAPABILITIES", Rule: "is set by the agent from resources.gpus"},
		{Field: "env.NVIDIA_IMEX_CHANNELS", Rule: "is set by the agent from resources.gpus"},
		{Field: "env.NVIDIA_MIG_CONFIG_DEVICES", Rule: "is set by the agent from resources.gpus"},
		{Field: "env.NVIDIA_NVSWITCH", Rule: "is set by the agent from resources.gpus"},
	}
	if d := cmp.Diff(want, c.Fields()); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
}

func TestAllowedDevicesMayNotNameAGPU(t *testing.T) {
	p := twoGPUs(t)
	for _, tc := range []struct {
		allowed []string
		wantErr bool
	}{
		{[]string{"/dev/fuse"}, false},
		{[]string{"/dev/fuse", "/dev/nvidia1"}, true},
		{[]string{"/d/nvidiactl"}, true},
		{[]string{"/d/../d/nvidia0"}, true},
	} {
		if err := checkAllowedDevices(tc.allowed, p); (err != nil) != tc.wantErr {
			t.Errorf("%v: %v, want error %v", tc.allowed, err, tc.wantErr)
		}
	}
	if err := checkAllowedDevices([]string{"/dev/nvidia0"}, nil); err != nil {
		t.Errorf("a host without GPUs: %v", err)
	}
}

func TestGPUsAdvertised(t *testing.T) {
	p := twoGPUs(t)
	p.inv.Devices[0].Model, p.inv.Devices[0].MemoryMiB = "Tesla T4", 15360
	p.inv.Devices[1].Model, p.inv.Devices[1].MemoryMiB = "Tesla T4", 15360
	var cfg schedlink.Config
	p.advertise(&cfg)
	want := schedlink.Config{Capacity: schedlink.Capacity{GPUs: 2}, Attributes: schedlink.Attributes{GPUs: []schedlink.GPU{
		{Index: 0, Model: "Tesla T4", MemoryMiB: 15360}, {Index: 1, Model: "Tesla T4", MemoryMiB: 15360}}}}
	if d := cmp.Diff(want, cfg, cmpopts.IgnoreFields(schedlink.Config{}, "Health", "Network")); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
	var none *gpuPool
	var empty schedlink.Config
	none.advertise(&empty)
	if empty.Capacity.GPUs != 0 || empty.Attributes.GPUs != nil {
		t.Errorf("a host without GPUs advertises %+v", empty)
	}
}
