package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	"github.com/titus-agent/titus-agent/pkg/gpu"
	"github.com/titus-agent/titus-agent/test/testenv"
)

// gpuDevRoot is the device root the GPU tests give the agent. With
// TITUS_TEST_GPU_DEV_ROOT set (make test-gpu on a host with NVIDIA GPUs:
// /dev) it is the real one and its GPUs are used; otherwise stand-in nodes
// are made with mknod (the driver's major 195, minors 0 and 1, nvidiactl
// 255) in a directory of the test's own. Without a driver, opening a
// stand-in fails with ENXIO after the cgroup device check passed, and with
// EPERM where the check refuses: the two tell "may open" from "may not".
func gpuDevRoot(t *testing.T) (root string, real bool, n int) {
	t.Helper()
	if r := os.Getenv("TITUS_TEST_GPU_DEV_ROOT"); r != "" {
		inv, err := gpu.Discover(t.Context(), r, gpu.OSDevFS{}, nil)
		if err != nil || len(inv.Devices) == 0 {
			t.Fatalf("TITUS_TEST_GPU_DEV_ROOT=%s: no GPUs found (%v)", r, err)
		}
		return r, true, len(inv.Devices)
	}
	root = t.TempDir()
	for name, minor := range map[string]uint32{"nvidia0": 0, "nvidia1": 1, "nvidiactl": 255} {
		if err := unix.Mknod(filepath.Join(root, name), unix.S_IFCHR|0o666, int(unix.Mkdev(gpu.NvidiaMajor, minor))); err != nil {
			t.Fatalf("mknod %s: %v", name, err)
		}
	}
	return root, false, 2
}

// opens says whether path opens for reading inside the task: true when
// it opened (a real GPU) or the cgroup let it through to a missing driver
// (ENXIO); false on EPERM (the cgroup device rules refused it).
func (e *agentEnv) opens(id, path string) bool {
	e.t.Helper()
	out, _ := e.ctrExec(id, "sh", "-c", "exec 3<"+path+" && echo opened")
	switch {
	case strings.Contains(out, "opened"), strings.Contains(out, "No such device or address"):
		return true
	case strings.Contains(out, "Operation not permitted"):
		return false
	}
	e.t.Fatalf("open %s in %s: unexpected %q", path, id, out)
	return false
}

// nvidiaNodes are the task's GPU nodes (/dev/nvidiaN) and, if it sees
// nvidiactl, "nvidiactl" last (a real host also has nvidia-uvm, left out).
func (e *agentEnv) nvidiaNodes(id string) []string {
	e.t.Helper()
	out, err := e.ctrExec(id, "ls", "/dev")
	if err != nil {
		e.t.Fatalf("ls /dev in %s: %v %s", id, err, out)
	}
	var ns []string
	ctl := false
	for _, f := range strings.Fields(out) {
		switch {
		case f == "nvidiactl":
			ctl = true
		case strings.HasPrefix(f, "nvidia") && strings.Trim(f[len("nvidia"):], "0123456789") == "" && len(f) > len("nvidia"):
			ns = append(ns, f)
		}
	}
	if ctl {
		ns = append(ns, "nvidiactl")
	}
	return ns
}

func (e *agentEnv) gpuTask(id string, gpus int32) *agentv1.TaskSpec {
	s := e.spec(id, "sleep", "300")
	s.Resources.Gpus = gpus
	return s
}

