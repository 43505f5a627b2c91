package integration

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
)

// runningOf lists the job's running tasks on the agents, task → ip:8080.
func runningOf(job string, agents ...*agentEnv) map[string]string {
	out := map[string]string{}
	for _, a := range agents {
		l, err := a.client.ListTasks(a.ctx(), &agentv1.ListTasksRequest{})
		if err != nil {
			continue
		}
		for _, tk := range l.GetTasks() {
			if strings.HasPrefix(tk.GetSpec().GetId(), job+".") && tk.GetState() == stRunning {
				out[tk.GetSpec().GetId()] = tk.GetNetwork().GetIpv4() + ":8080"
			}
		}
	}
	return out
}

// TestSchedulerLoadBalancerAPIFailures: with a third of every ELBv2 call
// throttled (RequestLimitExceeded), the job's tasks still join their
// group (calls retried with backoff and jitter). While RegisterTargets
// is refused by IAM (AccessDenied), a replacement stays out of the group
// and `job get` says why; once allowed again, it joins.
func TestSchedulerLoadBalancerAPIFailures(t *testing.T) {
	begin(t)
	b := newLBBedProxied(t, true)
	// Every call a third of the time; the first registrations always (a
	// fraction alone can let the few calls before both tasks join all
	// through: seen in CI).
	b.proxy.Throttle("", 0.33)
	b.proxy.Throttle("RegisterTargets", 1)
	job := b.sched.submit(b.jobFile("1"))
	waitUntil(t, "a registration throttled", 60*time.Second, func() (bool, string) {
		n := b.proxy.Injected("RegisterTargets")
		return n > 0, fmt.Sprintf("%d RegisterTargets calls throttled", n)
	})
	b.proxy.Throttle("RegisterTargets", 0) // back to the third
	v1 := b.waitInSync("both tasks registered, throttled", job, 2)
	b.proxy.Deny("RegisterTargets", "AccessDenied")
	var victim string
	for id := range runningOf(job, b.agent) {
		victim = id
		break
	}
	if out, err := b.sched.cli("task", "kill", victim); err != nil {
		t.Fatalf("task kill: %v\n%s", err, out)
	}
	waitUntil(t, "job get shows the refusal", 60*time.Second, func() (bool, string) {
		out, _ := b.sched.cli("job", "get", job)
		return strings.Contains(out, "AccessDenied") && strings.Contains(out, "not authorized to perform: RegisterTargets"), out
	})
	if reg, _ := b.registered(); len(reg) != 1 {
		t.Errorf("group %v while registrations are refused, want the one task left", reg)
	}
	b.proxy.Deny("RegisterTargets", "")
	v2 := b.waitInSync("the replacement joins once allowed", job, 2)
	if slices.Equal(v1, v2) {
		t.Errorf("group %v: the replacement is not in it", v2)
	}
	t.Logf("%d of %d ELBv2 calls throttled", b.proxy.Injected(""), b.proxy.Seen(""))
	b.proxy.Throttle("", 0)
	if out, err := b.sched.cli("job", "kill", job); err != nil {
		t.Fatalf("job kill: %v\n%s", err, out)
	}
	waitUntil(t, "group empty, tasks gone", 60*time.Second, func() (bool, string) {
		reg, err := b.registered()
		return err == nil && len(reg) == 0 && len(running(b.agent)) == 0, fmt.Sprintf("group %v, err %v", reg, err)
	})
	b.agent.assertNoLeftovers()
}
