package core

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/titus-agent/titus-agent/pkg/scheduler/model"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// TestIPsCountedAgainstSGSets: a host whose ENIs are held by other SG sets
// is infeasible for a new set until the agent reports the IPs free: the
// agent holds an ended task's IP until its network is torn down and then
// cools it down, so the scheduler's own clock alone does not free it.
func TestIPsCountedAgainstSGSets(t *testing.T) {
	ts := newTestScheduler(t, Config{})
	sess := newSession()
	empty := &model.NetworkUsage{AttachableENIs: 2, DefaultSubnetID: "subnet-d", DefaultSecurityGroups: "sg-d"}
	ts.mu.Lock()
	sess.agent = ts.register(model.Registration{InstanceID: "a", AZ: "az-1", Network: empty,
		Capacity: model.Capacity{Resources: model.Resources{CPU: 8000, Mem: 65536}, ENIs: 2, IPsPerENI: 2, IPReuseCooldown: 20 * time.Millisecond}}, sess, time.Now())
	ts.mu.Unlock()
	withSG := func(sg string, n uint32) string {
		s := testSpec(&model.BatchJob{Size: n}, 100)
		s.Task.Network.SecurityGroupIDs = []string{sg}
		return ts.submit(s)
	}
	j1 := withSG("sg-1", 2)
	withSG("sg-2", 2)
	first := ts.place()
	if len(first) != 4 {
		t.Fatalf("placed %v, want the 4 tasks of sg-1 and sg-2 (one ENI each)", first)
	}
	j3 := withSG("sg-3", 1)
	if got := ts.place(); len(got) != 0 {
		t.Fatalf("placed %v on a host whose two ENIs are held by sg-1 and sg-2", got)
	}
	if r := ts.job(j3).QueuedReason; !strings.HasPrefix(r, "no free IP: 1 of the 1 hosts the job may use have room but no IP for security groups [sg-3]") {
		t.Errorf("queued reason %q", r)
	}
	var sg1, all []model.TaskStatus
	for i, id := range first {
		st := model.TaskStatus{TaskID: id, State: task.Running, IP: fmt.Sprintf("10.0.0.%d", 10+i)}
		if strings.HasPrefix(id, j1) {
			st.State = task.Finished
			sg1 = append(sg1, st)
		}
		all = append(all, st)
	}
	ts.Updates(sess, sg1)
	time.Sleep(50 * time.Millisecond) // past the scheduler's own cool-down
	// The agent's report, made after sg-1's tasks ended, still has their IPs
	// in use (the network is being torn down).
	ts.ReportNetwork(sess, &model.NetworkUsage{DefaultSubnetID: "subnet-d", SGSets: []model.SGSetENIs{
		{SecurityGroups: "sg-1", SubnetID: "subnet-d", ENIs: 1, UsedIPs: 2}, {SecurityGroups: "sg-2", SubnetID: "subnet-d", ENIs: 1, UsedIPs: 2}}}, all)
	if got := ts.place(); len(got) != 0 {
		t.Fatalf("placed %v while the agent still holds sg-1's IPs", got)
	}
	// Released and cooled down: sg-1's ENI is idle, sg-3 may have it.
	ts.ReportNetwork(sess, &model.NetworkUsage{AttachableENIs: 1, DefaultSubnetID: "subnet-d", SGSets: []model.SGSetENIs{
		{SecurityGroups: "sg-1", SubnetID: "subnet-d", FreeIPs: 2}, {SecurityGroups: "sg-2", SubnetID: "subnet-d", ENIs: 1, UsedIPs: 2}}}, all)
	if got := ts.place(); len(got) != 1 || !strings.HasPrefix(got[0], j3) {
		t.Fatalf("placed %v, want sg-3's task", got)
	}
}

