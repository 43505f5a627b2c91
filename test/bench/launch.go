package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	"github.com/titus-agent/titus-agent/pkg/agent"
	"github.com/titus-agent/titus-agent/pkg/agent/taskrunner"
	"github.com/titus-agent/titus-agent/pkg/isolation"
	"github.com/titus-agent/titus-agent/pkg/runtime"
	"github.com/titus-agent/titus-agent/pkg/task"
	"github.com/titus-agent/titus-agent/test/testenv"
)

// bareLaunch is the baseline: containerd client create + start of the same
// image, no agent, measured until the task's process exists.
func bareLaunch(ctx context.Context, c *containerd.Client, img containerd.Image, id string) (time.Duration, func(), error) {
	start := time.Now()
	ctr, err := c.NewContainer(ctx, id, containerd.WithNewSnapshot(id, img), containerd.WithNewSpec(oci.WithImageConfig(img), oci.WithProcessArgs("sleep", "1000")))
	if err != nil {
		return 0, nil, err
	}
	t, err := ctr.NewTask(ctx, cio.NullIO)
	if err != nil {
		return 0, nil, err
	}
	if err := t.Start(ctx); err != nil {
		return 0, nil, err
	}
	took := time.Since(start)
	return took, func() {
		t.Kill(ctx, 9)
		if ch, err := t.Wait(ctx); err == nil {
			<-ch
		}
		t.Delete(ctx)
		ctr.Delete(ctx, containerd.WithSnapshotCleanup)
	}, nil
}

// specLaunch is the second baseline: the agent's runtime layer alone, with
// the OCI spec the agent gives a task (isolation defaults: seccomp, init,
// cgroup limits) and the task log driver, no gRPC, store or hooks.
func specLaunch(ctx context.Context, rt *runtime.Runtime, image runtime.Image, id string) (time.Duration, func(), error) {
	spec := &task.Spec{ID: id, OwnerEmail: "bench@example.com", Image: image.Name, Command: []string{"sleep", "1000"},
		Resources: task.Resources{CPUMillicores: 100, MemoryMiB: 32}}
	spec.Normalize()
	cs := taskrunner.ContainerSpec(spec, &taskrunner.Resources{Image: &image}, isolation.SpecOpts(spec, isolation.Options{}))
	start := time.Now()
	if err := rt.Create(ctx, cs); err != nil {
		return 0, nil, err
	}
	if _, err := rt.Start(ctx, id); err != nil {
		return 0, nil, err
	}
	took := time.Since(start)
	return took, func() {
		if ch, err := rt.Wait(ctx, id); err == nil {
			_ = rt.Kill(ctx, id, syscall.SIGKILL)
			<-ch
		}
		_ = rt.Delete(ctx, id)
	}, nil
}

// agentLaunch measures LaunchTask → the Running event.
func agentLaunch(ctx context.Context, a *testenv.Agent, events *eventWaiter, image, id string) (time.Duration, error) {
	return agentLaunchSpec(ctx, a, events, &agentv1.TaskSpec{
		Id: id, OwnerEmail: "bench@example.com", Image: image, Command: []string{"sleep", "1000"},
		Resources: &agentv1.Resources{CpuMillicores: 100, MemoryMib: 32}, KillGracePeriodSeconds: 1,
	})
}

func agentLaunchSpec(ctx context.Context, a *testenv.Agent, events *eventWaiter, spec *agentv1.TaskSpec) (time.Duration, error) {
	id := spec.GetId()
	wait := events.expect(id)
	start := time.Now()
	_, err := a.Client.LaunchTask(ctx, &agentv1.LaunchTaskRequest{Spec: spec})
	if err != nil {
		return 0, err
	}
	select {
	case st := <-wait:
		if st != agentv1.TaskState_TASK_STATE_RUNNING {
			why := ""
			if t, err := a.Client.GetTask(ctx, &agentv1.GetTaskRequest{Id: id}); err == nil {
				why = ": " + t.GetReason() + " " + t.GetMessage()
			}
			return 0, fmt.Errorf("task %s ended %s instead of running%s", id, st, why)
		}
	case <-time.After(60 * time.Second):
		return 0, fmt.Errorf("task %s never ran", id)
	}
	return time.Since(start), nil
}

