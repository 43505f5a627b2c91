package integration

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
	"github.com/titus-agent/titus-agent/test/testenv"
)

func healthCheckSpec(kind string, port int32, path string, cmd ...string) *agentv1.HealthCheckSpec {
	return &agentv1.HealthCheckSpec{Kind: kind, Port: port, Path: path, Command: cmd, Interval: durationpb.New(time.Second),
		Timeout: durationpb.New(time.Second), HealthyThreshold: 1, UnhealthyThreshold: 2}
}

// waitHealth polls a task until its health is want and returns it.
func (e *agentEnv) waitHealth(id string, want agentv1.HealthStatus) *agentv1.Task {
	e.t.Helper()
	var tk *agentv1.Task
	waitUntil(e.t, id+" "+want.String(), testenv.Scaled(60*time.Second), func() (bool, string) {
		tk = e.get(id)
		return tk.GetHealth().GetStatus() == want, fmt.Sprintf("%s %s %q", tk.GetState(), tk.GetHealth().GetStatus(), tk.GetHealth().GetOutput())
	})
	return tk
}

// TestTaskHealthChecks: real containers on the local network provider.
// An http check against busybox httpd goes Healthy; a check of a missing
// page goes Unhealthy with the answer as output; an exec check runs inside
// the container; a tcp check aimed at a port only the host listens on
// never reaches it (checks dial from the task's netns, to the task's IP).
// Health survives an agent restart and checks resume; a kill stops them.
func TestTaskHealthChecks(t *testing.T) {
	begin(t)
	e, _ := newNetAgentEnv(t)
	events := e.watch()
	httpd := []string{"sh", "-c", "mkdir -p /www && echo hello > /www/index.html && exec httpd -f -p 8080 -h /www"}

	web := e.spec("web", httpd...)
	web.HealthCheck = healthCheckSpec("http", 8080, "/index.html")
	e.launch(web)
	broken := e.spec("broken", httpd...)
	broken.HealthCheck = healthCheckSpec("http", 8080, "/missing")
	e.launch(broken)
	// The exec check reads a file only the task's own filesystem has.
	marker := fmt.Sprintf("/tmp/health-marker-%d", time.Now().UnixNano())
	execTask := e.spec("exec", "sh", "-c", "echo inside-the-container > "+marker+" && exec sleep 1000")
	execTask.HealthCheck = healthCheckSpec("exec", 0, "", "cat", marker)
	e.launch(execTask)
	// Attack: a tcp check of a port on which only the host listens.
	hostL, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hostL.Close()
	hostPort := hostL.Addr().(*net.TCPAddr).Port
	accepted := make(chan struct{}, 1)
	go func() {
		if c, err := hostL.Accept(); err == nil {
			c.Close()
			accepted <- struct{}{}
		}
	}()
	probe := e.spec("probe", "sleep", "1000")
	probe.HealthCheck = healthCheckSpec("tcp", int32(hostPort), "")
	e.launch(probe)

	tk := e.waitHealth("web", agentv1.HealthStatus_HEALTH_STATUS_HEALTHY)
	if h := tk.GetHealth(); !h.GetOk() || !strings.Contains(h.GetOutput(), "200") || !strings.Contains(h.GetOutput(), "hello") {
		t.Fatalf("web health %+v", h)
	}
	tk = e.waitHealth("broken", agentv1.HealthStatus_HEALTH_STATUS_UNHEALTHY)
	if out := tk.GetHealth().GetOutput(); !strings.Contains(out, "404") {
		t.Fatalf("broken's output %q, want the 404", out)
	}
	tk = e.waitHealth("exec", agentv1.HealthStatus_HEALTH_STATUS_HEALTHY)
	if out := tk.GetHealth().GetOutput(); out != "inside-the-container" {
		t.Fatalf("exec check output %q", out)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatalf("%s exists on the host: the exec check did not run in the container", marker)
	}
	tk = e.waitHealth("probe", agentv1.HealthStatus_HEALTH_STATUS_UNHEALTHY)
	ip := tk.GetNetwork().GetIpv4()
	if out := tk.GetHealth().GetOutput(); !strings.Contains(out, net.JoinHostPort(ip, strconv.Itoa(hostPort))) {
		t.Fatalf("probe output %q: want a dial of the task's own %s", out, ip)
	}
	select {
	case <-accepted:
		t.Fatal("a health check reached a port on the host")
	default:
	}

	// The CLI and the events stream show the health.
	out, err := e.cli("task", "ls")
	if err != nil || !strings.Contains(out, "HEALTH") || !strings.Contains(out, "Healthy") || !strings.Contains(out, "Unhealthy") {
		t.Fatalf("task ls: %v\n%s", err, out)
	}
	out, err = e.cli("task", "get", "broken")
	if err != nil || !strings.Contains(out, "Health:  Unhealthy") || !strings.Contains(out, "404") {
		t.Fatalf("task get: %v\n%s", err, out)
	}
	waitUntil(t, "health events", 30*time.Second, func() (bool, string) {
		events.mu.Lock()
		defer events.mu.Unlock()
		seen := map[string]string{}
		for _, ev := range events.evs {
			if ev.GetHealthChanged() {
				seen[ev.GetTaskId()] = ev.GetHealth().GetStatus().String()
			}
		}
		return seen["web"] == "HEALTH_STATUS_HEALTHY" && seen["broken"] == "HEALTH_STATUS_UNHEALTHY", fmt.Sprint(seen)
	})

	// An agent restart: the recorded health stands and checks resume.
	e.stop()
	e.start()
	tk = e.get("web")
	if tk.GetHealth().GetStatus() != agentv1.HealthStatus_HEALTH_STATUS_HEALTHY {
		t.Fatalf("web after restart: %+v", tk.GetHealth())
	}
	restarted := time.Now()
	waitUntil(t, "checks resumed after restart", testenv.Scaled(30*time.Second), func() (bool, string) {
		h := e.get("web").GetHealth()
		return h.GetChecked().AsTime().After(restarted) && h.GetOk(), fmt.Sprint(h)
	})
	e.waitHealth("broken", agentv1.HealthStatus_HEALTH_STATUS_UNHEALTHY)

	// A kill stops the checks: the health stays as it was.
	for _, id := range []string{"web", "broken", "exec", "probe"} {
		if _, err := e.client.KillTask(e.ctx(), &agentv1.KillTaskRequest{Id: id}); err != nil {
			t.Fatalf("kill %s: %v", id, err)
		}
	}
	for _, id := range []string{"web", "broken", "exec", "probe"} {
		e.waitState(id, stKilled, 60*time.Second)
	}
	if h := e.get("web").GetHealth(); h.GetStatus() != agentv1.HealthStatus_HEALTH_STATUS_HEALTHY {
		t.Fatalf("web's health after the kill: %+v", h)
	}
	e.assertNoLeftovers()
}

