package integration

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/titus-agent/titus-agent/test/testenv"
)

// answering lists which of ips (ip:8080) answer /index.html now.
func answering(hc *http.Client, ips []string) map[string]bool {
	out := map[string]bool{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, ip := range ips {
		wg.Go(func() {
			resp, err := hc.Get("http://" + ip + "/index.html")
			if err != nil {
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				mu.Lock()
				out[ip] = true
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return out
}

// TestSchedulerLoadBalancerRolloutOfSix: a service of 6 tasks behind a
// target group, each answering HTTP (busybox httpd, real containers),
// rolled out to a new template with maxUnavailable 1 and no surge. A
// client polling every task IP the agent runs, every 50 ms, never finds
// fewer than 5 answering, and every target the group holds answers: the
// group holds only serving tasks; at the end it holds exactly the 6 new
// ones. The proxy plays an ALB's connection draining (1 s), as AWS does
// between a deregistration and the kill.
func TestSchedulerLoadBalancerRolloutOfSix(t *testing.T) {
	begin(t)
	t0 := time.Now()
	phase := func(what string) { t.Logf("%5.1fs %s", time.Since(t0).Seconds(), what) }
	b := newLBBedProxied(t, true)
	alb := &albDraining{}
	alb.reset(time.Second)
	b.proxy.Rewrite("DescribeTargetHealth", alb.rewrite)
	six := func(env string) string {
		f := b.jobFile(env)
		f = strings.Replace(f, "  desired: 2\n  max: 4\n", "  desired: 6\n  max: 6\n", 1)
		f = strings.Replace(f, `update: {maxSurge: "1", maxUnavailable: "0"}`, `update: {maxSurge: "0", maxUnavailable: "1"}`, 1)
		return strings.Replace(f, "cpuMillicores: 200", "cpuMillicores: 100", 1)
	}
	job := b.sched.submit(six("1"))
	v1 := b.waitInSync("six tasks registered", job, 6)
	phase("six registered")

	hc := &http.Client{Timeout: time.Second}
	var (
		mu                 sync.Mutex
		low, samples       = 1 << 30, 0
		deadRegistered     []string
		lowAt              string
		stop               = make(chan struct{})
		watch              sync.WaitGroup
		registeredLow      = 1 << 30
		registeredLowCount = 0
	)
	watch.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			reg, err := b.registered()
			if err != nil {
				continue
			}
			tasks := runningOf(job, b.agent)
			ips := slices.Collect(func(yield func(string) bool) {
				for _, ip := range tasks {
					if !yield(ip) {
						return
					}
				}
			})
			ok := answering(hc, append(slices.Clone(ips), reg...))
			n := 0
			for _, ip := range ips {
				if ok[ip] {
					n++
				}
			}
			mu.Lock()
			samples++
			if n < low {
				low, lowAt = n, fmt.Sprintf("answering %d of running %v, registered %v", n, ips, reg)
			}
			if len(reg) < registeredLow {
				registeredLow, registeredLowCount = len(reg), 0
			}
			if len(reg) == registeredLow {
				registeredLowCount++
			}
			for _, r := range reg {
				if !ok[r] {
					deadRegistered = append(deadRegistered, time.Now().Format("15:04:05.000")+" "+r)
				}
			}
			mu.Unlock()
		}
	})
	f := filepath.Join(b.sched.dir, "v2.yaml")
	if err := os.WriteFile(f, []byte(six("2")), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := b.sched.cli("job", "update", job, "-f", f); err != nil {
		t.Fatalf("job update: %v\n%s", err, out)
	}
	waitUntil(t, "rollout complete", 90*time.Second, func() (bool, string) {
		r, _ := b.sched.jobJSON(job)["rollout"].(map[string]any)
		return r["state"] == "STATE_COMPLETE", fmt.Sprint(r)
	})
	v2 := b.waitInSync("the six new tasks registered", job, 6)
	close(stop)
	watch.Wait()
	phase("rolled out")
	t.Logf("%d samples; fewest answering %d (%s); fewest registered %d", samples, low, lowAt, registeredLow)
	if samples < 20 {
		t.Errorf("only %d samples during the rollout", samples)
	}
	if low < 5 {
		t.Errorf("%d tasks answered at one point, want at least 5: %s", low, lowAt)
	}
	if registeredLow < 5 {
		t.Errorf("the group held %d targets at one point, want at least 5", registeredLow)
	}
	if len(deadRegistered) > 0 {
		t.Errorf("registered targets that did not answer: %v", deadRegistered[:min(10, len(deadRegistered))])
	}
	for _, ip := range v1 {
		if slices.Contains(v2, ip) {
			t.Logf("note: %s served both revisions (an IP reused)", ip)
		}
	}

	b.proxy.Rewrite("DescribeTargetHealth", nil)
	defer phase("job killed")
	if out, err := b.sched.cli("job", "kill", job); err != nil {
		t.Fatalf("job kill: %v\n%s", err, out)
	}
	waitUntil(t, "group empty, tasks gone", 60*time.Second, func() (bool, string) {
		reg, err := b.registered()
		return err == nil && len(reg) == 0 && len(running(b.agent)) == 0, fmt.Sprintf("group %v, running %v, err %v", reg, running(b.agent), err)
	})
	b.agent.assertNoLeftovers()
}

// TestSchedulerLoadBalancerAgentKilled: the agent of a host running one
// of a service's two tasks is killed (SIGKILL; its container keeps
// running, unreachable to the scheduler). Once the host is lost (agent
// TTL), its task's target leaves the group and a replacement on the
// other host joins it: the group ends holding exactly the two tasks of
// the live host, nothing of the dead one. The agent, started again,
// reaps the task the scheduler no longer knows.
func TestSchedulerLoadBalancerAgentKilled(t *testing.T) {
	begin(t)
	t0 := time.Now()
	phase := func(what string) { t.Logf("%5.1fs %s", time.Since(t0).Seconds(), what) }
	b := newLBBed(t)
	b2 := startLinkedAgent(t, testenv.StartContainerd(t), b.reg, b.sched, "host-lb2", "us-east-1b")
	waitUntil(t, "second agent registered", 30*time.Second, func() (bool, string) {
		out, _ := b.sched.cli("agent", "ls")
		return strings.Count(out, "connected") == 2, out
	})
	job := b.sched.submit(b.jobFile("1"))
	var dead map[string]string
	waitUntil(t, "one task on each host, both registered", 60*time.Second, func() (bool, string) {
		reg, err := b.registered()
		dead = runningOf(job, b.agent)
		live := runningOf(job, b2)
		return err == nil && len(dead) == 1 && len(live) == 1 && len(reg) == 2, fmt.Sprintf("group %v, host-lb %v, host-lb2 %v", reg, dead, live)
	})
	phase("spread and registered")
	b.agent.agent.Kill9()
	killed := time.Now()
	var deadIP string
	for _, ip := range dead {
		deadIP = ip
	}
	waitUntil(t, "the dead host's target gone, two live tasks registered", 60*time.Second, func() (bool, string) {
		reg, err := b.registered()
		live := slices.Sorted(func(yield func(string) bool) {
			for _, ip := range runningOf(job, b2) {
				if !yield(ip) {
					return
				}
			}
		})
		return err == nil && slices.Equal(reg, live) && len(live) == 2, fmt.Sprintf("group %v, live %v", reg, live)
	})
	phase(fmt.Sprintf("replaced %.1fs after the kill", time.Since(killed).Seconds()))
	if reg, _ := b.registered(); slices.Contains(reg, deadIP) {
		t.Errorf("the dead host's target %s is still registered: %v", deadIP, reg)
	}
	// A reconcile later, still nothing of the dead host.
	time.Sleep(1500 * time.Millisecond)
	if reg, _ := b.registered(); slices.Contains(reg, deadIP) || len(reg) != 2 {
		t.Errorf("after a reconcile: group %v (dead %s)", reg, deadIP)
	}

	defer phase("job killed, the dead host's task reaped")
	if out, err := b.sched.cli("job", "kill", job); err != nil {
		t.Fatalf("job kill: %v\n%s", err, out)
	}
	waitUntil(t, "group empty, live tasks gone", 60*time.Second, func() (bool, string) {
		reg, err := b.registered()
		return err == nil && len(reg) == 0 && len(running(b2)) == 0, fmt.Sprintf("group %v, err %v", reg, err)
	})
	b2.assertNoLeftovers()
	// The agent comes back (once host-lb2 runs nothing: an agent starting
	// reaps every task veth it does not know, and the bed shares one
	// host): the scheduler has it kill the task it no longer knows.
	b.agent.agent.Start()
	b.agent.client = b.agent.agent.Client
	waitUntil(t, "the old task reaped", 60*time.Second, func() (bool, string) {
		left := running(b.agent)
		return len(left) == 0, fmt.Sprint(left)
	})
	if reg, _ := b.registered(); len(reg) != 0 {
		t.Errorf("group %v after the dead host came back, want empty", reg)
	}
	b.agent.assertNoLeftovers()
}