// TestIPsCountedPerSubnetAndSGSet: the agent gives tasks of one security
// group set but another subnet ENIs of their own, and puts a task in the
// first of its subnets in the host's zone. Placement counts IPs the same
// way, so it never sends a task the agent must refuse for want of an ENI;
// where it cannot tell a task's subnet yet, it asks for a free ENI.
func TestIPsCountedPerSubnetAndSGSet(t *testing.T) {
	now := time.Unix(1000, 0)
	// One ENI of subnet-a for sg-1 with one of its two IPs taken, the
	// other ENI held by sg-2: the host's two task ENIs are held.
	report := func(zone, other []string) *model.NetworkUsage {
		return &model.NetworkUsage{DefaultSubnetID: "subnet-a", DefaultSecurityGroups: "sg-d", ZoneSubnets: zone, OtherZoneSubnets: other,
			SGSets: []model.SGSetENIs{
				{SecurityGroups: "sg-1", SubnetID: "subnet-a", ENIs: 1, UsedIPs: 1, FreeIPs: 1},
				{SecurityGroups: "sg-2", SubnetID: "subnet-a", ENIs: 1, UsedIPs: 2}}}
	}
	tests := []struct {
		name      string
		zone, oth []string
		key       string
		want      bool
	}{
		{"same groups, same subnet: the free IP", []string{"subnet-a"}, nil, "sg-1|subnet-a", true},
		{"groups in any order", []string{"subnet-a"}, nil, sgKey(&task.Spec{Network: task.NetworkRequest{SecurityGroupIDs: []string{"sg-1", "sg-1"}, SubnetIDs: []string{"subnet-a"}}}), true},
		{"the default subnet", []string{"subnet-a"}, nil, "sg-1|", true},
		{"same groups, another subnet of the zone: a new ENI", []string{"subnet-a", "subnet-b"}, nil, "sg-1|subnet-b", false},
		{"another subnet listed first, out of the zone", []string{"subnet-a"}, []string{"subnet-x"}, "sg-1|subnet-x,subnet-a", true},
		{"another subnet listed first, zone unknown", []string{"subnet-a"}, nil, "sg-1|subnet-y,subnet-a", false},
		{"another subnet listed first, in the zone", []string{"subnet-a", "subnet-b"}, nil, "sg-1|subnet-b,subnet-a", false},
		{"a new set", []string{"subnet-a"}, nil, "sg-3|subnet-a", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := testAgent("a", "az1", 8000, 0)
			a.enis, a.ipsPerENI = 2, 2
			a.setReport(report(tt.zone, tt.oth), nil)
			if got := a.ipFits(tt.key, now); got != tt.want {
				t.Errorf("ipFits(%q) = %v, want %v", tt.key, got, tt.want)
			}
			// With an ENI slot free, every one fits.
			a.enis = 3
			a.net.pools = map[string]pool{}
			if !a.ipFits(tt.key, now) {
				t.Errorf("ipFits(%q) with a free ENI slot = false", tt.key)
			}
		})
	}
	// Tasks placed on the stand-in pool count against the ENIs.
	a := testAgent("a", "az1", 8000, 0)
	a.enis, a.ipsPerENI = 3, 2
	a.setReport(report([]string{"subnet-a"}, nil), nil)
	a.sgSets["sg-1|subnet-y,subnet-a"] = 1
	a.net.unreported["sg-1|subnet-y,subnet-a"] = 1
	if a.ipFits("sg-4|subnet-a", now) {
		t.Errorf("a task of unknown subnet holds no ENI: the third ENI was given twice")
	}
}