// eventWaiter turns the agent's event stream into per-task notifications.
type eventWaiter struct {
	mu      sync.Mutex
	waiters map[string]chan agentv1.TaskState
}

func watch(ctx context.Context, a *testenv.Agent) (*eventWaiter, error) {
	s, err := a.Client.WatchEvents(ctx, &agentv1.WatchEventsRequest{})
	if err != nil {
		return nil, err
	}
	if _, err := s.Header(); err != nil { // the agent has subscribed us
		return nil, err
	}
	w := &eventWaiter{waiters: map[string]chan agentv1.TaskState{}}
	go func() {
		for {
			ev, err := s.Recv()
			if err != nil {
				return
			}
			st := ev.GetTransition().GetState()
			if st < agentv1.TaskState_TASK_STATE_RUNNING {
				continue
			}
			w.mu.Lock()
			if ch, ok := w.waiters[ev.GetTaskId()]; ok {
				delete(w.waiters, ev.GetTaskId())
				ch <- st
			}
			w.mu.Unlock()
		}
	}()
	return w, nil
}

func (w *eventWaiter) expect(id string) <-chan agentv1.TaskState {
	ch := make(chan agentv1.TaskState, 1)
	w.mu.Lock()
	w.waiters[id] = ch
	w.mu.Unlock()
	return ch
}

func killAll(ctx context.Context, a *testenv.Agent, ids []string) {
	for _, id := range ids {
		a.Client.KillTask(ctx, &agentv1.KillTaskRequest{Id: id, GracePeriodSeconds: 1})
	}
	waitGone(ctx, a, ids)
}

// waitGone waits (at most two minutes) until none of ids is still live in
// the agent and their disks are torn down, so that one round's teardown
// does not load the next measurement. Other tasks (a "warm" one kept
// running on purpose) are not waited for.
func waitGone(ctx context.Context, a *testenv.Agent, ids []string) {
	disks := filepath.Join(a.Dir, "disks")
	gone := func() bool {
		l, err := a.Client.ListTasks(ctx, &agentv1.ListTasksRequest{})
		if err != nil {
			return true // the agent is gone
		}
		for _, tk := range l.GetTasks() {
			if slices.Contains(ids, tk.GetSpec().GetId()) {
				return false
			}
		}
		for _, id := range ids {
			for _, p := range []string{filepath.Join(disks, "rootfs", id), filepath.Join(disks, "mnt", id), filepath.Join(disks, "images", id+".img")} {
				if _, err := os.Lstat(p); err == nil {
					return false
				}
			}
		}
		return true
	}
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) && !gone() {
		time.Sleep(50 * time.Millisecond)
	}
}

// countRunning asks the agent how many of its tasks are Running.
func countRunning(ctx context.Context, a *testenv.Agent) int {
	l, err := a.Client.ListTasks(ctx, &agentv1.ListTasksRequest{})
	if err != nil {
		return -1
	}
	n := 0
	for _, tk := range l.GetTasks() {
		if tk.GetState() == agentv1.TaskState_TASK_STATE_RUNNING {
			n++
		}
	}
	return n
}

func ratioF(a, b float64) string {
	if b <= 0 || a < 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.2fx", a/b)
}

// waitTornDown waits until the agent's containerd namespace is empty, so
// that the teardown of one round does not load the next measurement.
func waitTornDown(ctx context.Context, c *containerd.Client, ns string) {
	ctx = namespaces.WithNamespace(ctx, ns)
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		if cs, err := c.Containers(ctx); err == nil && len(cs) == 0 {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func rssMiB(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, _ := strconv.Atoi(strings.Fields(rest)[0])
			return float64(kb) / 1024
		}
	}
	return -1
}

// rssKinds is the RSS of pid by kind (anonymous: heap, stacks, the Go
// runtime's; file: the binary's pages and mapped files; shmem).
func rssKinds(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return err.Error()
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		for _, k := range []string{"RssAnon:", "RssFile:", "RssShmem:"} {
			if rest, ok := strings.CutPrefix(l, k); ok {
				kb, _ := strconv.Atoi(strings.Fields(rest)[0])
				out = append(out, fmt.Sprintf("%s %.1f MiB", strings.TrimSuffix(strings.TrimPrefix(k, "Rss"), ":"), float64(kb)/1024))
			}
		}
	}
	return strings.Join(out, ", ")
}

