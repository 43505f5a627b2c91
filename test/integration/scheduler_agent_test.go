package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	"github.com/titus-agent/titus-agent/pkg/schedlink"
	"github.com/titus-agent/titus-agent/pkg/task"
	"github.com/titus-agent/titus-agent/test/schedload"
	"github.com/titus-agent/titus-agent/test/testenv"
)

// schedProc is a real titus-scheduler process with its embedded etcd.
type schedProc struct {
	t    *testing.T
	addr string
	dir  string
}

func startSchedulerProc(t *testing.T, extra ...string) *schedProc {
	s := &schedProc{t: t, addr: testenv.Addr(testenv.FreePort(t)), dir: t.TempDir()}
	args := append([]string{"serve", "--data-dir", filepath.Join(s.dir, "data"), "--listen", s.addr, "--metrics-listen", ""}, extra...)
	p := testenv.StartProcess(t, s.dir, "scheduler", exec.Command(testenv.SchedulerBinary(t), args...))
	testenv.WaitTCP(t, s.addr, p, 60*time.Second)
	return s
}

func (s *schedProc) cli(args ...string) (string, error) {
	out, err := exec.Command(testenv.SchedulerBinary(s.t), append([]string{"--addr", s.addr}, args...)...).CombinedOutput()
	return string(out), err
}

func (s *schedProc) submit(job string) string {
	s.t.Helper()
	f := filepath.Join(s.dir, fmt.Sprintf("job-%d.yaml", time.Now().UnixNano()))
	if err := os.WriteFile(f, []byte(job), 0o644); err != nil {
		s.t.Fatal(err)
	}
	out, err := s.cli("job", "submit", "-f", f)
	if err != nil {
		s.t.Fatalf("submit: %v\n%s", err, out)
	}
	return strings.TrimSpace(out)
}

// jobJSON returns the job as the CLI prints it with -o json.
func (s *schedProc) jobJSON(id string) map[string]any {
	s.t.Helper()
	out, err := s.cli("job", "get", id, "-o", "json")
	if err != nil {
		s.t.Fatalf("job get: %v\n%s", err, out)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		s.t.Fatalf("job get output: %v\n%s", err, out)
	}
	return m
}

// schedAgent is a real agent with the local network provider, linked to the scheduler.
func startLinkedAgent(t *testing.T, ctd *testenv.Containerd, reg *testenv.Registry, sched *schedProc, id, zone string, labels ...string) *agentEnv {
	ln := newLocalNet(t)
	cfg := ln.config + fmt.Sprintf("scheduler:\n  address: %q\n  instanceID: %s\n  instanceType: sim\n  zone: %s\n", sched.addr, id, zone)
	if len(labels) > 0 {
		cfg += "  labels:\n"
		for _, kv := range labels {
			k, v, _ := strings.Cut(kv, "=")
			cfg += fmt.Sprintf("    %s: %q\n", k, v)
		}
	}
	e := &agentEnv{t: t, ctd: ctd, reg: reg}
	e.agent = testenv.StartAgent(t, testenv.AgentOptions{Containerd: ctd.Address, PlainHTTP: []string{reg.Host}, Config: cfg})
	e.dir, e.socket, e.client = e.agent.Dir, e.agent.Socket, e.agent.Client
	return e
}

func running(e *agentEnv) []string {
	l, err := e.client.ListTasks(e.ctx(), &agentv1.ListTasksRequest{})
	if err != nil {
		return nil
	}
	var ids []string
	for _, tk := range l.GetTasks() {
		if tk.GetState() == stRunning {
			ids = append(ids, tk.GetSpec().GetId())
		}
	}
	return ids
}

