package core

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/titus-agent/titus-agent/pkg/metrics"
	"github.com/titus-agent/titus-agent/pkg/scheduler/model"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// fakeLB is a recording load balancer: every call is a line of log, and
// groups hold their targets and states.
type fakeLB struct {
	mu     sync.Mutex
	log    []string
	groups map[string]map[Target]string
	delay  time.Duration
	// failDeregister fails every Deregister (throttled for ever).
	failDeregister error
	// keepDraining leaves deregistered targets draining.
	keepDraining bool
	// sick: what the load balancer's health checks say of these targets
	// while registered (others are healthy).
	sick map[Target]TargetHealth
	// types are the groups' target types (ip when not set).
	types map[string]string
}

func newFakeLB(arns ...string) *fakeLB {
	f := &fakeLB{groups: map[string]map[Target]string{}}
	for _, a := range arns {
		f.groups[a] = map[Target]string{}
	}
	return f
}

func (f *fakeLB) record(s string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.log = append(f.log, s)
}

func targetList(ts []Target) string {
	s := ""
	for _, t := range ts {
		s += fmt.Sprintf(" %s:%d", t.IP, t.Port)
	}
	return s
}

func (f *fakeLB) Register(_ context.Context, arn string, ts []Target) error {
	f.record("register " + short(arn) + targetList(ts))
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, t := range ts {
		f.groups[arn][t] = "healthy"
	}
	return nil
}

func (f *fakeLB) Deregister(_ context.Context, arn string, ts []Target) error {
	f.record("deregister " + short(arn) + targetList(ts))
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failDeregister != nil {
		return f.failDeregister
	}
	for _, t := range ts {
		if f.keepDraining {
			f.groups[arn][t] = Draining
		} else {
			delete(f.groups[arn], t)
		}
	}
	return nil
}

func (f *fakeLB) Targets(_ context.Context, arn string) ([]TargetHealth, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []TargetHealth
	for t, s := range f.groups[arn] {
		h := TargetHealth{Target: t, State: s}
		if sick, ok := f.sick[t]; ok && s != Draining {
			h = sick
			h.Target = t
		}
		out = append(out, h)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].IP < out[j].IP })
	return out, nil
}

func (f *fakeLB) DeregistrationDelay(context.Context, string) (time.Duration, error) {
	return f.delay, nil
}

func (f *fakeLB) TargetType(_ context.Context, arn string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.groups[arn]; !ok {
		return "", ErrNoTargetGroup
	}
	if t := f.types[arn]; t != "" {
		return t, nil
	}
	return "ip", nil
}

// registered lists a group's targets that are not draining.
func (f *fakeLB) registered(arn string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for t, s := range f.groups[arn] {
		if s != Draining {
			out = append(out, fmt.Sprintf("%s:%d", t.IP, t.Port))
		}
	}
	sort.Strings(out)
	return out
}

func (f *fakeLB) takeLog() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	l := f.log
	f.log = nil
	return l
}

const (
	tgA = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/web/0123456789abcdef"
	tgB = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/api/fedcba9876543210"
)

func short(arn string) string {
	switch arn {
	case tgA:
		return "A"
	case tgB:
		return "B"
	}
	return arn
}

// lbHarness is a scheduler with a fake load balancer, one agent and a
// service job in group A (port 8080) with a health check.
type lbHarness struct {
	*testScheduler
	lb   *fakeLB
	sess *Session
	job  string
}

func newLBHarness(t *testing.T, desired uint32, cfg Config) *lbHarness {
	f := newFakeLB(tgA, tgB)
	cfg.LoadBalancers = f
	ts := newTestScheduler(t, cfg)
	sess := ts.connect("a1", 16000)
	spec := testSpec(&model.ServiceJob{Max: 10, Desired: desired, UnhealthyReplaceAfterSeconds: 3600, TargetGroups: []model.TargetGroup{{ARN: tgA, Port: 8080}}}, 100)
	spec.Task.HealthCheck = &task.HealthCheck{Kind: task.HealthTCP, Port: 8080, Interval: time.Second, Timeout: time.Second, HealthyThreshold: 1, UnhealthyThreshold: 1}
	h := &lbHarness{testScheduler: ts, lb: f, sess: sess, job: ts.submit(spec)}
	return h
}

// status reports one task's state, IP and health from the agent.
func (h *lbHarness) status(id string, st task.State, ip string, health task.HealthStatus) {
	var hp *task.Health
	if health != task.HealthNone {
		hp = &task.Health{Status: health, Since: time.Now()}
	}
	h.Updates(h.sess, []model.TaskStatus{{TaskID: id, State: st, IP: ip, Health: hp}})
}