// TestImpossibleConstraintsCostNothingPerRound: a job whose constraints no
// host meets is evaluated against the fleet once, not every round, until an
// agent registers (an attacker's pile of such jobs cannot slow placement).
func TestImpossibleConstraintsCostNothingPerRound(t *testing.T) {
	ts := newTestScheduler(t, Config{})
	ts.connect("a", 8000)
	s := testSpec(&model.BatchJob{Size: 1}, 100)
	s.Placement.Constraints = []string{"gpu.model =~ ^H1"}
	id := ts.submit(s)
	ts.place()
	ts.mu.Lock()
	j := ts.jobs[id]
	first := j.hosts
	ts.mu.Unlock()
	ts.place()
	ts.mu.Lock()
	same := j.hosts == first
	ts.mu.Unlock()
	if first == nil || !same {
		t.Fatalf("the job's hosts were recomputed in a round where no agent changed")
	}
	if r := ts.job(id).QueuedReason; r != "no host with gpu.model =~ ^H1: 1 of 1 hosts lack the attribute" {
		t.Errorf("queued reason %q", r)
	}
	ts.connect("b", 8000)
	ts.place()
	ts.mu.Lock()
	again := j.hosts != first
	ts.mu.Unlock()
	if !again {
		t.Fatalf("the job's hosts were not recomputed after an agent registered")
	}
}

// TestIPOfTaskNotYetAllocatedCounted: the agent lists a task it accepted
// before its network is set up (it has no IP yet), so the report's used
// IPs do not count it; an ended task's IP cools down on the agent from
// its network's teardown, after the scheduler's own cool-down (started at
// the final state) has run out. Counting the listed task as in the report
// freed its IP twice: the scheduler sent a third task to a host with two
// IPs, one cooling and one the listed task was about to take, and the
// agent refused it for lack of an IP (seen in the chaos soak).
func TestIPOfTaskNotYetAllocatedCounted(t *testing.T) {
	ts := newTestScheduler(t, Config{})
	sess := newSession()
	ts.mu.Lock()
	sess.agent = ts.register(model.Registration{InstanceID: "a", AZ: "az-1",
		Network:  &model.NetworkUsage{AttachableENIs: 1, DefaultSubnetID: "subnet-d", DefaultSecurityGroups: "sg-1"},
		Capacity: model.Capacity{Resources: model.Resources{CPU: 8000, Mem: 65536}, ENIs: 1, IPsPerENI: 2, IPReuseCooldown: 20 * time.Millisecond}}, sess, time.Now())
	ts.mu.Unlock()
	one := func() string {
		s := testSpec(&model.BatchJob{Size: 1}, 100)
		s.Task.Network.SecurityGroupIDs = []string{"sg-1"}
		return ts.submit(s)
	}
	one()
	a := ts.place()
	if len(a) != 1 {
		t.Fatalf("placed %v, want one task", a)
	}
	ts.Updates(sess, []model.TaskStatus{{TaskID: a[0], State: task.Running, IP: "10.0.0.5"}})
	ts.ReportNetwork(sess, &model.NetworkUsage{DefaultSubnetID: "subnet-d", DefaultSecurityGroups: "sg-1", SGSets: []model.SGSetENIs{
		{SecurityGroups: "sg-1", SubnetID: "subnet-d", Default: true, ENIs: 1, UsedIPs: 1, FreeIPs: 1}}},
		[]model.TaskStatus{{TaskID: a[0], State: task.Running, IP: "10.0.0.5"}})
	one()
	b := ts.place()
	if len(b) != 1 {
		t.Fatalf("placed %v, want the second task on the free IP", b)
	}
	// a ends; the scheduler's cool-down of its IP runs out before the
	// agent has even torn a's network down.
	ts.Updates(sess, []model.TaskStatus{{TaskID: a[0], State: task.Finished}})
	time.Sleep(50 * time.Millisecond)
	// The agent's heartbeat: a ended, its IP cooling; b accepted, its
	// network not set up yet (no IP), so the ENI's other IP is still free
	// in the report but b is about to take it.
	ts.ReportNetwork(sess, &model.NetworkUsage{DefaultSubnetID: "subnet-d", DefaultSecurityGroups: "sg-1", SGSets: []model.SGSetENIs{
		{SecurityGroups: "sg-1", SubnetID: "subnet-d", Default: true, CoolingIPs: 1, FreeIPs: 1}}},
		[]model.TaskStatus{{TaskID: a[0], State: task.Finished}, {TaskID: b[0], State: task.Starting}})
	c := one()
	if got := ts.place(); len(got) != 0 {
		t.Fatalf("placed %v on a host whose one ENI has one IP cooling and the other promised to %s", got, b[0])
	}
	// b has its IP, a's has cooled down: still no room (b holds one IP, and
	// the report lists it), until the agent reports the cooled IP free.
	ts.ReportNetwork(sess, &model.NetworkUsage{DefaultSubnetID: "subnet-d", DefaultSecurityGroups: "sg-1", SGSets: []model.SGSetENIs{
		{SecurityGroups: "sg-1", SubnetID: "subnet-d", Default: true, ENIs: 1, UsedIPs: 1, FreeIPs: 1}}},
		[]model.TaskStatus{{TaskID: b[0], State: task.Running, IP: "10.0.0.6"}})
	if got := ts.place(); len(got) != 1 || !strings.HasPrefix(got[0], c) {
		t.Fatalf("placed %v, want the third task once the agent has a free IP", got)
	}
}