func waitUntil(t *testing.T, what string, timeout time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, detail := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %s (%s)", what, timeout, detail)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestSchedulerWithRealAgents(t *testing.T) {
	begin(t)
	sched := startSchedulerProc(t, "--agent-ttl", "3s")
	reg := testenv.StartRegistry(t)
	image := testenv.PushBusybox(t, reg, "busybox", "latest")
	// Two hosts: each its own containerd and agent.
	a := startLinkedAgent(t, testenv.StartContainerd(t), reg, sched, "host-a", "us-east-1a")
	b := startLinkedAgent(t, testenv.StartContainerd(t), reg, sched, "host-b", "us-east-1b")
	waitUntil(t, "both agents registered", 30*time.Second, func() (bool, string) {
		out, _ := sched.cli("agent", "ls")
		return strings.Count(out, "connected") == 2, out
	})

	// A batch job runs to completion on both hosts.
	batch := sched.submit(fmt.Sprintf(`name: batch
ownerEmail: tests@example.com
application: it
batch: {size: 4}
task:
  image: %s
  command: [sh, -c, "echo done"]
  resources: {cpuMillicores: 500, memoryMib: 64}
`, image))
	waitUntil(t, "batch job finished", 60*time.Second, func() (bool, string) {
		j := sched.jobJSON(batch)
		return j["state"] == "JOB_STATE_FINISHED", fmt.Sprint(j["state"], j["counts"])
	})

	// A service job of 2 spreads across the two hosts (two AZs).
	svc := sched.submit(fmt.Sprintf(`name: svc
ownerEmail: tests@example.com
application: it
service: {min: 2, desired: 2, max: 4}
task:
  image: %s
  command: [sleep, "1000"]
  killGracePeriodSeconds: 1
  resources: {cpuMillicores: 500, memoryMib: 64}
`, image))
	waitUntil(t, "service spread 1/1", 60*time.Second, func() (bool, string) {
		ra, rb := running(a), running(b)
		return len(ra) == 1 && len(rb) == 1, fmt.Sprintf("a=%v b=%v", ra, rb)
	})
	orphan := running(a)[0]

	// Host A's agent dies: its task is lost and replaced on host B.
	a.kill9()
	waitUntil(t, "service task replaced on host b", 60*time.Second, func() (bool, string) {
		rb := running(b)
		return len(rb) == 2, fmt.Sprintf("b=%v", rb)
	})
	// Host A's agent comes back: the scheduler no longer wants its old task,
	// so reconciliation kills it; no duplicates anywhere.
	a.start()
	waitUntil(t, "old task on host a killed by reconcile", 60*time.Second, func() (bool, string) {
		tk := a.get(orphan)
		return tk.GetState() == stKilled, tk.GetState().String()
	})
	if ra, rb := running(a), running(b); len(ra)+len(rb) != 2 {
		t.Fatalf("after reconcile: a=%v b=%v, want 2 tasks in all", ra, rb)
	}
	if out, err := sched.cli("job", "kill", svc); err != nil {
		t.Fatalf("job kill: %v\n%s", err, out)
	}
	waitUntil(t, "all tasks gone", 60*time.Second, func() (bool, string) {
		ra, rb := running(a), running(b)
		return len(ra)+len(rb) == 0, fmt.Sprintf("a=%v b=%v", ra, rb)
	})
	a.assertNoLeftovers()
	b.assertNoLeftovers()
}

// startEtcd runs a real etcd server (built by `make deps`) on loopback.
func startEtcd(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	client, peer := testenv.Addr(testenv.FreePort(t)), testenv.Addr(testenv.FreePort(t))
	cmd := exec.Command(testenv.LookPath(t, "etcd"), "--name", "it", "--data-dir", filepath.Join(dir, "data"),
		"--listen-client-urls", "http://"+client, "--advertise-client-urls", "http://"+client,
		"--listen-peer-urls", "http://"+peer, "--initial-advertise-peer-urls", "http://"+peer,
		"--initial-cluster", "it=http://"+peer, "--log-level", "warn")
	p := testenv.StartProcess(t, dir, "etcd", cmd)
	testenv.WaitTCP(t, client, p, 60*time.Second)
	return "http://" + client
}

// startReplica runs a titus-scheduler process on an external etcd.
func startReplica(t *testing.T, endpoints string) (*schedProc, *testenv.Process) {
	s := &schedProc{t: t, addr: testenv.Addr(testenv.FreePort(t)), dir: t.TempDir()}
	p := testenv.StartProcess(t, s.dir, "scheduler", exec.Command(testenv.SchedulerBinary(t), "serve",
		"--etcd-endpoints", endpoints, "--listen", s.addr, "--metrics-listen", "", "--election-ttl", "2s", "--agent-ttl", "4s"))
	testenv.WaitTCP(t, s.addr, p, 60*time.Second)
	return s, p
}

// simAgents starts one simulated agent (host-0, host-1, ...) per AZ,
// dialing addr, until the test ends.
func simAgents(t *testing.T, ctx context.Context, addr string, b schedload.Behavior, azs ...string) []*schedload.Agent {
	var agents []*schedload.Agent
	for i, az := range azs {
		a := schedload.NewAgent(schedlink.Config{
			Address: addr, InstanceID: fmt.Sprintf("host-%d", i), InstanceType: "sim", AZ: az,
			Capacity:   schedlink.Capacity{CPUMillicores: 8000, MemoryMiB: 16384},
			MinBackoff: 50 * time.Millisecond, MaxBackoff: 300 * time.Millisecond,
		}, b)
		a.Start(ctx)
		t.Cleanup(a.Stop)
		agents = append(agents, a)
	}
	return agents
}