// TestGPUsExclusive: each GPU task sees exactly its own GPU (and
// nvidiactl) and may open it, never the other task's, not even through a
// device node it makes itself; a task without GPUs may open none; one GPU
// task more than the host has GPUs is refused, also after an agent
// restart, and gets the device a finished task gave back. A task cannot
// name a GPU in its spec.
func TestGPUsExclusive(t *testing.T) {
	begin(t)
	root, real, n := gpuDevRoot(t)
	e := newAgentEnvConfig(t, fmt.Sprintf("gpu:\n  devRoot: %s\n  cdiSpecDirs: [%s]\n", root, filepath.Join(t.TempDir(), "no-cdi")))
	t.Logf("GPUs: %d under %s (real: %v)", n, root, real)

	ids := make([]string, n)
	for i := range n {
		ids[i] = fmt.Sprintf("gpu%d", i)
		e.launch(e.gpuTask(ids[i], 1))
	}
	cpu := e.launch(e.spec("cpu", "sleep", "300")).GetSpec().GetId()
	for _, id := range append([]string{cpu}, ids...) {
		e.waitState(id, agentv1.TaskState_TASK_STATE_RUNNING, 60*time.Second)
	}
	for i, id := range ids {
		own := fmt.Sprintf("nvidia%d", i)
		got := e.nvidiaNodes(id)
		if want := []string{own, "nvidiactl"}; strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("%s sees %v, want %v", id, got, want)
		}
		if !e.opens(id, "/dev/"+own) || !e.opens(id, "/dev/nvidiactl") {
			t.Errorf("%s may not open its own GPU", id)
		}
		if out, _ := e.ctrExec(id, "sh", "-c", "echo $NVIDIA_VISIBLE_DEVICES"); strings.TrimSpace(out) != fmt.Sprint(i) {
			t.Errorf("%s: NVIDIA_VISIBLE_DEVICES=%q, want %d", id, strings.TrimSpace(out), i)
		}
		// The attack: make a node for a neighbour's GPU and open it.
		other := (i + 1) % n
		if n > 1 {
			node := fmt.Sprintf("/tmp/stolen%d", other)
			if out, err := e.ctrExec(id, "mknod", node, "c", fmt.Sprint(gpu.NvidiaMajor), fmt.Sprint(other)); err != nil {
				t.Fatalf("mknod in %s: %v %s", id, err, out)
			}
			if e.opens(id, node) {
				t.Errorf("%s opened GPU %d of another task through its own node", id, other)
			}
		}
	}
	if got := e.nvidiaNodes(cpu); len(got) != 0 {
		t.Errorf("a task without GPUs sees %v", got)
	}
	if out, err := e.ctrExec(cpu, "mknod", "/tmp/g0", "c", fmt.Sprint(gpu.NvidiaMajor), "0"); err != nil {
		t.Fatalf("mknod: %v %s", err, out)
	}
	if e.opens(cpu, "/tmp/g0") {
		t.Error("a task without GPUs opened GPU 0")
	}

	refused := func(spec *agentv1.TaskSpec, code codes.Code, want string) {
		t.Helper()
		_, err := e.client.LaunchTask(e.ctx(), &agentv1.LaunchTaskRequest{Spec: spec})
		if status.Code(err) != code || !strings.Contains(err.Error(), want) {
			t.Errorf("launch %s: %v, want %s with %q", spec.GetId(), err, code, want)
		}
	}
	full := fmt.Sprintf("the task asks for 1, 0 of this host's %d GPUs are free", n)
	refused(e.gpuTask("extra", 1), codes.ResourceExhausted, full)
	named := e.spec("named", "sleep", "300")
	named.Labels = map[string]string{"titus.isolation/devices": filepath.Join(root, "nvidia0")}
	refused(named, codes.InvalidArgument, "not allowed on this host")
	env := e.spec("env", "sleep", "300")
	env.Env = map[string]string{"NVIDIA_VISIBLE_DEVICES": "all"}
	refused(env, codes.InvalidArgument, "env.NVIDIA_VISIBLE_DEVICES")

	// A restarted agent knows from its records which GPUs are taken.
	e.kill9()
	e.start()
	refused(e.gpuTask("extra", 1), codes.ResourceExhausted, full)

	// A finished task's GPU goes to the next one, once its container is gone.
	if _, err := e.client.KillTask(e.ctx(), &agentv1.KillTaskRequest{Id: ids[0]}); err != nil {
		t.Fatal(err)
	}
	e.waitFinal(ids[0])
	e.waitNoContainer(ids[0])
	deadline := time.Now().Add(testenv.Scaled(30 * time.Second))
	for {
		_, err := e.client.LaunchTask(e.ctx(), &agentv1.LaunchTaskRequest{Spec: e.gpuTask("next", 1)})
		if err == nil {
			break
		}
		if status.Code(err) != codes.ResourceExhausted || time.Now().After(deadline) {
			t.Fatalf("launch after %s ended: %v", ids[0], err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	e.waitState("next", agentv1.TaskState_TASK_STATE_RUNNING, 60*time.Second)
	if got := e.nvidiaNodes("next"); strings.Join(got, " ") != "nvidia0 nvidiactl" {
		t.Errorf("next sees %v, want the freed nvidia0", got)
	}
	for _, id := range append([]string{cpu, "next"}, ids[1:]...) {
		if _, err := e.client.KillTask(e.ctx(), &agentv1.KillTaskRequest{Id: id}); err != nil {
			t.Fatal(err)
		}
		e.waitFinal(id)
	}
	e.assertNoLeftovers()
}

// TestGPUsThroughCDI: where a CDI spec names the GPUs (the NVIDIA
// Container Toolkit's nvidia.com/gpu=N), the task gets its GPU by CDI
// injection: the spec's nodes and edits, still only its own GPU.
func TestGPUsThroughCDI(t *testing.T) {
	begin(t)
	root, _, n := gpuDevRoot(t)
	cdiDir := t.TempDir()
	var devs strings.Builder
	for i := range n {
		fmt.Fprintf(&devs, "- name: \"%d\"\n  containerEdits:\n    deviceNodes:\n    - path: /dev/nvidia%d\n      hostPath: %s/nvidia%d\n", i, i, root, i)
	}
	spec := fmt.Sprintf("cdiVersion: \"0.5.0\"\nkind: nvidia.com/gpu\ndevices:\n%scontainerEdits:\n  env:\n  - TITUS_TEST_CDI=injected\n  deviceNodes:\n  - path: /dev/nvidiactl\n    hostPath: %s/nvidiactl\n", devs.String(), root)
	if err := os.WriteFile(filepath.Join(cdiDir, "nvidia.yaml"), []byte(spec), 0o644); err != nil {
		t.Fatal(err)
	}
	e := newAgentEnvConfig(t, fmt.Sprintf("gpu:\n  devRoot: %s\n  cdiSpecDirs: [%s]\n", root, cdiDir))
	e.launch(e.gpuTask("cdi", 1))
	e.waitState("cdi", agentv1.TaskState_TASK_STATE_RUNNING, 60*time.Second)
	if got := e.nvidiaNodes("cdi"); strings.Join(got, " ") != "nvidia0 nvidiactl" {
		t.Errorf("cdi sees %v, want nvidia0 nvidiactl", got)
	}
	out, _ := e.ctrExec("cdi", "sh", "-c", "echo $TITUS_TEST_CDI $NVIDIA_VISIBLE_DEVICES")
	if got := strings.TrimSpace(out); got != "injected 0" {
		t.Errorf("env: %q, want the CDI spec's edit and NVIDIA_VISIBLE_DEVICES=0", got)
	}
	if !e.opens("cdi", "/dev/nvidia0") {
		t.Error("cdi may not open its GPU")
	}
	if n > 1 {
		if out, err := e.ctrExec("cdi", "mknod", "/tmp/g1", "c", fmt.Sprint(gpu.NvidiaMajor), "1"); err != nil {
			t.Fatalf("mknod: %v %s", err, out)
		}
		if e.opens("cdi", "/tmp/g1") {
			t.Error("cdi opened GPU 1, not its own")
		}
	}
	if _, err := e.client.KillTask(e.ctx(), &agentv1.KillTaskRequest{Id: "cdi"}); err != nil {
		t.Fatal(err)
	}
	e.waitFinal("cdi")
	e.assertNoLeftovers()
}

// TestGPUsSchedulerWaitsForAFreeGPU: the scheduler counts GPUs in its fit
// check. Three 1-GPU tasks for a host with two: two run, each on its own
// device, and the third waits in the queue, saying why; the agent is never
// sent a task it would have to refuse.
func TestGPUsSchedulerWaitsForAFreeGPU(t *testing.T) {
	begin(t)
	root, _, n := gpuDevRoot(t)
	sched := startSchedulerProc(t)
	reg := testenv.StartRegistry(t)
	image := testenv.PushBusybox(t, reg, "busybox", "latest")
	ctd := testenv.StartContainerd(t)
	ln := newLocalNet(t)
	cfg := ln.config + fmt.Sprintf("scheduler:\n  address: %q\n  instanceID: gpu-host\n  instanceType: sim\n  zone: us-east-1a\n", sched.addr) +
		fmt.Sprintf("gpu:\n  devRoot: %s\n  cdiSpecDirs: [%s]\n", root, filepath.Join(t.TempDir(), "no-cdi"))
	e := &agentEnv{t: t, ctd: ctd, reg: reg, image: image}
	e.agent = testenv.StartAgent(t, testenv.AgentOptions{Containerd: ctd.Address, PlainHTTP: []string{reg.Host}, Config: cfg})
	e.dir, e.socket, e.client = e.agent.Dir, e.agent.Socket, e.agent.Client

	job := sched.submit(fmt.Sprintf(`name: gpus
ownerEmail: tests@example.com
application: it
service: {min: %d, desired: %d, max: %d}
task:
  image: %s
  command: [sleep, "1000"]
  killGracePeriodSeconds: 1
  resources: {cpuMillicores: 100, memoryMib: 32, gpus: 1}
`, n+1, n+1, n+1, image))
	waitUntil(t, "every GPU in use, one task queued", testenv.Scaled(60*time.Second), func() (bool, string) {
		j := sched.jobJSON(job)
		counts, _ := j["counts"].(map[string]any)
		reason, _ := j["queuedReason"].(string)
		return len(running(e)) == n && fmt.Sprint(counts["pending"]) == "1" && strings.Contains(reason, "1 GPUs"), fmt.Sprint(counts, " ", reason, " ", running(e))
	})
	seen := map[string]string{}
	for _, id := range running(e) {
		nodes := e.nvidiaNodes(id)
		if len(nodes) != 2 {
			t.Fatalf("%s sees %v, want one GPU and nvidiactl", id, nodes)
		}
		if other, dup := seen[nodes[0]]; dup {
			t.Errorf("%s and %s both got %s", id, other, nodes[0])
		}
		seen[nodes[0]] = id
	}
	all, err := e.client.ListTasks(e.ctx(), &agentv1.ListTasksRequest{All: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(all.GetTasks()) != n {
		t.Errorf("the agent was sent %d tasks, want %d (one per GPU)", len(all.GetTasks()), n)
	}
	if out, err := sched.cli("job", "kill", job); err != nil {
		t.Fatalf("job kill: %v\n%s", err, out)
	}
	waitUntil(t, "all tasks gone", testenv.Scaled(60*time.Second), func() (bool, string) {
		r := running(e)
		return len(r) == 0, fmt.Sprint(r)
	})
	e.assertNoLeftovers()
}