// pass runs one target pass and logs the kills it caused after the calls.
func (h *lbHarness) pass(full bool) []string {
	h.targetPass(h.ctx, h.clock(), full)
	for _, m := range drainKills(h.sess) {
		for _, id := range m.Kill {
			h.lb.record("kill " + id)
		}
	}
	return h.lb.takeLog()
}

func (h *lbHarness) targets(id string) []model.TargetRegistration {
	h.t.Helper()
	tk, err := h.Task(h.ctx, id)
	if err != nil {
		h.t.Fatal(err)
	}
	out := append([]model.TargetRegistration(nil), tk.Targets...)
	for i := range out {
		out[i].Registered, out[i].Deregistered = time.Time{}, time.Time{}
	}
	return out
}

func regs(state model.TargetState, errMsg string) []model.TargetRegistration {
	r := model.TargetRegistration{ARN: tgA, Port: 8080, State: state, Error: errMsg}
	if state == model.TargetRegistered {
		r.LBHealth = model.LBHealthy // the fake's groups report registered targets healthy
	}
	return []model.TargetRegistration{r}
}

// A task joins its target group only once Running and healthy, and leaves
// it when it turns unhealthy.
func TestTargetsRegisterWhenHealthy(t *testing.T) {
	h := newLBHarness(t, 1, Config{})
	id := h.place()[0]
	h.status(id, task.Starting, "198.18.0.10", task.HealthNone)
	if got := h.pass(true); len(got) != 0 {
		t.Fatalf("calls before Running: %v", got)
	}
	h.status(id, task.Running, "198.18.0.10", task.HealthStarting)
	if got := h.pass(false); len(got) != 0 {
		t.Fatalf("calls before healthy: %v", got)
	}
	if diff := cmp.Diff(regs(model.TargetPending, ""), h.targets(id)); diff != "" {
		t.Errorf("targets before healthy (-want +got):\n%s", diff)
	}
	h.status(id, task.Running, "198.18.0.10", task.HealthHealthy)
	if diff := cmp.Diff([]string{"register A 198.18.0.10:8080"}, h.pass(false)); diff != "" {
		t.Errorf("calls (-want +got):\n%s", diff)
	}
	if got := h.pass(false); len(got) != 0 {
		t.Errorf("registered twice: %v", got)
	}
	if diff := cmp.Diff(regs(model.TargetRegistered, ""), h.targets(id)); diff != "" {
		t.Errorf("targets (-want +got):\n%s", diff)
	}
	h.status(id, task.Running, "198.18.0.10", task.HealthUnhealthy)
	if diff := cmp.Diff([]string{"deregister A 198.18.0.10:8080"}, h.pass(false)); diff != "" {
		t.Errorf("unhealthy: calls (-want +got):\n%s", diff)
	}
}

