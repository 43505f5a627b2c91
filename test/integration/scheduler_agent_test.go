package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
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
func startLinkedAgent(t *testing.T, ctd *testenv.Containerd, reg *testenv.Registry, sched *schedProc, id, zone string) *agentEnv {
	ln := newLocalNet(t)
	cfg := ln.config + fmt.Sprintf("scheduler:\n  address: %q\n  instanceID: %s\n  instanceType: sim\n  zone: %s\n", sched.addr, id, zone)
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