// TestNoNetworkCapacityRequeuesAtOnce: a task an agent refused for lack
// of an IP or an ENI never ran; the scheduler places it again at once,
// counting neither a failure nor a retry (a batch job allowing none does
// not fail), and sends no task of that set to that host until its next
// heartbeat tells what it has.
func TestNoNetworkCapacityRequeuesAtOnce(t *testing.T) {
	ts := newTestScheduler(t, Config{})
	sess := ts.connect("a", 8000)
	s := testSpec(&model.BatchJob{Size: 1, Retry: &model.RetryPolicy{Kind: model.RetryExponential, MaxRetries: 0, DelayMs: 60000}}, 100)
	id := ts.submit(s)
	first := ts.place()
	if len(first) != 1 {
		t.Fatalf("placed %v, want one task", first)
	}
	ts.Updates(sess, []model.TaskStatus{{TaskID: first[0], State: task.Failed, Reason: string(task.ReasonNoNetworkCapacity),
		Message: "network: allocate address: no network capacity left on this host"}})
	if got := ts.place(); len(got) != 0 {
		t.Fatalf("placed %v on the host that just refused the set for lack of an IP", got)
	}
	ts.Heartbeat(sess, true, nil, nil)
	again := ts.place()
	if len(again) != 1 || again[0] == first[0] {
		t.Fatalf("placed %v after the heartbeat, want the task's next attempt at once (no backoff)", again)
	}
	j := ts.job(id)
	if j.State.Terminal() || j.Counts.Failed != 0 || j.Counts.Retries != 0 {
		t.Errorf("job %v counts %+v: a refusal for capacity is no failure", j.State, j.Counts)
	}
	// Any other network failure still counts: the batch job allows none.
	ts.Updates(sess, []model.TaskStatus{{TaskID: again[0], State: task.Failed, Reason: string(task.ReasonNetworkSetupFailed)}})
	if j := ts.job(id); j.Counts.Failed != 1 {
		t.Errorf("after NetworkSetupFailed counts %+v, want the job failed", j.Counts)
	}
}

