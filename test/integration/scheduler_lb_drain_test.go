package integration

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	elbv2 "github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2"
	"github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2/types"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	"github.com/titus-agent/titus-agent/test/testenv"
)

// albDraining plays an ALB's connection draining in front of moto, which
// forgets a deregistered target at once: a target that was in the
// group's DescribeTargetHealth answer and is no longer there is added
// back as `draining` for hold after the first answer without it (for
// ever when hold is negative), as an ALB shows a target until its
// connections are done or its deregistration delay is over.
type albDraining struct {
	mu   sync.Mutex
	hold time.Duration
	seen map[string]bool      // ip:port seen registered
	gone map[string]time.Time // ip:port → first answer without it
}

var targetRE = regexp.MustCompile(`<Target><Id>([^<]*)</Id><Port>([^<]*)</Port></Target>`)

// reset forgets every target and draining ones from now on hold.
func (d *albDraining) reset(hold time.Duration) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.hold, d.seen, d.gone = hold, map[string]bool{}, map[string]time.Time{}
}

func (d *albDraining) rewrite(body []byte) []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := time.Now()
	present := map[string]bool{}
	for _, m := range targetRE.FindAllSubmatch(body, -1) {
		present[string(m[1])+":"+string(m[2])] = true
	}
	for k := range d.seen {
		if !present[k] && d.gone[k].IsZero() {
			d.gone[k] = now
		}
	}
	var extra bytes.Buffer
	for k := range present {
		d.seen[k] = true
		delete(d.gone, k) // registered again
	}
	for k, at := range d.gone {
		if d.hold >= 0 && now.Sub(at) >= d.hold {
			continue
		}
		ip, port, _ := strings.Cut(k, ":")
		fmt.Fprintf(&extra, `<member><Target><Id>%s</Id><Port>%s</Port></Target><HealthCheckPort>traffic-port</HealthCheckPort><TargetHealth><State>draining</State><Reason>Target.DeregistrationInProgress</Reason><Description>Target deregistration is in progress</Description></TargetHealth></member>`, ip, port)
	}
	if extra.Len() == 0 {
		return body
	}
	if bytes.Contains(body, []byte("<TargetHealthDescriptions/>")) {
		return bytes.Replace(body, []byte("<TargetHealthDescriptions/>"), []byte("<TargetHealthDescriptions>"+extra.String()+"</TargetHealthDescriptions>"), 1)
	}
	return bytes.Replace(body, []byte("</TargetHealthDescriptions>"), append(extra.Bytes(), []byte("</TargetHealthDescriptions>")...), 1)
}

// stopWatch records, for each watched task, when its target left the
// group (moto, read directly) and when its agent was asked to stop it,
// and the fewest targets the group held meanwhile.
type stopWatch struct {
	mu       sync.Mutex
	ip       map[string]string // task → ip:8080
	deregAt  map[string]time.Time
	killAt   map[string]time.Time
	low      int
	stop     chan struct{}
	done     sync.WaitGroup
	watchErr error
}

func (b *lbBed) watchStops(agents []*agentEnv, tasks map[string]string) *stopWatch {
	w := &stopWatch{ip: tasks, deregAt: map[string]time.Time{}, killAt: map[string]time.Time{}, low: 1 << 30, stop: make(chan struct{})}
	w.done.Go(func() {
		for {
			select {
			case <-w.stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			now := time.Now()
			reg, err := b.registered()
			state := map[string]agentv1.TaskState{}
			for _, a := range agents {
				l, lerr := a.client.ListTasks(a.ctx(), &agentv1.ListTasksRequest{})
				if lerr != nil {
					err = lerr
					break
				}
				for _, tk := range l.GetTasks() {
					state[tk.GetSpec().GetId()] = tk.GetState()
				}
			}
			w.mu.Lock()
			if err != nil {
				w.watchErr = err
				w.mu.Unlock()
				continue
			}
			w.low = min(w.low, len(reg))
			for id, ip := range w.ip {
				if w.deregAt[id].IsZero() && !slices.Contains(reg, ip) {
					w.deregAt[id] = now
				}
				if st, ok := state[id]; w.killAt[id].IsZero() && (!ok || st != stRunning) {
					w.killAt[id] = now
				}
			}
			w.mu.Unlock()
		}
	})
	return w
}

// end stops the watch and checks that each task was killed within
// [min, max] of leaving the group.
func (w *stopWatch) end(t *testing.T, what string, lo, hi time.Duration) {
	t.Helper()
	close(w.stop)
	w.done.Wait()
	if w.watchErr != nil {
		t.Logf("%s: a watch read failed (retried): %v", what, w.watchErr)
	}
	for id := range w.ip {
		d, k := w.deregAt[id], w.killAt[id]
		switch {
		case d.IsZero() || k.IsZero():
			t.Errorf("%s: task %s deregistered at %v, killed at %v: want both", what, id, d, k)
		case k.Sub(d) < lo || k.Sub(d) > hi:
			t.Errorf("%s: task %s killed %v after it left the group, want between %v and %v", what, id, k.Sub(d), lo, hi)
		default:
			t.Logf("%s: task %s killed %v after it left the group", what, id, k.Sub(d).Round(time.Millisecond))
		}
	}
}

// lbClient plays the load balancer's traffic: every 20 ms it sends a
// request to each target the group holds (moto, read directly), as an
// ALB would to its registered targets, and counts the answers.
type lbClient struct {
	mu       sync.Mutex
	ok       int
	failed   []string
	stop     chan struct{}
	done     sync.WaitGroup
	listErrs int
}

func (b *lbBed) startClient() *lbClient {
	c := &lbClient{stop: make(chan struct{})}
	hc := &http.Client{Timeout: 2 * time.Second}
	c.done.Go(func() {
		for {
			select {
			case <-c.stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			reg, err := b.registered()
			if err != nil {
				c.mu.Lock()
				c.listErrs++
				c.mu.Unlock()
				continue
			}
			for _, ipPort := range reg {
				resp, err := hc.Get("http://" + ipPort + "/index.html")
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						err = fmt.Errorf("status %d", resp.StatusCode)
					}
				}
				c.mu.Lock()
				if err != nil {
					c.failed = append(c.failed, fmt.Sprintf("%s %s: %v", time.Now().Format("15:04:05.000"), ipPort, err))
				} else {
					c.ok++
				}
				c.mu.Unlock()
			}
		}
	})
	return c
}