// batchFor runs tasks whose command is "batch" for d, others until killed.
func batchFor(d time.Duration) schedload.Behavior {
	return func(s *task.Spec) (time.Duration, int32) {
		if s.Command[0] == "batch" {
			return d, 0
		}
		return -1, 0
	}
}

// TestSchedulerExternalEtcdLeaderKilled runs two scheduler processes on a
// real etcd server (--etcd-endpoints), kills the leader with SIGKILL while
// a batch and a service job run, and checks that the standby takes over:
// the batch job completes with each task launched once, the service job
// stays at its size, and no job is lost.
func TestSchedulerExternalEtcdLeaderKilled(t *testing.T) {
	begin(t)
	endpoints := startEtcd(t)
	first, firstProc := startReplica(t, endpoints)
	waitUntil(t, "first replica leads", 60*time.Second, func() (bool, string) {
		out, err := first.cli("job", "ls")
		return err == nil, out
	})
	second, _ := startReplica(t, endpoints)
	both := &schedProc{t: t, addr: first.addr + "," + second.addr, dir: first.dir}
	if out, err := second.cli("job", "ls"); err == nil || !strings.Contains(out, "standby") || !strings.Contains(out, first.addr) {
		t.Fatalf("second replica should be a standby naming %s: %v\n%s", first.addr, err, out)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	agents := simAgents(t, ctx, both.addr, batchFor(4*time.Second), "az-a", "az-b")
	waitUntil(t, "agents registered", 30*time.Second, func() (bool, string) {
		out, _ := both.cli("agent", "ls")
		return strings.Count(out, "connected") == 2, out
	})
	batch := both.submit(`ownerEmail: tests@example.com
application: it
batch: {size: 8}
task: {image: "registry.example/x:1", command: [batch], resources: {cpuMillicores: 500, memoryMib: 64}}
`)
	svc := both.submit(`ownerEmail: tests@example.com
application: it
service: {min: 1, desired: 4, max: 4}
task: {image: "registry.example/x:1", command: [serve], resources: {cpuMillicores: 500, memoryMib: 64}}
`)
	waitUntil(t, "tasks running", 30*time.Second, func() (bool, string) {
		n := 0
		for _, a := range agents {
			n += len(a.Tasks.Running())
		}
		return n == 12, fmt.Sprint(n)
	})

	// SIGKILL: no resignation, the standby must wait out the leader's lease.
	_ = syscall.Kill(firstProc.Cmd.Process.Pid, syscall.SIGKILL)
	_ = firstProc.Cmd.Wait()

	waitUntil(t, "batch job finished under the new leader", 90*time.Second, func() (bool, string) {
		out, err := second.cli("job", "get", batch, "-o", "json")
		return err == nil && strings.Contains(out, "JOB_STATE_FINISHED"), out
	})
	waitUntil(t, "service job at its size", 30*time.Second, func() (bool, string) {
		n := 0
		for _, a := range agents {
			for _, id := range a.Tasks.Running() {
				if strings.HasPrefix(id, svc+".") {
					n++
				}
			}
		}
		return n == 4, fmt.Sprint(n)
	})
	launched := 0
	for _, a := range agents {
		for _, v := range a.Tasks.List() {
			if strings.HasPrefix(v.Spec.ID, batch+".") {
				launched++
			}
		}
	}
	if launched != 8 {
		t.Fatalf("batch tasks launched = %d, want 8 (none repeated or lost across the failover)", launched)
	}
	out, err := second.cli("job", "ls", "-a")
	if err != nil || !strings.Contains(out, batch) || !strings.Contains(out, svc) {
		t.Fatalf("job ls after failover: %v\n%s", err, out)
	}
}

// TestSchedulerCLI drives every CLI command against a titus-scheduler
// process with two simulated agents (real stream over TCP) labelled by
// instance group: job submit/ls/get/scale/kill, task ls/get/kill and agent
// ls/drain/undrain by label, checking the effect of each.
func TestSchedulerCLI(t *testing.T) {
	begin(t)
	sched := startSchedulerProc(t, "--agent-ttl", "3s")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	agents := map[string]*schedload.Agent{}
	for _, h := range []struct{ id, az, group string }{{"host-a", "az-a", "blue"}, {"host-b", "az-b", "green"}} {
		a := schedload.NewAgent(schedlink.Config{
			Address: sched.addr, InstanceID: h.id, InstanceType: "sim", AZ: h.az, Labels: map[string]string{"group": h.group},
			Capacity:   schedlink.Capacity{CPUMillicores: 8000, MemoryMiB: 16384},
			MinBackoff: 50 * time.Millisecond, MaxBackoff: 300 * time.Millisecond,
		}, schedload.RunForever)
		a.Start(ctx)
		t.Cleanup(a.Stop)
		agents[h.id] = a
	}
	cli := func(args ...string) string {
		t.Helper()
		out, err := sched.cli(args...)
		if err != nil {
			t.Fatalf("titus-scheduler %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	runningOn := func(prefix string) map[string]int {
		out := map[string]int{}
		for id, a := range agents {
			for _, tid := range a.Tasks.Running() {
				if strings.HasPrefix(tid, prefix+".") {
					out[id]++
				}
			}
		}
		return out
	}
	waitUntil(t, "agents in agent ls", 60*time.Second, func() (bool, string) {
		out, _ := sched.cli("agent", "ls") // a standby until its embedded etcd is up
		return strings.Count(out, "connected") == 2 && strings.Contains(out, "group=blue"), out
	})
	svc := sched.submit(`name: web
ownerEmail: tests@example.com
application: web
service: {min: 1, desired: 2, max: 6}
task: {image: "registry.example/web:1", command: [serve], resources: {cpuMillicores: 500, memoryMib: 64}}
`)
	if out := cli("job", "ls"); !strings.Contains(out, svc) || !strings.Contains(out, "service/1<=2<=6") {
		t.Fatalf("job ls does not list the service:\n%s", out)
	}
	cli("job", "scale", svc, "--desired", "4")
	waitUntil(t, "scaled to 4, spread 2/2", 30*time.Second, func() (bool, string) {
		r := runningOn(svc)
		return r["host-a"] == 2 && r["host-b"] == 2, fmt.Sprint(r)
	})
	if j := sched.jobJSON(svc); fmt.Sprint(j["spec"].(map[string]any)["service"].(map[string]any)["desired"]) != "4" {
		t.Fatalf("job get after scale: %v", j["spec"])
	}
	if out, err := sched.cli("job", "scale", svc, "--desired", "9"); err == nil || !strings.Contains(out, "service.desired") {
		t.Fatalf("scale beyond max: want a field-named refusal, got %v\n%s", err, out)
	}

	// task ls / get / kill: the killed task is replaced.
	out := cli("task", "ls", "--job", svc, "-o", "json")
	var list struct {
		Tasks []struct{ ID, AgentID, State string } `json:"tasks"`
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil || len(list.Tasks) != 4 {
		t.Fatalf("task ls: %v\n%s", err, out)
	}
	victim := list.Tasks[0].ID
	if out := cli("task", "get", victim); !strings.Contains(out, victim) || !strings.Contains(out, "RUNNING") {
		t.Fatalf("task get:\n%s", out)
	}
	cli("task", "kill", victim)
	waitUntil(t, "killed task replaced", 30*time.Second, func() (bool, string) {
		r := runningOn(svc)
		gone := true
		for _, a := range agents {
			if slices.Contains(a.Tasks.Running(), victim) {
				gone = false
			}
		}
		return gone && r["host-a"]+r["host-b"] == 4, fmt.Sprint(r)
	})
	if out := cli("task", "get", victim); !strings.Contains(out, "KILLED") {
		t.Fatalf("task get of the killed task:\n%s", out)
	}

	// Drain the blue instance group: its service tasks move to green.
	if out := cli("agent", "drain", "--label", "group=blue"); !strings.Contains(out, "host-a") || !strings.Contains(out, "drained") || strings.Contains(out, "host-b") {
		t.Fatalf("agent drain --label group=blue:\n%s", out)
	}
	waitUntil(t, "all 4 on green", 30*time.Second, func() (bool, string) {
		r := runningOn(svc)
		return r["host-a"] == 0 && r["host-b"] == 4, fmt.Sprint(r)
	})
	if out := cli("agent", "undrain", "--label", "group=blue"); strings.Contains(out, "drained") {
		t.Fatalf("agent undrain:\n%s", out)
	}
	cli("job", "scale", svc, "--desired", "6")
	waitUntil(t, "blue used again after undrain", 30*time.Second, func() (bool, string) {
		r := runningOn(svc)
		return r["host-a"] > 0 && r["host-a"]+r["host-b"] == 6, fmt.Sprint(r)
	})

	cli("job", "kill", svc)
	waitUntil(t, "job killed", 30*time.Second, func() (bool, string) {
		r := runningOn(svc)
		return len(r) == 0 && sched.jobJSON(svc)["state"] == "JOB_STATE_KILLED", fmt.Sprint(r)
	})
	if out := cli("job", "ls"); strings.Contains(out, svc) {
		t.Fatalf("killed job still in job ls (without -a):\n%s", out)
	}
	if out := cli("job", "ls", "-a"); !strings.Contains(out, svc) {
		t.Fatalf("killed job missing from job ls -a:\n%s", out)
	}
}