// TestIPOfTaskEndedBetweenReportsCounted: a task placed after the agent's
// last network report, that took its IP and ended before the next one,
// still holds that IP on the agent (in use until its network is torn
// down, then cooling from there), but the report never counted it, and
// the scheduler's own cool-down (from the final state) can run out first.
// Forgetting it when it ended freed its IP twice: under heavy churn of
// short tasks the scheduler sent tasks the agent refused for lack of an
// IP (45 in the 30-minute chaos soak, seed 2712239178413657119).
func TestIPOfTaskEndedBetweenReportsCounted(t *testing.T) {
	ts := newTestScheduler(t, Config{})
	sess := newSession()
	usage := func(u model.SGSetENIs) *model.NetworkUsage {
		u.SecurityGroups, u.SubnetID, u.Default = "sg-1", "subnet-d", true
		return &model.NetworkUsage{DefaultSubnetID: "subnet-d", DefaultSecurityGroups: "sg-1", SGSets: []model.SGSetENIs{u}}
	}
	ts.mu.Lock()
	sess.agent = ts.register(model.Registration{InstanceID: "a", AZ: "az-1",
		Network:  usage(model.SGSetENIs{ENIs: 1, FreeIPs: 2}),
		Capacity: model.Capacity{Resources: model.Resources{CPU: 8000, Mem: 65536}, ENIs: 1, IPsPerENI: 2, IPReuseCooldown: 20 * time.Millisecond}}, sess, time.Now())
	ts.mu.Unlock()
	one := func() string {
		s := testSpec(&model.BatchJob{Size: 1}, 100)
		s.Task.Network.SecurityGroupIDs = []string{"sg-1"}
		return ts.submit(s)
	}
	one()
	a := ts.place()
	if len(a) != 1 {
		t.Fatalf("placed %v, want one task", a)
	}
	// a takes an IP, runs and ends, all before the agent's next report;
	// the scheduler's cool-down of a's IP runs out before the agent's.
	ts.Updates(sess, []model.TaskStatus{{TaskID: a[0], State: task.Running, IP: "10.0.0.5"}})
	ts.Updates(sess, []model.TaskStatus{{TaskID: a[0], State: task.Finished, IP: "10.0.0.5"}})
	time.Sleep(50 * time.Millisecond)
	b, c := one(), one()
	got := ts.place()
	if len(got) != 1 || !strings.HasPrefix(got[0], b) {
		t.Fatalf("placed %v, want only %s: one IP of two is still a's on the agent", got, b)
	}
	// The next report, listing a ended, tells: a's IP cooling, b's in use.
	// Once a's has cooled down on the agent, c goes.
	listed := []model.TaskStatus{{TaskID: a[0], State: task.Finished, IP: "10.0.0.5"}, {TaskID: got[0], State: task.Running, IP: "10.0.0.6"}}
	ts.ReportNetwork(sess, usage(model.SGSetENIs{ENIs: 1, UsedIPs: 1, CoolingIPs: 1}), listed)
	if again := ts.place(); len(again) != 0 {
		t.Fatalf("placed %v while the agent reports a's IP cooling", again)
	}
	ts.ReportNetwork(sess, usage(model.SGSetENIs{ENIs: 1, UsedIPs: 1, FreeIPs: 1}), listed)
	if last := ts.place(); len(last) != 1 || !strings.HasPrefix(last[0], c) {
		t.Fatalf("placed %v, want %s once the agent reports a free IP", last, c)
	}
}