// end stops the client and fails the test on any failed request.
func (c *lbClient) end(t *testing.T, what string) {
	t.Helper()
	close(c.stop)
	c.done.Wait()
	if len(c.failed) > 0 {
		t.Errorf("%s: %d of %d requests to registered targets failed: %v", what, len(c.failed), len(c.failed)+c.ok, c.failed[:min(len(c.failed), 10)])
	}
	if c.ok == 0 {
		t.Errorf("%s: the client got no answer at all", what)
	}
	t.Logf("%s: %d requests to registered targets answered, %d failed", what, c.ok, len(c.failed))
}

// TestSchedulerLoadBalancerConnectionDraining: a voluntary stop kills a
// task only once its load balancer is done with it. moto forgets a
// deregistered target at once, so a proxy plays an ALB's connection
// draining (albDraining). The group's deregistration delay is 6 s.
//   - Rollout: the ALB shows each old target draining for 1.5 s: each old
//     task is killed after those 1.5 s (the ALB is done), well before the
//     6 s delay.
//   - Drain of the host group (`agent drain --label group=blue`, one of two
//     groups): the ALB keeps the targets draining for ever:
//     each task is killed once the 6 s delay has passed, not before.
//
// Throughout, the group never holds fewer than the job's 2 tasks, a
// client sending requests to every target the group holds sees none
// fail, and `agent ls` says what the drain waits for.
func TestSchedulerLoadBalancerConnectionDraining(t *testing.T) {
	begin(t)
	t0 := time.Now()
	phase := func(what string) { t.Logf("%5.1fs %s", time.Since(t0).Seconds(), what) }
	b := newLBBedProxied(t, true)
	// The host to drain to, started now and drained until then: an agent
	// starting beside running tasks of another would reap their veths
	// (one agent per host owns every tt* link; the bed shares one host).
	b2 := startLinkedAgent(t, testenv.StartContainerd(t), b.reg, b.sched, "host-lb2", "us-east-1b", "group=green")
	waitUntil(t, "second agent registered", 30*time.Second, func() (bool, string) {
		out, _ := b.sched.cli("agent", "ls")
		return strings.Count(out, "connected") == 2, out
	})
	if out, err := b.sched.cli("agent", "drain", "host-lb2"); err != nil {
		t.Fatalf("agent drain host-lb2: %v\n%s", err, out)
	}
	const delay = 6 * time.Second
	if _, err := b.elb.ModifyTargetGroupAttributes(context.Background(), &elbv2.ModifyTargetGroupAttributesInput{TargetGroupArn: aws.String(b.tg),
		Attributes: []types.TargetGroupAttribute{{Key: aws.String("deregistration_delay.timeout_seconds"), Value: aws.String(fmt.Sprint(int(delay.Seconds())))}}}); err != nil {
		t.Fatalf("set deregistration delay: %v", err)
	}
	alb := &albDraining{}
	alb.reset(1500 * time.Millisecond)
	b.proxy.Rewrite("DescribeTargetHealth", alb.rewrite)
	job := b.sched.submit(b.jobFile("1"))
	b.waitInSync("both tasks registered", job, 2)
	phase("registered")

	// Rollout: the ALB is done with each old target 1.5 s after it left.
	client := b.startClient()
	v1 := runningOf(job, b.agent)
	w := b.watchStops([]*agentEnv{b.agent}, v1)
	f := filepath.Join(b.sched.dir, "v2.yaml")
	if err := os.WriteFile(f, []byte(b.jobFile("2")), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := b.sched.cli("job", "update", job, "-f", f); err != nil {
		t.Fatalf("job update: %v\n%s", err, out)
	}
	sawDraining := false
	waitUntil(t, "rollout complete, old tasks killed", 60*time.Second, func() (bool, string) {
		if out, _ := b.sched.cli("job", "get", job); strings.Contains(out, "draining") {
			sawDraining = true
		}
		r, _ := b.sched.jobJSON(job)["rollout"].(map[string]any)
		left := 0
		for id := range v1 {
			if _, ok := runningOf(job, b.agent)[id]; ok {
				left++
			}
		}
		return r["state"] == "STATE_COMPLETE" && left == 0, fmt.Sprint(r, " v1 running: ", left)
	})
	w.end(t, "rollout", 1400*time.Millisecond, delay-time.Second)
	if w.low < 2 {
		t.Errorf("the group held %d targets during the rollout, want at least 2", w.low)
	}
	if !sawDraining {
		t.Errorf("job get never showed a target draining")
	}
	b.waitInSync("v2 registered", job, 2)
	phase("rolled out")

	// Drain: the ALB never says it is done; the delay ends the wait.
	if out, err := b.sched.cli("agent", "undrain", "host-lb2"); err != nil {
		t.Fatalf("agent undrain host-lb2: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, a := range []*agentEnv{b.agent, b2} {
			if l, err := a.client.ListTasks(a.ctx(), &agentv1.ListTasksRequest{All: true}); err == nil {
				for _, tk := range l.GetTasks() {
					t.Logf("%s: %s %s %s %s", a.agent.Dir, tk.GetSpec().GetId(), tk.GetState(), tk.GetReason(), tk.GetMessage())
				}
			}
			t.Logf("agent log:\n%s", a.agent.Log())
		}
	})
	alb.reset(-1)
	v2 := runningOf(job, b.agent)
	w = b.watchStops([]*agentEnv{b.agent, b2}, v2)
	// The operator's view: agent drain --wait prints each change of the
	// drain's progress and what holds it, until nothing is left to move.
	var drainOut string
	var drainErr error
	var drainWait sync.WaitGroup
	drainWait.Go(func() { drainOut, drainErr = b.sched.cli("agent", "drain", "--label", "group=blue", "--wait=60s") })
	var why []string
	waitUntil(t, "host-lb drained, its tasks killed", 60*time.Second, func() (bool, string) {
		out, _ := b.sched.cli("agent", "ls")
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, "host-lb ") && strings.Contains(l, "waiting for") && !slices.Contains(why, l) {
				why = append(why, l)
			}
		}
		return len(runningOf(job, b.agent)) == 0 && len(runningOf(job, b2)) == 2, out
	})
	drainWait.Wait()
	if drainErr != nil || !strings.Contains(drainOut, "waiting for ") || !strings.Contains(drainOut, "0 to move: host-lb: done") {
		t.Errorf("agent drain --wait: %v, want progress naming what it waits for, ending done:\n%s", drainErr, drainOut)
	}
	t.Logf("agent drain --wait:\n%s", drainOut)
	w.end(t, "drain", delay-300*time.Millisecond, delay+3*time.Second)
	if w.low < 2 {
		t.Errorf("the group held %d targets during the drain, want at least 2", w.low)
	}
	if !slices.ContainsFunc(why, func(l string) bool { return strings.Contains(l, "to serve: Running") }) {
		t.Errorf("agent ls never said what the drain waits for: %q", why)
	}
	t.Logf("agent ls during the drain:\n%s", strings.Join(why, "\n"))
	client.end(t, "rollout and drain")
	phase("drained")
	b.proxy.Rewrite("DescribeTargetHealth", nil)
	reg, _ := b.registered()
	if want := slices.Sorted(func(yield func(string) bool) {
		for _, ip := range runningOf(job, b2) {
			if !yield(ip) {
				return
			}
		}
	}); !slices.Equal(reg, want) {
		t.Errorf("group %v after the drain, want the moved tasks %v", reg, want)
	}

	defer phase("job killed")
	if out, err := b.sched.cli("job", "kill", job); err != nil {
		t.Fatalf("job kill: %v\n%s", err, out)
	}
	waitUntil(t, "group empty, tasks gone", 60*time.Second, func() (bool, string) {
		reg, err := b.registered()
		return err == nil && len(reg) == 0 && len(running(b.agent)) == 0 && len(running(b2)) == 0, fmt.Sprintf("group %v, err %v", reg, err)
	})
	b.agent.assertNoLeftovers()
	b2.assertNoLeftovers()
}