// TestTaskHealthCheckRefusedAtTheDoor: bad checks are refused with
// field-named errors before anything is created.
func TestTaskHealthCheckRefusedAtTheDoor(t *testing.T) {
	begin(t)
	e := newAgentEnv(t)
	spec := e.spec("bad", "sleep", "1")
	spec.HealthCheck = &agentv1.HealthCheckSpec{Kind: "http", Port: 70000, Path: "http://169.254.169.254/",
		Interval: durationpb.New(0), Timeout: durationpb.New(time.Second), HealthyThreshold: 0, UnhealthyThreshold: 1}
	_, err := e.client.LaunchTask(e.ctx(), &agentv1.LaunchTaskRequest{Spec: spec})
	for _, field := range []string{"health_check.port", "health_check.path", "health_check.interval", "health_check.timeout", "health_check.healthy_threshold"} {
		if err == nil || !strings.Contains(err.Error(), field) {
			t.Fatalf("launch of a bad check: %v, want %s named", err, field)
		}
	}
	// This agent runs tasks in the host's namespace (provider none): a
	// network check would have to dial from the host, so it is refused.
	spec.HealthCheck = healthCheckSpec("tcp", 22, "")
	if _, err := e.client.LaunchTask(e.ctx(), &agentv1.LaunchTaskRequest{Spec: spec}); err == nil || !strings.Contains(err.Error(), "health_check.kind") {
		t.Fatalf("tcp check without a task netns: %v", err)
	}
}

// TestSchedulerReplacesUnhealthyTask: a service task whose check never
// passes is killed by the scheduler with reason HealthCheckFailed and
// replaced by a new attempt, after a backoff, counted as a retry.
func TestSchedulerReplacesUnhealthyTask(t *testing.T) {
	begin(t)
	sched := startSchedulerProc(t, "--agent-ttl", "5s")
	reg := testenv.StartRegistry(t)
	image := testenv.PushBusybox(t, reg, "busybox", "latest")
	a := startLinkedAgent(t, testenv.StartContainerd(t), reg, sched, "host-a", "us-east-1a")
	waitUntil(t, "agent registered", 30*time.Second, func() (bool, string) {
		out, _ := sched.cli("agent", "ls")
		return strings.Contains(out, "connected"), out
	})
	job := sched.submit(fmt.Sprintf(`name: sick
ownerEmail: tests@example.com
application: it
service: {min: 1, desired: 1, max: 1, unhealthy_replace_after_seconds: 1}
task:
  image: %s
  command: [sleep, "1000"]
  killGracePeriodSeconds: 1
  resources: {cpuMillicores: 500, memoryMib: 64}
  health_check: {kind: tcp, port: 8080, interval: 1s, timeout: 1s, healthy_threshold: 1, unhealthy_threshold: 2}
`, image))
	first := job + ".0.1" // attempts count from 1
	got := &schedv1.Task{}
	waitUntil(t, "first task killed for its health", testenv.Scaled(90*time.Second), func() (bool, string) {
		if err := sched.cliJSON(got, "task", "get", first); err != nil {
			return false, err.Error()
		}
		return got.GetState() == stKilled, got.String()
	})
	if got.GetReason() != "HealthCheckFailed" || !strings.Contains(got.GetMessage(), "8080") {
		t.Fatalf("first task ended %v, want reason HealthCheckFailed with the check's output", got)
	}
	if tk := a.get(first); tk.GetState() != stKilled {
		t.Fatalf("on the agent: %s", tk.GetState())
	}
	waitUntil(t, "replacement launched", testenv.Scaled(90*time.Second), func() (bool, string) {
		tk := &schedv1.Task{}
		err := sched.cliJSON(tk, "task", "get", job+".0.2")
		return err == nil && tk.GetState() != 0, fmt.Sprint(tk, err)
	})
	j := sched.jobJSON(job)
	counts, _ := json.Marshal(j["counts"])
	if !strings.Contains(string(counts), `"retries":1`) && !strings.Contains(string(counts), `"retries":2`) {
		t.Fatalf("job counts %s: want the health failure counted as a retry", counts)
	}
	if out, err := sched.cli("job", "kill", job); err != nil {
		t.Fatalf("job kill: %v\n%s", err, out)
	}
	waitUntil(t, "all tasks gone", 60*time.Second, func() (bool, string) {
		r := running(a)
		return len(r) == 0, fmt.Sprint(r)
	})
	a.assertNoLeftovers()
}