// TestIPOfTaskEndedBeforeAStaleReportCounted: the agent makes a heartbeat
// (its task list, then its network report), a task takes an IP, runs and
// ends, and its final state reaches the scheduler before that heartbeat
// does (both go on one stream, in the order they are sent, not made). The
// report does not count the task's IP, which the agent still holds (in
// use until the task's network is torn down, then cooling), and the
// scheduler's own cool-down from the final state runs out first: taking
// the report as it came freed that IP twice and sent a task the agent
// refused for lack of an IP (once in the 30-minute chaos soak, seed
// 2782609677329571327, in the drain's burst of short tasks). A report is
// trusted for an ended task only once it lists the task with its IP or
// ended; one that never does stops counting after endedReports reports.
func TestIPOfTaskEndedBeforeAStaleReportCounted(t *testing.T) {
	ts := newTestScheduler(t, Config{})
	sess := newSession()
	usage := func(u model.SGSetENIs) *model.NetworkUsage {
		u.SecurityGroups, u.SubnetID, u.Default = "sg-1", "subnet-d", true
		return &model.NetworkUsage{DefaultSubnetID: "subnet-d", DefaultSecurityGroups: "sg-1", SGSets: []model.SGSetENIs{u}}
	}
	ts.mu.Lock()
	sess.agent = ts.register(model.Registration{InstanceID: "a", AZ: "az-1",
		Network:  usage(model.SGSetENIs{ENIs: 1, FreeIPs: 2}),
		Capacity: model.Capacity{Resources: model.Resources{CPU: 8000, Mem: 65536}, ENIs: 1, IPsPerENI: 2, IPReuseCooldown: 20 * time.Millisecond}}, sess, time.Now())
	ts.mu.Unlock()
	one := func() string {
		s := testSpec(&model.BatchJob{Size: 1}, 100)
		s.Task.Network.SecurityGroupIDs = []string{"sg-1"}
		return ts.submit(s)
	}
	one()
	a := ts.place()
	if len(a) != 1 {
		t.Fatalf("placed %v, want one task", a)
	}
	ts.Updates(sess, []model.TaskStatus{{TaskID: a[0], State: task.Running, IP: "10.0.0.5"}})
	ts.Updates(sess, []model.TaskStatus{{TaskID: a[0], State: task.Finished, IP: "10.0.0.5"}})
	time.Sleep(50 * time.Millisecond)
	// The heartbeat made before a took its IP: a accepted, no IP yet.
	stale := []model.TaskStatus{{TaskID: a[0], State: task.Accepted}}
	ts.ReportNetwork(sess, usage(model.SGSetENIs{FreeIPs: 2}), stale)
	b, c := one(), one()
	got := ts.place()
	if len(got) != 1 || !strings.HasPrefix(got[0], b) {
		t.Fatalf("placed %v after a report made before a took its IP, want only %s: one IP of two is still a's", got, b)
	}
	// A changes-only heartbeat that lists b running, not a: still not
	// trusted for a.
	ts.HeartbeatChanges(sess, true, []model.TaskStatus{{TaskID: got[0], State: task.Running, IP: "10.0.0.6"}},
		usage(model.SGSetENIs{ENIs: 1, UsedIPs: 1, FreeIPs: 1}))
	if again := ts.place(); len(again) != 0 {
		t.Fatalf("placed %v on a report that does not list a", again)
	}
	// One that lists a ended is: its IP has cooled down on the agent.
	ts.HeartbeatChanges(sess, true, []model.TaskStatus{{TaskID: a[0], State: task.Finished, IP: "10.0.0.5"}},
		usage(model.SGSetENIs{ENIs: 1, UsedIPs: 1, FreeIPs: 1}))
	if last := ts.place(); len(last) != 1 || !strings.HasPrefix(last[0], c) {
		t.Fatalf("placed %v, want %s once a report lists a ended", last, c)
	}
	// A task no report ever lists is forgotten after endedReports reports.
	d := one()
	ts.mu.Lock()
	var ct *taskState
	for _, tk := range sess.agent.tasks {
		if strings.HasPrefix(tk.rec.ID, c) {
			ct = tk
		}
	}
	ts.mu.Unlock()
	if ct == nil {
		t.Fatalf("task of %s not on the agent", c)
	}
	ts.Updates(sess, []model.TaskStatus{{TaskID: ct.rec.ID, State: task.Finished, IP: "10.0.0.5"}})
	time.Sleep(50 * time.Millisecond)
	for i := range endedReports {
		if p := ts.place(); len(p) != 0 {
			t.Fatalf("placed %v after %d reports without %s", p, i, ct.rec.ID)
		}
		ts.HeartbeatChanges(sess, true, nil, usage(model.SGSetENIs{ENIs: 1, UsedIPs: 1, FreeIPs: 1}))
	}
	if p := ts.place(); len(p) != 1 || !strings.HasPrefix(p[0], d) {
		t.Fatalf("placed %v, want %s: a task no report lists is forgotten after %d reports", p, d, endedReports)
	}
}