// Every voluntary stop (a user's kill, a scale-in, a job kill) takes the
// task out of its groups, waits for the group to finish draining it, and
// only then kills it.
func TestTargetsDeregisterBeforeKill(t *testing.T) {
	for _, tc := range []struct {
		name string
		stop func(h *lbHarness, id string)
	}{
		{"kill task", func(h *lbHarness, id string) {
			if _, err := h.KillTask(id); err != nil {
				t.Fatal(err)
			}
		}},
		{"scale in", func(h *lbHarness, id string) {
			if _, err := h.ScaleJob(h.ctx, h.job, 0, 0, 10); err != nil {
				t.Fatal(err)
			}
		}},
		{"kill job", func(h *lbHarness, id string) {
			if _, err := h.KillJob(h.ctx, h.job); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newLBHarness(t, 1, Config{})
			h.lb.keepDraining, h.lb.delay = true, time.Minute
			id := h.place()[0]
			h.status(id, task.Running, "198.18.0.10", task.HealthHealthy)
			h.pass(true)
			tc.stop(h, id)
			if k := drainKills(h.sess); len(k) != 0 {
				t.Fatalf("killed before leaving the target group: %+v", k)
			}
			want := []string{"deregister A 198.18.0.10:8080"}
			if diff := cmp.Diff(want, h.pass(false)); diff != "" {
				t.Errorf("first pass (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(regs(model.TargetDraining, ""), h.targets(id)); diff != "" {
				t.Errorf("targets while draining (-want +got):\n%s", diff)
			}
			// Still draining: no kill. Drained: the kill.
			if got := h.pass(false); len(got) != 0 {
				t.Errorf("while draining: %v", got)
			}
			h.lb.mu.Lock()
			delete(h.lb.groups[tgA], Target{"198.18.0.10", 8080})
			h.lb.mu.Unlock()
			if diff := cmp.Diff([]string{"kill " + id}, h.pass(false)); diff != "" {
				t.Errorf("once drained (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(regs(model.TargetDeregistered, ""), h.targets(id)); diff != "" {
				t.Errorf("targets after (-want +got):\n%s", diff)
			}
		})
	}
}

// The wait is the group's deregistration delay, bounded by
// MaxDeregistrationWait; a deregistration that keeps failing holds the
// kill back no longer than that either.
func TestTargetsDrainBounded(t *testing.T) {
	h := newLBHarness(t, 1, Config{MaxDeregistrationWait: 30 * time.Second})
	h.lb.keepDraining, h.lb.delay = true, 300*time.Second
	h.now = time.Now()
	id := h.place()[0]
	h.status(id, task.Running, "198.18.0.10", task.HealthHealthy)
	h.pass(true)
	h.KillTask(id)
	h.pass(false)
	h.now = h.now.Add(29 * time.Second)
	if got := h.pass(false); len(got) != 0 {
		t.Fatalf("before the bound: %v", got)
	}
	h.now = h.now.Add(2 * time.Second)
	if diff := cmp.Diff([]string{"kill " + id}, h.pass(false)); diff != "" {
		t.Errorf("at the bound (-want +got):\n%s", diff)
	}

	h2 := newLBHarness(t, 1, Config{MaxDeregistrationWait: 30 * time.Second})
	h2.now = time.Now()
	id2 := h2.place()[0]
	h2.status(id2, task.Running, "198.18.0.20", task.HealthHealthy)
	h2.pass(true)
	h2.lb.failDeregister = errors.New("Throttling: rate exceeded")
	h2.KillTask(id2)
	h2.pass(false)
	if diff := cmp.Diff(regs(model.TargetRegistered, "Throttling: rate exceeded"), h2.targets(id2)); diff != "" {
		t.Errorf("failing deregistration shows (-want +got):\n%s", diff)
	}
	h2.now = h2.now.Add(31 * time.Second)
	got := h2.pass(false)
	if len(got) == 0 || got[len(got)-1] != "kill "+id2 {
		t.Errorf("after the bound with deregistration failing: %v, want the kill last", got)
	}
}

// A task that ends without a stop (lost, crashed) is deregistered; its
// IP reused by a task that should be registered is not.
func TestTargetsEndedTaskDeregistered(t *testing.T) {
	h := newLBHarness(t, 2, Config{})
	ids := h.place()
	h.status(ids[0], task.Running, "198.18.0.10", task.HealthHealthy)
	h.status(ids[1], task.Running, "198.18.0.11", task.HealthHealthy)
	h.pass(true)
	h.status(ids[0], task.Failed, "198.18.0.10", task.HealthNone)
	if diff := cmp.Diff([]string{"deregister A 198.18.0.10:8080"}, h.pass(false)); diff != "" {
		t.Errorf("calls (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"198.18.0.11:8080"}, h.lb.registered(tgA)); diff != "" {
		t.Errorf("group (-want +got):\n%s", diff)
	}
	if got := h.pass(false); len(got) != 0 {
		t.Errorf("deregistered twice: %v", got)
	}
}

// Reconciliation removes what no task accounts for (a leaked target of a
// task a previous leader ended) and registers what a group lost.
func TestTargetsReconcileDrift(t *testing.T) {
	h := newLBHarness(t, 1, Config{ManagedTargetGroups: []string{tgB}})
	id := h.place()[0]
	h.status(id, task.Running, "198.18.0.10", task.HealthHealthy)
	h.pass(true)
	h.lb.mu.Lock()
	delete(h.lb.groups[tgA], Target{"198.18.0.10", 8080})     // lost by the group
	h.lb.groups[tgA][Target{"198.18.0.99", 8080}] = "healthy" // leaked
	h.lb.groups[tgB][Target{"198.18.0.98", 80}] = "healthy"   // leaked in a group no job names now
	h.lb.mu.Unlock()
	if got := h.pass(false); len(got) != 0 {
		t.Errorf("without reconciliation: %v", got)
	}
	want := []string{"deregister B 198.18.0.98:80", "deregister A 198.18.0.99:8080", "register A 198.18.0.10:8080"}
	if diff := cmp.Diff(want, h.pass(true)); diff != "" {
		t.Errorf("reconcile (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"198.18.0.10:8080"}, h.lb.registered(tgA)); diff != "" {
		t.Errorf("group A (-want +got):\n%s", diff)
	}
}

// Jobs naming target groups are refused by a scheduler without a load
// balancer integration, and malformed groups always.
func TestTargetGroupsValidated(t *testing.T) {
	ts := newTestScheduler(t, Config{})
	spec := testSpec(&model.ServiceJob{Max: 1, Desired: 1, TargetGroups: []model.TargetGroup{{ARN: tgA, Port: 80}}}, 100)
	if _, err := ts.Submit(ts.ctx, spec); !errors.Is(err, model.ErrInvalidJob) {
		t.Errorf("without integration: %v", err)
	}
	for name, tgs := range map[string][]model.TargetGroup{
		"not an arn":  {{ARN: "web", Port: 80}},
		"no port":     {{ARN: tgA}},
		"big port":    {{ARN: tgA, Port: 70000}},
		"twice":       {{ARN: tgA, Port: 80}, {ARN: tgA, Port: 81}},
		"a role":      {{ARN: "arn:aws:iam::123456789012:role/x", Port: 80}},
		"six":         {{ARN: tgA, Port: 1}, {ARN: tgB, Port: 1}, {ARN: tgA + "0", Port: 1}, {ARN: tgA + "1", Port: 1}, {ARN: tgA + "2", Port: 1}, {ARN: tgA + "3", Port: 1}},
		"wildcard":    {{ARN: "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/*", Port: 80}},
		"newline arn": {{ARN: tgA + "\n", Port: 80}},
	} {
		s := testSpec(&model.ServiceJob{Max: 1, Desired: 1, TargetGroups: tgs}, 100)
		if _, err := ValidateJob(s); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// A new leader's records may be stale (health is not always persisted):
// until a task's agent reports it, the task's target is neither removed
// nor re-registered on the record's word, so a failover never empties a
// load balancer; a target an earlier term registered unseen is taken as
// registered.
func TestTargetsFailoverKeepsServingTargets(t *testing.T) {
	h := newLBHarness(t, 2, Config{})
	ids := h.place()
	h.status(ids[0], task.Running, "198.18.0.10", task.HealthHealthy)
	h.status(ids[1], task.Running, "198.18.0.11", task.HealthStarting)
	h.pass(true)
	// As a new term sees it: not heard from, health unknown; task 1 was
	// registered by the old leader after its record was written.
	h.mu.Lock()
	for _, id := range ids {
		tk := h.tasks[id]
		tk.lb.heard, tk.rec.Health = false, nil
	}
	h.mu.Unlock()
	h.lb.mu.Lock()
	h.lb.groups[tgA][Target{"198.18.0.11", 8080}] = "healthy"
	h.lb.mu.Unlock()
	if got := h.pass(true); len(got) != 0 {
		t.Fatalf("before the agents report: %v", got)
	}
	if diff := cmp.Diff(regs(model.TargetRegistered, ""), h.targets(ids[1])); diff != "" {
		t.Errorf("target found registered (-want +got):\n%s", diff)
	}
	h.status(ids[0], task.Running, "198.18.0.10", task.HealthHealthy)
	h.status(ids[1], task.Running, "198.18.0.11", task.HealthUnhealthy)
	if diff := cmp.Diff([]string{"deregister A 198.18.0.11:8080"}, h.pass(true)); diff != "" {
		t.Errorf("once reported (-want +got):\n%s", diff)
	}
}

// The attack: a broken or hostile agent reports, for a task of tenant B's
// job, the IP of tenant A's task (or the host's metadata address), so
// B's load balancer would send B's users to A's task. One IP is one live
// task's, and only a unicast IPv4 is ever a target.
func TestTargetsRefuseClaimedOrOddIPs(t *testing.T) {
	h := newLBHarness(t, 1, Config{})
	a := h.place()[0]
	h.status(a, task.Running, "198.18.0.10", task.HealthHealthy)
	h.pass(true)
	other := testSpec(&model.ServiceJob{Max: 10, Desired: 3, TargetGroups: []model.TargetGroup{{ARN: tgB, Port: 80}}}, 100)
	other.Application = "b"
	h.submit(other)
	bs := h.place()
	if len(bs) != 3 {
		t.Fatalf("placed %v", bs)
	}
	for i, ip := range []string{"198.18.0.10", "169.254.169.254", "127.0.0.1"} {
		h.status(bs[i], task.Running, ip, task.HealthNone)
	}
	if got := h.pass(true); len(got) != 0 {
		t.Errorf("calls for claimed or odd IPs: %v", got)
	}
	if got := h.lb.registered(tgB); len(got) != 0 {
		t.Errorf("group B holds %v", got)
	}
	if diff := cmp.Diff([]string{"198.18.0.10:8080"}, h.lb.registered(tgA)); diff != "" {
		t.Errorf("group A (-want +got):\n%s", diff)
	}
}

// After a failover the records may still show live a task the old leader
// saw end (its end was not flushed) while the agent gave its IP to the
// replacement: the replacement waits for the IP instead of being refused
// for good, and serves from it once the stale holder ends. Before, the
// group lost the target for as long as the replacement lived.
func TestTargetsClaimedIPServesOnceTheHolderEnds(t *testing.T) {
	h := newLBHarness(t, 2, Config{})
	ids := h.place()
	h.status(ids[0], task.Running, "198.18.0.10", task.HealthHealthy)
	h.pass(true)
	h.status(ids[1], task.Running, "198.18.0.10", task.HealthHealthy)
	if diff := cmp.Diff([]string{"198.18.0.10:8080"}, h.lb.registered(tgA)); diff != "" {
		t.Fatalf("group (-want +got):\n%s", diff)
	}
	if got := h.pass(true); len(got) != 0 {
		t.Errorf("calls while the IP is claimed: %v", got)
	}
	h.status(ids[0], task.Lost, "198.18.0.10", task.HealthNone)
	h.pass(true)
	if diff := cmp.Diff([]string{"198.18.0.10:8080"}, h.lb.registered(tgA)); diff != "" {
		t.Errorf("group once the holder ended (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(regs(model.TargetRegistered, ""), h.targets(ids[1])); diff != "" {
		t.Errorf("the replacement's targets (-want +got):\n%s", diff)
	}
}

// A group whose calls fail is called again only after a backoff.
func TestTargetsBackoffAfterFailure(t *testing.T) {
	m := metrics.NewScheduler(prometheus.NewRegistry())
	h := newLBHarness(t, 1, Config{Metrics: m})
	h.now = time.Now()
	id := h.place()[0]
	h.status(id, task.Running, "198.18.0.10", task.HealthHealthy)
	h.pass(true)
	h.lb.failDeregister = errors.New("Throttling: rate exceeded")
	h.status(id, task.Running, "198.18.0.10", task.HealthUnhealthy)
	if got := h.pass(false); len(got) != 1 {
		t.Fatalf("first try: %v", got)
	}
	if got := h.pass(false); len(got) != 0 {
		t.Errorf("retried at once: %v", got)
	}
	h.now = h.now.Add(2 * time.Second)
	h.lb.failDeregister = nil
	if diff := cmp.Diff([]string{"deregister A 198.18.0.10:8080"}, h.pass(false)); diff != "" {
		t.Errorf("after the backoff (-want +got):\n%s", diff)
	}
	calls := map[string]float64{}
	for _, op := range []string{"register", "deregister"} {
		for _, r := range []string{"ok", "error"} {
			calls[op+" "+r] = testutil.ToFloat64(m.TargetCalls.WithLabelValues(op, r))
		}
	}
	if diff := cmp.Diff(map[string]float64{"register ok": 1, "register error": 0, "deregister ok": 1, "deregister error": 1}, calls); diff != "" {
		t.Errorf("call metrics (-want +got):\n%s", diff)
	}
}

// A drain moves a task: its replacement elsewhere is registered first,
// then the old task leaves the group, then it is killed.
func TestTargetsDrainRegistersReplacementFirst(t *testing.T) {
	h := newLBHarness(t, 1, Config{})
	h.lb.keepDraining, h.lb.delay = true, time.Minute
	old := h.place()[0]
	h.status(old, task.Running, "198.18.0.10", task.HealthHealthy)
	h.pass(true)
	s2 := h.connect("a2", 16000)
	if _, err := h.Drain(model.AgentSelector{ID: "a1"}, true); err != nil {
		t.Fatal(err)
	}
	h.step()
	repl := h.place()
	if len(repl) != 1 {
		t.Fatalf("replacement placed: %v", repl)
	}
	h.Updates(s2, []model.TaskStatus{{TaskID: repl[0], State: task.Running, IP: "198.18.0.11", Health: &task.Health{Status: task.HealthHealthy, Since: time.Now()}}})
	h.step()
	if k := drainKills(h.sess); len(k) != 0 {
		t.Fatalf("old task killed before its replacement was registered: %+v", k)
	}
	var log []string
	for range 4 {
		log = append(log, h.pass(false)...)
		h.step()
		if len(log) == 2 {
			h.lb.mu.Lock()
			delete(h.lb.groups[tgA], Target{"198.18.0.10", 8080})
			h.lb.mu.Unlock()
		}
	}
	want := []string{"register A 198.18.0.11:8080", "deregister A 198.18.0.10:8080", "kill " + old}
	if diff := cmp.Diff(want, log); diff != "" {
		t.Errorf("drain (-want +got):\n%s", diff)
	}
}

// The target loop running on its own, against agents' reports, kills and
// the step loop at once (run with -race): every task that serves ends up
// registered, and once the job is killed the group is empty and every
// kill came after its task's deregistration.
func TestTargetLoopConcurrent(t *testing.T) {
	h := newLBHarness(t, 4, Config{TargetReconcileInterval: 50 * time.Millisecond})
	ctx, cancel := context.WithCancel(h.ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() { h.targetLoop(ctx) })
	defer wg.Wait()
	defer cancel()
	ids := h.place()
	for i, id := range ids {
		h.status(id, task.Running, fmt.Sprintf("198.18.0.%d", 10+i), task.HealthHealthy)
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 10s (group %v)", what, h.lb.registered(tgA))
			}
			h.step()
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitFor("all registered", func() bool { return len(h.lb.registered(tgA)) == 4 })
	if _, err := h.KillJob(h.ctx, h.job); err != nil {
		t.Fatal(err)
	}
	var kills []string
	waitFor("all killed", func() bool {
		for _, m := range drainKills(h.sess) {
			for _, id := range m.Kill {
				kills = append(kills, id)
				h.lb.record("kill " + id)
			}
		}
		return len(kills) == 4
	})
	h.lb.mu.Lock()
	log := slices.Clone(h.lb.log)
	h.lb.mu.Unlock()
	for i, id := range ids {
		ip := fmt.Sprintf("198.18.0.%d:8080", 10+i)
		dereg := slices.IndexFunc(log, func(l string) bool { return strings.HasPrefix(l, "deregister") && strings.Contains(l, ip) })
		kill := slices.Index(log, "kill "+id)
		if dereg < 0 || kill < dereg {
			t.Errorf("task %s: deregistered at %d, killed at %d in %v", id, dereg, kill, log)
		}
	}
	h.Updates(h.sess, func() []model.TaskStatus {
		var st []model.TaskStatus
		for _, id := range ids {
			st = append(st, model.TaskStatus{TaskID: id, State: task.Killed})
		}
		return st
	}())
	waitFor("group empty", func() bool { return len(h.lb.registered(tgA)) == 0 })
}

// TestTargetsAvailableOnlyWhenLBHealthy: a task Healthy on its agent and
// registered counts as available only once the load balancer's own health
// checks pass (DescribeTargetHealth); a rollout whose new task the load
// balancer keeps unhealthy rolls back at its deadline, naming the group
// and the load balancer's reason.
func TestTargetsAvailableOnlyWhenLBHealthy(t *testing.T) {
	h := newLBHarness(t, 1, Config{})
	id := h.place()[0]
	sick := TargetHealth{State: "unhealthy", Reason: "Target.ResponseCodeMismatch", Description: "Health checks failed with these codes: [502]"}
	h.lb.mu.Lock()
	h.lb.sick = map[Target]TargetHealth{{"198.18.0.10", 8080}: sick}
	h.lb.mu.Unlock()
	h.status(id, task.Running, "198.18.0.10", task.HealthHealthy)
	h.pass(false)
	want := regs(model.TargetRegistered, "")
	want[0].LBHealth, want[0].LBHealthReason = "unhealthy", "Target.ResponseCodeMismatch: Health checks failed with these codes: [502]"
	if diff := cmp.Diff(want, h.targets(id)); diff != "" {
		t.Fatalf("registered, the load balancer says unhealthy (-want +got):\n%s", diff)
	}
	isAvailable := func(id string) bool {
		h.mu.RLock()
		defer h.mu.RUnlock()
		return available(h.tasks[id])
	}
	if isAvailable(id) {
		t.Fatal("available while the load balancer reports it unhealthy")
	}
	h.lb.mu.Lock()
	h.lb.sick = nil
	h.lb.mu.Unlock()
	h.pass(false)
	if !isAvailable(id) {
		t.Fatalf("not available once healthy in the load balancer: %+v", h.targets(id))
	}

	// A rollout whose new task the load balancer keeps unhealthy.
	spec := h.testScheduler.job(h.job).Spec.Clone()
	tmpl := *spec.Task
	tmpl.Image = "registry.example/x:2"
	spec.Task = &tmpl
	spec.Service.Update = &model.UpdateStrategy{MaxSurge: "1", MaxUnavailable: "0", ProgressDeadlineSeconds: 60}
	t0 := time.Now()
	h.now = t0
	if _, err := h.UpdateJob(h.ctx, h.job, spec); err != nil {
		t.Fatal(err)
	}
	h.step()
	placed := h.place()
	if len(placed) != 1 {
		t.Fatalf("placed %v, want the surge task", placed)
	}
	h.lb.mu.Lock()
	h.lb.sick = map[Target]TargetHealth{{"198.18.0.11", 8080}: {State: "initial", Reason: "Elb.RegistrationInProgress", Description: "Target registration is in progress"}}
	h.lb.mu.Unlock()
	h.status(placed[0], task.Running, "198.18.0.11", task.HealthHealthy)
	h.pass(false)
	h.step()
	if j := h.testScheduler.job(h.job); j.Rollout.State != model.RolloutProgressing || j.Revision != 2 {
		t.Fatalf("the new task in initial: %+v, want still progressing", j.Rollout)
	}
	h.lb.mu.Lock()
	h.lb.sick = map[Target]TargetHealth{{"198.18.0.11", 8080}: sick}
	h.lb.mu.Unlock()
	h.pass(false)
	h.now = t0.Add(61 * time.Second)
	h.step()
	j := h.testScheduler.job(h.job)
	if j.Rollout.State != model.RolloutRolledBack || !strings.Contains(j.Rollout.Reason, "targetgroup/web/0123456789abcdef: unhealthy (Target.ResponseCodeMismatch: Health checks failed") {
		t.Fatalf("after the deadline: %+v", j.Rollout)
	}
}

// TestTargetsUpdateChangesGroups: an update that moves the job from group
// A to group B is a new revision: its task joins B, the old one leaves A
// before it is killed, and A is left empty; an undo moves it back.
func TestTargetsUpdateChangesGroups(t *testing.T) {
	h := newLBHarness(t, 1, Config{})
	old := h.place()[0]
	h.status(old, task.Running, "198.18.0.10", task.HealthHealthy)
	h.pass(false)
	spec := h.testScheduler.job(h.job).Spec.Clone()
	spec.Service.TargetGroups = []model.TargetGroup{{ARN: tgB, Port: 9090}}
	spec.Service.Update = &model.UpdateStrategy{MaxSurge: "1", MaxUnavailable: "0"}
	j, err := h.UpdateJob(h.ctx, h.job, spec)
	if err != nil {
		t.Fatal(err)
	}
	if j.Revision != 2 || !j.Rollout.PreviousTargetGroupsKnown || len(j.Rollout.PreviousTargetGroups) != 1 || j.Rollout.PreviousTargetGroups[0].ARN != tgA {
		t.Fatalf("an update of the target groups alone: revision %d rollout %+v, want revision 2 from group A", j.Revision, j.Rollout)
	}
	// move runs the rollout: the new task (at ip) Running and Healthy,
	// passes and steps until the old one is killed.
	move := func(ip string) (string, []string) {
		t.Helper()
		h.step()
		placed := h.place()
		if len(placed) != 1 {
			t.Fatalf("placed %v, want one replacement", placed)
		}
		h.status(placed[0], task.Running, ip, task.HealthHealthy)
		var log []string
		for range 5 {
			log = append(log, h.pass(false)...)
			h.step()
		}
		return placed[0], log
	}
	repl, log := move("198.18.0.11")
	if diff := cmp.Diff([]string{"register B 198.18.0.11:9090", "deregister A 198.18.0.10:8080", "kill " + old}, log); diff != "" {
		t.Errorf("the move to B (-want +got):\n%s", diff)
	}
	if a, b := h.lb.registered(tgA), h.lb.registered(tgB); len(a) != 0 || !slices.Equal(b, []string{"198.18.0.11:9090"}) {
		t.Errorf("after the rollout: A %v, B %v; want A empty, B the new task", a, b)
	}
	h.report("a1", h.sess, task.Killed, old)
	if _, err := h.RolloutJob(h.ctx, h.job, RolloutUndo); err != nil {
		t.Fatal(err)
	}
	if j := h.testScheduler.job(h.job); j.Revision != 1 || j.Spec.TargetGroups()[0].ARN != tgA {
		t.Fatalf("undo: revision %d groups %v", j.Revision, j.Spec.TargetGroups())
	}
	_, log = move("198.18.0.12")
	if diff := cmp.Diff([]string{"register A 198.18.0.12:8080", "deregister B 198.18.0.11:9090", "kill " + repl}, log); diff != "" {
		t.Errorf("the undo (-want +got):\n%s", diff)
	}
	if a, b := h.lb.registered(tgA), h.lb.registered(tgB); !slices.Equal(a, []string{"198.18.0.12:8080"}) || len(b) != 0 {
		t.Errorf("after the undo: A %v, B %v", a, b)
	}
}

// TestDrainSaysWhatItWaitsFor: `agent ls` of a drained host whose move is
// under way says what holds it: the replacement's placement, then its
// health check, then its target health in the load balancer; and for a
// second task of the same job, the budget and what uses it up.
func TestDrainSaysWhatItWaitsFor(t *testing.T) {
	h := newLBHarness(t, 2, Config{})
	placed := h.place()
	if len(placed) != 2 {
		t.Fatalf("placed %v", placed)
	}
	h.status(placed[0], task.Running, "198.18.0.10", task.HealthHealthy)
	h.status(placed[1], task.Running, "198.18.0.12", task.HealthHealthy)
	h.pass(true)
	why := func() string {
		t.Helper()
		for _, a := range h.Agents() {
			if a.ID == "a1" {
				return a.DrainBlocked
			}
		}
		t.Fatal("no agent a1")
		return ""
	}
	if _, err := h.Drain(model.AgentSelector{ID: "a1"}, true); err != nil {
		t.Fatal(err)
	}
	h.step()
	moving, other := placed[0], placed[1]
	budget := "blocked by budget of job " + h.job + ": 1/1 unavailable, waiting for "
	if got, want := why(), budget+"a replacement of task "+moving+" to be placed"; !strings.HasPrefix(got, want) {
		t.Errorf("no host to place on: %q, want %q…", got, want)
	}
	s2 := h.connect("a2", 16000)
	repl := h.place()
	if len(repl) != 1 {
		t.Fatalf("replacement placed: %v", repl)
	}
	h.Updates(s2, []model.TaskStatus{{TaskID: repl[0], State: task.Running, IP: "198.18.0.11", Health: &task.Health{Status: task.HealthStarting, Since: time.Now()}}})
	h.step()
	if got, want := why(), budget+"task "+repl[0]+" (replacing "+moving+") to serve: Running, Starting, targetgroup/web/0123456789abcdef: pending"; got != want {
		t.Errorf("replacement starting:\n got %q\nwant %q", got, want)
	}
	h.lb.mu.Lock()
	h.lb.sick = map[Target]TargetHealth{{"198.18.0.11", 8080}: {State: "initial", Reason: "Elb.RegistrationInProgress", Description: "Target registration is in progress"}}
	h.lb.mu.Unlock()
	h.Updates(s2, []model.TaskStatus{{TaskID: repl[0], State: task.Running, IP: "198.18.0.11", Health: &task.Health{Status: task.HealthHealthy, Since: time.Now()}}})
	h.pass(false)
	h.step()
	if got, want := why(), budget+"task "+repl[0]+" (replacing "+moving+") to serve: Running, Healthy, targetgroup/web/0123456789abcdef: initial (Elb.RegistrationInProgress: Target registration is in progress)"; got != want {
		t.Errorf("replacement registered, initial in the load balancer:\n got %q\nwant %q", got, want)
	}
	// Healthy there: the old task leaves its group and the next move starts.
	h.lb.mu.Lock()
	h.lb.sick = nil
	h.lb.mu.Unlock()
	h.pass(false)
	h.step()
	if got := why(); !strings.HasPrefix(got, budget+"a replacement of task "+other) && !strings.HasPrefix(got, "waiting for a replacement of task "+other) {
		t.Errorf("after the first move: %q, want the second move's wait", got)
	}
}

// TestTargetGroupsMustExist: a job naming a target group the load
// balancer API does not know, or one whose targets are not IPs, is
// refused at submit and at update with the field named; a group the
// scheduler cannot read is refused as Unavailable, saying why.
func TestTargetGroupsMustExist(t *testing.T) {
	h := newLBHarness(t, 1, Config{})
	missing := "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/nope/0123456789abcdef"
	h.lb.mu.Lock()
	h.lb.types = map[string]string{tgB: "instance"}
	h.lb.mu.Unlock()
	for name, tc := range map[string]struct {
		tgs   []model.TargetGroup
		field string
		rule  string
	}{
		"unknown":  {[]model.TargetGroup{{ARN: tgA, Port: 80}, {ARN: missing, Port: 80}}, "service.target_groups[1].arn", "no target group " + missing},
		"instance": {[]model.TargetGroup{{ARN: tgB, Port: 80}}, "service.target_groups[0].arn", `has target type "instance"`},
	} {
		spec := testSpec(&model.ServiceJob{Max: 1, Desired: 1, TargetGroups: tc.tgs}, 100)
		_, err := h.Submit(h.ctx, spec)
		var ve *ValidationError
		if !errors.As(err, &ve) || len(ve.Fields) != 1 || ve.Fields[0].Field != tc.field || !strings.Contains(ve.Fields[0].Rule, tc.rule) {
			t.Errorf("%s: submit: %v, want %s: …%s…", name, err, tc.field, tc.rule)
		}
		upd := h.testScheduler.job(h.job).Spec.Clone()
		upd.Service.TargetGroups = tc.tgs
		_, err = h.UpdateJob(h.ctx, h.job, upd)
		if !errors.As(err, &ve) || ve.Fields[0].Field != tc.field {
			t.Errorf("%s: update: %v, want %s", name, err, tc.field)
		}
	}
	if j := h.testScheduler.job(h.job); j.Revision != 1 {
		t.Errorf("a refused update made revision %d", j.Revision)
	}
	h.opts.LoadBalancers = deniedLB{h.lb}
	spec := testSpec(&model.ServiceJob{Max: 1, Desired: 1, TargetGroups: []model.TargetGroup{{ARN: tgA, Port: 80}}}, 100)
	if _, err := h.Submit(h.ctx, spec); !errdefs.IsUnavailable(err) || !strings.Contains(err.Error(), "AccessDenied") || !strings.Contains(err.Error(), "DescribeTargetGroups") {
		t.Errorf("unreadable group: %v, want Unavailable naming the API's error and the permission", err)
	}
}

// deniedLB is a load balancer API the scheduler may not read groups of.
type deniedLB struct{ *fakeLB }

func (deniedLB) TargetType(context.Context, string) (string, error) {
	return "", errors.New("AccessDenied: User is not authorized to perform: elasticloadbalancing:DescribeTargetGroups")
}