func benchLaunch(tb *testenv.Standalone, n, concurrent int) {
	ctx := context.Background()
	ctd := testenv.StartContainerd(tb)
	reg := testenv.StartRegistry(tb)
	image := testenv.PushBusybox(tb, reg, "busybox", "latest")

	c, err := containerd.New(ctd.Address)
	if err != nil {
		tb.Fatalf("containerd: %v", err)
	}
	defer c.Close()
	bctx := namespaces.WithNamespace(ctx, "bench-bare")
	rt, err := runtime.New(ctx, runtime.Config{Address: ctd.Address, Namespace: "bench-bare", PlainHTTPRegistries: []string{reg.Host},
		LogDir: tb.TempDir(), LoggerBinary: testenv.LoggerBinary(tb)})
	if err != nil {
		tb.Fatalf("runtime: %v", err)
	}
	defer rt.Close()
	pulled, err := rt.Pull(ctx, image)
	if err != nil {
		tb.Fatalf("pull: %v", err)
	}
	img, err := c.GetImage(bctx, image)
	if err != nil {
		tb.Fatalf("image: %v", err)
	}
	var prof *profiler
	if profileDir != "" {
		prof = &profiler{name: "launch", addr: freeLoopbackAddr()}
	}
	a := testenv.StartAgent(tb, testenv.AgentOptions{Containerd: ctd.Address, PlainHTTP: []string{reg.Host},
		Config: "logLevel: " + agentLogLevel + "\n" + debugConfig(prof.address())})
	if agentLogLevel == "debug" {
		defer func() {
			fmt.Fprintln(os.Stderr, "agent log:", a.Proc.LogPath)
			copyFile(a.Proc.LogPath, "/tmp/titus-bench-agent.log")
		}()
	}
	events, err := watch(ctx, a)
	if err != nil {
		tb.Fatalf("watch: %v", err)
	}
	// Warm both paths (image unpacked in each namespace, shim binaries cached).
	if _, cleanup, err := bareLaunch(bctx, c, img, "warm"); err == nil {
		cleanup()
	}
	if _, cleanup, err := specLaunch(ctx, rt, pulled, "warm-spec"); err == nil {
		cleanup()
	}
	if _, err := agentLaunch(ctx, a, events, image, "warm"); err != nil {
		tb.Fatalf("warm agent: %v", err)
	}
	killAll(ctx, a, []string{"warm"})
	waitTornDown(ctx, c, agentNamespace)

	idleRSS := rssMiB(a.Pid())
	var bare, same, agent sample
	var agentIDs []string
	// Interleave so all see the same machine noise.
	for i := 0; i < n; i++ {
		d, cleanup, err := bareLaunch(bctx, c, img, fmt.Sprintf("bare-%d", i))
		if err != nil {
			tb.Fatalf("bare launch: %v", err)
		}
		bare = append(bare, d)
		cleanup()
		d, cleanup, err = specLaunch(ctx, rt, pulled, fmt.Sprintf("spec-%d", i))
		if err != nil {
			tb.Fatalf("same-spec launch: %v", err)
		}
		same = append(same, d)
		cleanup()
		id := fmt.Sprintf("seq-%d", i)
		d, err = agentLaunch(ctx, a, events, image, id)
		if err != nil {
			tb.Fatalf("agent launch: %v\n%s", err, a.Log())
		}
		agent = append(agent, d)
		agentIDs = append(agentIDs, id)
	}
	rss := rssMiB(a.Pid())
	running := countRunning(ctx, a)
	if prof != nil {
		// What the loaded RSS is made of: the heap profile, and the
		// kernel's view of the mappings.
		fetchTo(filepath.Join(profileDir, "launch-heap.pprof"), "http://"+prof.addr+"/debug/pprof/heap", 30*time.Second)
		copyFile(fmt.Sprintf("/proc/%d/smaps", a.Pid()), filepath.Join(profileDir, "launch-smaps"))
		fmt.Printf("loaded agent's heap and smaps in %s\n", profileDir)
	}
	fmt.Printf("\n== launch latency, %d sequential launches each (same image, same run)\n", n)
	fmt.Printf("%-34s %10s %10s\n", "", "p50", "p99")
	fmt.Printf("%-34s %10s %10s\n", "bare containerd create+start", ms(bare.pct(0.5)), ms(bare.pct(0.99)))
	fmt.Printf("%-34s %10s %10s\n", "same, agent's OCI spec + logger", ms(same.pct(0.5)), ms(same.pct(0.99)))
	fmt.Printf("%-34s %10s %10s\n", "agent LaunchTask -> Running", ms(agent.pct(0.5)), ms(agent.pct(0.99)))
	fmt.Printf("%-34s %10s %10s   (target p50 <= 1.30x)\n", "ratio agent / bare", ratio(agent.pct(0.5), bare.pct(0.5)), ratio(agent.pct(0.99), bare.pct(0.99)))
	fmt.Printf("%-34s %10s %10s   (the agent's own overhead)\n", "ratio agent / same spec", ratio(agent.pct(0.5), same.pct(0.5)), ratio(agent.pct(0.99), same.pct(0.99)))
	fmt.Printf("\n== agent daemon memory (VmRSS of the daemon process; shims not included)\n")
	fmt.Printf("%-34s %10.1f MiB\n", "idle (after warm-up)", idleRSS)
	fmt.Printf("%-34s %10.1f MiB   (target < 60 MiB)\n", fmt.Sprintf("with %d running tasks", running), rss)
	fmt.Printf("%-34s %10s\n", "ratio loaded / idle", ratioF(rss, idleRSS))
	fmt.Printf("%-34s %s\n", "loaded RSS by kind", rssKinds(a.Pid()))
	killAll(ctx, a, agentIDs)
	waitTornDown(ctx, c, agentNamespace)

	// Concurrent launches.
	var mu sync.Mutex
	var conc, bareConc sample
	var wg sync.WaitGroup
	startAll := time.Now()
	for i := 0; i < concurrent; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d, err := agentLaunch(ctx, a, events, image, fmt.Sprintf("conc-%d", i))
			if err != nil {
				tb.Fatalf("concurrent launch: %v", err)
			}
			mu.Lock()
			conc = append(conc, d)
			mu.Unlock()
		}()
	}
	wg.Wait()
	agentWall := time.Since(startAll)
	var cleanups []func()
	startAll = time.Now()
	for i := 0; i < concurrent; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d, cleanup, err := bareLaunch(bctx, c, img, fmt.Sprintf("bconc-%d", i))
			if err != nil {
				tb.Fatalf("bare concurrent: %v", err)
			}
			mu.Lock()
			bareConc = append(bareConc, d)
			cleanups = append(cleanups, cleanup)
			mu.Unlock()
		}()
	}
	wg.Wait()
	bareWall := time.Since(startAll)
	for _, f := range cleanups {
		f()
	}
	var ids []string
	for i := 0; i < concurrent; i++ {
		ids = append(ids, fmt.Sprintf("conc-%d", i))
	}
	killAll(ctx, a, ids)
	fmt.Printf("\n== %d concurrent launches\n", concurrent)
	fmt.Printf("%-34s %10s %10s %10s\n", "", "p50", "p99", "all done")
	fmt.Printf("%-34s %10s %10s %10s\n", "bare containerd create+start", ms(bareConc.pct(0.5)), ms(bareConc.pct(0.99)), ms(bareWall))
	fmt.Printf("%-34s %10s %10s %10s\n", "agent LaunchTask -> Running", ms(conc.pct(0.5)), ms(conc.pct(0.99)), ms(agentWall))
	fmt.Printf("%-34s %10s %10s %10s\n", "ratio agent / bare", ratio(conc.pct(0.5), bareConc.pct(0.5)), ratio(conc.pct(0.99), bareConc.pct(0.99)), ratio(agentWall, bareWall))
}

var agentLogLevel = "warn"

// agentNamespace is the agent's default containerd namespace.
var agentNamespace = agent.DefaultConfig().Containerd.Namespace

func copyFile(src, dst string) {
	if b, err := os.ReadFile(src); err == nil {
		_ = os.WriteFile(dst, b, 0o644)
	}
}