// TestIPsOvercountedPastAFullHostDoNotFit: the scheduler's count of a
// pool's IPs may be over the truth (a task listed before it took its IP,
// whose IP the report made just after already counts). Past the host's
// last address, rounding that count up to the ENIs it needs gave the pool
// an ENI the host cannot attach, and room on it: with every IP of a
// t3.medium's two task ENIs taken and one counted twice, the scheduler
// sent a task the agent refused for lack of an IP (once in the 30-minute
// chaos soak, seed 2782609677329571327, in the drain's burst).
func TestIPsOvercountedPastAFullHostDoNotFit(t *testing.T) {
	ts := newTestScheduler(t, Config{})
	sess := newSession()
	usage := func(used int) *model.NetworkUsage {
		return &model.NetworkUsage{DefaultSubnetID: "subnet-d", DefaultSecurityGroups: "sg-1",
			SGSets: []model.SGSetENIs{{SecurityGroups: "sg-1", SubnetID: "subnet-d", Default: true, ENIs: 2, UsedIPs: used, FreeIPs: 10 - used}}}
	}
	ts.mu.Lock()
	sess.agent = ts.register(model.Registration{InstanceID: "a", AZ: "az-1", Network: usage(9),
		Capacity: model.Capacity{Resources: model.Resources{CPU: 64000, Mem: 65536}, ENIs: 2, IPsPerENI: 5, IPReuseCooldown: time.Second}}, sess, time.Now())
	ts.mu.Unlock()
	one := func() string {
		s := testSpec(&model.BatchJob{Size: 1}, 100)
		s.Task.Network.SecurityGroupIDs = []string{"sg-1"}
		return ts.submit(s)
	}
	one()
	x := ts.place()
	if len(x) != 1 {
		t.Fatalf("placed %v, want the task for the host's last IP", x)
	}
	// The agent lists x before it has its IP, then reports every IP taken,
	// x's too: 10 + 1 counted, 10 true.
	ts.Heartbeat(sess, true, []model.TaskStatus{{TaskID: x[0], State: task.Accepted}}, usage(10))
	one()
	if got := ts.place(); len(got) != 0 {
		t.Fatalf("placed %v on a host whose every IP is taken", got)
	}
}

// TestIPsOvercountedPastOtherPoolsENIsDoNotFit: as above, on a host whose
// last ENI slot another security-group set's pool holds: an overcount of
// the full pool must not round up to an ENI the host has no slot for.
func TestIPsOvercountedPastOtherPoolsENIsDoNotFit(t *testing.T) {
	ts := newTestScheduler(t, Config{})
	sess := newSession()
	usage := func(used int) *model.NetworkUsage {
		return &model.NetworkUsage{DefaultSubnetID: "subnet-d", DefaultSecurityGroups: "sg-1",
			SGSets: []model.SGSetENIs{
				{SecurityGroups: "sg-1", SubnetID: "subnet-d", Default: true, ENIs: 2, UsedIPs: used, FreeIPs: 10 - used},
				{SecurityGroups: "sg-2", SubnetID: "subnet-d", ENIs: 1, UsedIPs: 5},
			}}
	}
	ts.mu.Lock()
	sess.agent = ts.register(model.Registration{InstanceID: "a", AZ: "az-1", Network: usage(9),
		Capacity: model.Capacity{Resources: model.Resources{CPU: 64000, Mem: 65536}, ENIs: 3, IPsPerENI: 5, IPReuseCooldown: time.Second}}, sess, time.Now())
	ts.mu.Unlock()
	one := func() string {
		s := testSpec(&model.BatchJob{Size: 1}, 100)
		s.Task.Network.SecurityGroupIDs = []string{"sg-1"}
		return ts.submit(s)
	}
	one()
	x := ts.place()
	if len(x) != 1 {
		t.Fatalf("placed %v, want the task for the pool's last IP", x)
	}
	ts.Heartbeat(sess, true, []model.TaskStatus{{TaskID: x[0], State: task.Accepted}}, usage(10))
	one()
	if got := ts.place(); len(got) != 0 {
		t.Fatalf("placed %v on a host whose pool is full and whose last ENI slot another pool holds", got)
	}
}
