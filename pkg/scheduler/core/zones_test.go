package core

import (
	"strings"
	"testing"
	"time"

	"github.com/titus-agent/titus-agent/pkg/scheduler/model"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// zoneAgent registers agent id in az with the ENI report u and returns its session.
func (ts *testScheduler) zoneAgent(id, az string, u *model.NetworkUsage) *Session {
	sess := newSession()
	ts.mu.Lock()
	defer ts.mu.Unlock()
	sess.agent = ts.register(model.Registration{InstanceID: id, AZ: az, Network: u,
		Capacity: model.Capacity{Resources: model.Resources{CPU: 8000, Mem: 65536}, ENIs: 4, IPsPerENI: 10}}, sess, time.Now())
	return sess
}

func subnetJob(n uint32, subnets ...string) model.JobSpec {
	s := testSpec(&model.BatchJob{Size: n, Retry: &model.RetryPolicy{Kind: model.RetryExponential, MaxRetries: 0, DelayMs: 60000}}, 100)
	s.Task.Network.SecurityGroupIDs = []string{"sg-1"}
	s.Task.Network.SubnetIDs = subnets
	return s
}

// onHosts counts the placed tasks per host.
func (ts *testScheduler) onHosts(ids []string) map[string]int {
	ts.mu.RLock()
	defer ts.mu.RUnlock()
	out := map[string]int{}
	for _, id := range ids {
		if t := ts.tasks[id]; t != nil {
			out[t.agent.id]++
		}
	}
	return out
}

// TestSubnetZoneFeasibility: a task takes its IP in the first of its
// subnets in its host's zone; a host none of whose zone holds any of them
// must refuse it. Placement leaves out the hosts whose own agent found the
// task's subnets outside its zone, and every host of a zone where an agent
// found so (a subnet's zone never changes), and says so when no host is left.
func TestSubnetZoneFeasibility(t *testing.T) {
	ts := newTestScheduler(t, Config{})
	report := func(in, out []string) *model.NetworkUsage {
		return &model.NetworkUsage{AttachableENIs: 4, DefaultSecurityGroups: "sg-d", DefaultSubnetID: "subnet-0d", ZoneSubnets: in, OtherZoneSubnets: out}
	}
	ts.zoneAgent("a1", "az-1", report(nil, []string{"subnet-0b"})) // found subnet-0b outside az-1
	ts.zoneAgent("a2", "az-1", report(nil, nil))                   // knows nothing, but is in az-1 too
	j := ts.submit(subnetJob(4, "subnet-0b"))
	if got := ts.place(); len(got) != 0 {
		t.Fatalf("placed %v on hosts of az-1, where subnet-0b is not", got)
	}
	r := ts.job(j).QueuedReason
	if want := "subnet zone: none of subnets [subnet-0b] is in the zone of 2 of the 2 hosts the job may use (az-1;"; !strings.HasPrefix(r, want) {
		t.Errorf("queued reason %q, want it to start %q", r, want)
	}
	// A task that may also use a subnet nobody looked up may go anywhere.
	both := ts.submit(subnetJob(2, "subnet-0b", "subnet-0f"))
	if got := ts.place(); len(got) != 2 {
		t.Fatalf("placed %v, want both tasks of %s (subnet-0f may be in az-1)", got, both)
	}
	// A host of subnet-0b's zone takes them.
	ts.zoneAgent("b1", "az-2", report(nil, nil))
	got := ts.place()
	if n := ts.onHosts(got); n["b1"] != 4 || len(n) != 1 {
		t.Fatalf("placed %v, want all 4 tasks of subnet-0b on b1 (az-2)", n)
	}
	if r := ts.job(j).QueuedReason; r != "" {
		t.Errorf("queued reason %q after placing", r)
	}
	// Tasks naming no subnet take the agent's default: any host.
	def := ts.submit(subnetJob(3))
	if got := ts.place(); len(got) != 3 {
		t.Fatalf("placed %v, want the 3 tasks of %s", got, def)
	}
}

// TestSubnetZoneLiesAreBounded: an agent whose report is wrong (broken or
// hostile) cannot keep a subnet's tasks off a host whose own agent found
// the subnet in its zone, nor off its zone once any agent of it did, and
// cannot draw other hosts' tasks by claiming a subnet: a claim counts for
// its own host alone.
func TestSubnetZoneLiesAreBounded(t *testing.T) {
	ts := newTestScheduler(t, Config{})
	report := func(in, out []string) *model.NetworkUsage {
		return &model.NetworkUsage{AttachableENIs: 4, DefaultSecurityGroups: "sg-d", DefaultSubnetID: "subnet-0d", ZoneSubnets: in, OtherZoneSubnets: out}
	}
	ts.zoneAgent("liar", "az-2", report(nil, []string{"subnet-0b"})) // subnet-0b is in az-2
	ts.zoneAgent("b1", "az-2", report([]string{"subnet-0b"}, nil))
	ts.zoneAgent("b2", "az-2", report(nil, nil))
	ts.zoneAgent("a1", "az-1", report(nil, nil))
	ts.zoneAgent("thief", "az-9", report([]string{"subnet-0a"}, nil)) // subnet-0a is in az-1
	ts.mu.RLock()
	z := &ts.zones
	var fits []string
	for _, id := range []string{"b1", "b2", "a1", "liar"} {
		if ts.agents[id].zoneFits([]string{"subnet-0b"}, z) {
			fits = append(fits, id)
		}
	}
	aFits := ts.agents["a1"].zoneFits([]string{"subnet-0a"}, z)
	ts.mu.RUnlock()
	if got := strings.Join(fits, ","); got != "b1,b2,a1" {
		t.Errorf("hosts fit for subnet-0b: %v; want b1 and b2 (an agent of az-2 found it there: the liar's word is void for the others) and a1 (nobody of az-1 looked); not the liar itself", got)
	}
	if !aFits {
		t.Errorf("a1 (az-1) unfit for subnet-0a: the thief's claim of it for az-9 must not count for other hosts")
	}
}

// TestSubnetNotInZoneRequeuesAtOnce: a host that had not yet found a
// task's subnets outside its zone refuses it (SubnetNotInZone). Nothing
// ran: the task is placed again at once on another host, counting no
// failure and no retry, and the refusing host earns no quarantine strike
// (else a tenant naming a subnet of one zone quarantines the hosts of the
// others). Its next heartbeat's report keeps the subnet's tasks off it.
func TestSubnetNotInZoneRequeuesAtOnce(t *testing.T) {
	ts := newTestScheduler(t, Config{})
	empty := &model.NetworkUsage{AttachableENIs: 4, DefaultSecurityGroups: "sg-d", DefaultSubnetID: "subnet-0d"}
	a := ts.zoneAgent("a", "az-1", empty)
	id := ts.submit(subnetJob(1, "subnet-0b"))
	got := ts.place()
	if len(got) != 1 {
		t.Fatalf("placed %v, want the task", got)
	}
	ts.Updates(a, []model.TaskStatus{{TaskID: got[0], State: task.Failed, Reason: string(task.ReasonSubnetNotInZone),
		Message: "network: invalid network request: no subnet in the host's zone: none of subnets [subnet-0b] is in az-1"}})
	if got := ts.place(); len(got) != 0 {
		t.Fatalf("placed %v on the host that just refused it, before its heartbeat", got)
	}
	// The agent looked the subnet up before refusing: its next report
	// has it out of az-1, and the task (due at once) is not sent there.
	ts.Heartbeat(a, true, nil, &model.NetworkUsage{AttachableENIs: 4, DefaultSecurityGroups: "sg-d", DefaultSubnetID: "subnet-0d", OtherZoneSubnets: []string{"subnet-0b"}})
	if got := ts.place(); len(got) != 0 {
		t.Fatalf("placed %v on a host that reported subnet-0b outside its zone", got)
	}
	j := ts.job(id)
	if j.State.Terminal() || j.Counts.Failed != 0 || j.Counts.Retries != 0 {
		t.Errorf("job %v counts %+v: a refusal for the subnets' zone is no failure", j.State, j.Counts)
	}
	ts.mu.RLock()
	strikes := len(ts.agents["a"].failures)
	ts.mu.RUnlock()
	if strikes != 0 {
		t.Errorf("host has %d quarantine strikes for refusing a task whose subnets are in another zone", strikes)
	}
	ts.zoneAgent("b", "az-2", empty)
	if n := ts.onHosts(ts.place()); n["b"] != 1 {
		t.Fatalf("placed %v, want the task on b (az-2)", n)
	}
}
