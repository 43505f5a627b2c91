package integration

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/titus-agent/titus-agent/test/testenv"
)

// agentHealth is the scheduler's view of one agent's health (`agent ls -o json`).
func agentHealth(t *testing.T, sched *schedProc) map[string]bool {
	t.Helper()
	out, err := sched.cli("agent", "ls", "-o", "json")
	if err != nil {
		return nil
	}
	var got struct {
		Agents []struct {
			ID        string `json:"id"`
			Connected bool   `json:"connected"`
			Healthy   bool   `json:"healthy"`
		} `json:"agents"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("agent ls -o json: %v\n%s", err, out)
	}
	m := map[string]bool{}
	for _, a := range got.Agents {
		m[a.ID] = a.Connected && a.Healthy
	}
	return m
}

// TestHealthReachesSchedulerPlacement: an agent whose host check fails for
// real (its containerd is down) says so in `titus-agent health`, reports it
// to the scheduler, and the scheduler places nothing on it until it is
// healthy again.
func TestHealthReachesSchedulerPlacement(t *testing.T) {
	begin(t)
	metricsAddr := testenv.Addr(testenv.FreePort(t))
	sched := startSchedulerProc(t, "--agent-ttl", "5s", "--metrics-listen", metricsAddr)
	reg := testenv.StartRegistry(t)
	image := testenv.PushBusybox(t, reg, "busybox", "latest")
	ctdA := testenv.StartContainerd(t)
	a := startLinkedAgent(t, ctdA, reg, sched, "host-a", "us-east-1a")
	b := startLinkedAgent(t, testenv.StartContainerd(t), reg, sched, "host-b", "us-east-1b")
	waitUntil(t, "both agents connected and healthy", 60*time.Second, func() (bool, string) {
		h := agentHealth(t, sched)
		return h["host-a"] && h["host-b"], fmt.Sprint(h)
	})
	if out, err := a.cli("health"); err != nil || !strings.Contains(out, "containerd") {
		t.Fatalf("health on a healthy host: %v\n%s", err, out)
	}

	// Host A's containerd goes away: the agent's own check fails, and the
	// scheduler hears it with the next heartbeat.
	ctdA.Proc.Stop()
	waitUntil(t, "host-a reported unhealthy", 60*time.Second, func() (bool, string) {
		h := agentHealth(t, sched)
		return !h["host-a"] && h["host-b"], fmt.Sprint(h)
	})
	// The scheduler's own metrics count agents by health.
	waitUntil(t, "titus_scheduler_agents by health", 30*time.Second, func() (bool, string) {
		m := scrape(t, metricsAddr)
		return strings.Contains(m, `titus_scheduler_agents{health="unhealthy"} 1`) && strings.Contains(m, `titus_scheduler_agents{health="healthy"} 1`), grepLines(m, "titus_scheduler_agents")
	})
	out, err := a.cli("health")
	if err == nil {
		t.Errorf("titus-agent health exits 0 with containerd down:\n%s", out)
	}
	if !failedCheck(out, "containerd") {
		t.Errorf("titus-agent health does not name the failed containerd check:\n%s", out)
	}

	// A service job that would spread 1/1 goes to the healthy host only.
	svc := sched.submit(fmt.Sprintf(`name: health
ownerEmail: tests@example.com
application: it
service: {min: 2, desired: 2, max: 2}
task:
  image: %s
  command: [sleep, "1000"]
  killGracePeriodSeconds: 1
  resources: {cpuMillicores: 200, memoryMib: 32}
`, image))
	waitUntil(t, "both tasks on the healthy host", 90*time.Second, func() (bool, string) {
		rb := running(b)
		return len(rb) == 2, fmt.Sprintf("b=%v", rb)
	})

	// containerd back: the agent is healthy again and placeable.
	ctdA.Restart(t)
	waitUntil(t, "host-a healthy again", 60*time.Second, func() (bool, string) {
		h := agentHealth(t, sched)
		return h["host-a"], fmt.Sprint(h)
	})
	if out, err := sched.cli("job", "scale", svc, "--min", "2", "--desired", "3", "--max", "4"); err != nil {
		t.Fatalf("scale: %v\n%s", err, out)
	}
	waitUntil(t, "the new task on host-a (spread, now that it is healthy)", 90*time.Second, func() (bool, string) {
		ra, rb := running(a), running(b)
		return len(ra) == 1 && len(rb) == 2, fmt.Sprintf("a=%v b=%v", ra, rb)
	})
	m := scrape(t, metricsAddr)
	for _, want := range []string{`titus_scheduler_placement_duration_seconds_count{result="placed"}`, "titus_scheduler_queue_depth 0", `grpc_server_handled_total{grpc_code="OK"`} {
		if !strings.Contains(m, want) {
			t.Errorf("scheduler metrics lack %s:\n%s", want, grepLines(m, "titus_scheduler_"))
		}
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

// failedCheck reports whether `titus-agent health` shows check name as not ok.
func failedCheck(out, name string) bool {
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == name && f[1] == "false" {
			return true
		}
	}
	return false
}

// scrape fetches a Prometheus endpoint on loopback.
func scrape(t *testing.T, addr string) string {
	t.Helper()
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + addr + "/metrics")
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// grepLines keeps the lines of s that contain sub, for failure messages.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
