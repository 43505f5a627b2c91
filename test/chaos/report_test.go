package chaos

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
)

// TestReportCountsAndObjectives: the report counts from the observed
// records (a user's failure is not the platform's, a task run by two
// agents or a batch slot completed twice is launched twice, a Lost task
// without a reason is named); it holds the launch latency under faults to
// the fault-free baseline's, charges each platform failure to the fault
// on its host (or of the whole fleet) before it, against the tasks that
// fault exposed, accepts a partition past the agent TTL losing its host's
// tasks, leaves CLI calls during a leader election out of the
// availability, and lists every objective missed; a clean run misses none.
func TestReportCountsAndObjectives(t *testing.T) {
	t0 := time.Date(2026, 12, 3, 6, 0, 0, 0, time.UTC)
	ts := func(d time.Duration) *timestamppb.Timestamp { return timestamppb.New(t0.Add(d)) }
	s := time.Second
	l := &load{jobs: map[string]*jobInfo{"b": {id: "b", kind: "short"}, "s": {id: "s", kind: "service"}}}
	for _, c := range []struct {
		ok       bool
		from, to time.Duration
	}{{true, 1 * s, 2 * s}, {true, 3 * s, 4 * s}, {true, 5 * s, 6 * s}, {false, 10 * s, 11 * s}, {false, 59 * s, 62 * s}} {
		l.api = append(l.api, apiCall{op: "job submit", ok: c.ok, err: map[bool]string{false: "Unavailable: x"}[c.ok], start: t0.Add(c.from), at: t0.Add(c.to)})
	}
	o := newObserver(nil, l)
	o.elections = []window{{t0.Add(60 * s), t0.Add(65 * s)}}
	for _, tk := range []*schedv1.Task{
		{Id: "b.0.1", JobId: "b", Index: 0, AgentId: "i-1", State: agentv1.TaskState_TASK_STATE_FINISHED, Placed: ts(0), Started: ts(1 * s), Ended: ts(5 * s)},
		{Id: "b.0.2", JobId: "b", Index: 0, AgentId: "i-2", State: agentv1.TaskState_TASK_STATE_FINISHED, Placed: ts(40 * s), Started: ts(42 * s), Ended: ts(46 * s)},
		{Id: "b.1.1", JobId: "b", Index: 1, AgentId: "i-1", State: agentv1.TaskState_TASK_STATE_FAILED, Reason: "NonZeroExit", Placed: ts(40 * s), Started: ts(41 * s), Ended: ts(43 * s)},
		{Id: "b.2.1", JobId: "b", Index: 2, AgentId: "i-1", State: agentv1.TaskState_TASK_STATE_LOST, Reason: "AgentLost", Placed: ts(20 * s), Started: ts(21 * s), Ended: ts(40 * s)},
		{Id: "s.0.1", JobId: "s", AgentId: "i-1", State: agentv1.TaskState_TASK_STATE_LOST, Reason: "AgentLost", Placed: ts(35 * s), Started: ts(36 * s), Ended: ts(55 * s)},
		{Id: "s.1.1", JobId: "s", Index: 1, State: agentv1.TaskState_TASK_STATE_LOST, Placed: ts(35 * s), Ended: ts(60 * s)},
		{Id: "s.2.1", JobId: "s", Index: 2, AgentId: "i-2", State: agentv1.TaskState_TASK_STATE_FAILED, Reason: "NetworkSetupFailed", Placed: ts(35 * s), Started: ts(36 * s), Ended: ts(56 * s)},
		{Id: "s.3.1", JobId: "s", Index: 3, AgentId: "i-2", State: agentv1.TaskState_TASK_STATE_FAILED, Reason: "PlatformError", Placed: ts(10 * s), Started: ts(11 * s), Ended: ts(20 * s)},
	} {
		o.tasks[tk.Id] = tk
	}
	o.seenOn["s.0.1"] = map[string]bool{"i-1": true, "i-2": true}
	r := &report{baselineStart: t0, start: t0.Add(30 * s), faults: []fault{
		{kind: "agent-kill", host: "i-1", injected: 0, healed: 5 * s},
		{kind: "partition", host: "i-1", hold: agentTTL + 4*s, injected: 20 * s, healed: 34 * s},
		{kind: "leader-kill", injected: 21 * s, healed: 26 * s}, // later, but of the fleet: the partition explains s.0.1
	}}
	r.faults[0].injected = time.Millisecond // injected at once
	build(o, l, r)
	if r.launched != 7 || r.ended != 8 || r.platformTasks != 4 || r.apiOK != 3 || r.apiTotal != 4 || r.elTotal != 1 {
		t.Errorf("launched %d ended %d platform %d api %d/%d (elections %d); want 7 8 4 3/4 (1)", r.launched, r.ended, r.platformTasks, r.apiOK, r.apiTotal, r.elTotal)
	}
	if len(r.base) != 3 || len(r.latencies) != 4 {
		t.Errorf("latencies: %d in the baseline, %d under faults; want 3 and 4", len(r.base), len(r.latencies))
	}
	if diff := cmp.Diff(map[string]int{
		"TASK_STATE_LOST AgentLost (after agent-kill +0s)":              1,
		"TASK_STATE_LOST AgentLost (after partition +20s)":              1,
		"TASK_STATE_FAILED NetworkSetupFailed (after leader-kill +21s)": 1,
		"TASK_STATE_FAILED PlatformError (no fault)":                    1,
	}, r.platform); diff != "" {
		t.Errorf("platform reasons (-want +got):\n%s", diff)
	}
	type cost struct {
		Kind                      string
		Exposed, Failed, ByDesign int
	}
	var costs []cost
	for _, c := range r.costs {
		costs = append(costs, cost{c.kind, c.exposed, c.failed, c.byDesign})
	}
	if diff := cmp.Diff([]cost{{"agent-kill", 2, 1, 0}, {"partition", 1, 1, 1}, {"leader-kill", 3, 1, 0}}, costs); diff != "" {
		t.Errorf("per fault (-want +got):\n%s", diff)
	}
	if r.unexplained != 1 {
		t.Errorf("%d platform failures no fault explains, want 1", r.unexplained)
	}
	wantTwice := []string{"batch slot b.0 completed 2 times", "s.0.1 on 2 hosts"}
	if diff := cmp.Diff(wantTwice, r.twice); diff != "" {
		t.Errorf("launched twice (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"s.1.1 TASK_STATE_LOST"}, r.lostNoReason); diff != "" {
		t.Errorf("lost without a reason (-want +got):\n%s", diff)
	}
	r.leaks = map[string][]string{"netns": {"i-1/t1"}, "mounts": nil}
	r.check(objectives{launchMultiple: 1.5, platformShare: 0.1, availability: 0.99})
	for _, want := range []string{"launch latency p99 under faults 2s > 1.5 × the fault-free p99 1s",
		"agent-kill +0s: 1 of 2 exposed tasks failed by the platform (50.0%) > 10.0%",
		"leader-kill +21s: 1 of 3 exposed tasks failed by the platform (33.3%) > 10.0%",
		"no fault to explain it: 1 of 8 ended (12.5%) > 10.0%", "API availability outside leader elections 75.00% < 99.00%",
		"tasks launched twice: 2", "without a reason: 1", "leaked netns: 1"} {
		if !strings.Contains(strings.Join(r.missed, "\n"), want) {
			t.Errorf("missed objectives %q lack %q", r.missed, want)
		}
	}
	if len(r.missed) != 8 {
		t.Errorf("%d objectives missed, want 8: %q", len(r.missed), r.missed)
	}
	var out strings.Builder
	r.print(&out)
	if !strings.Contains(out.String(), "i-1                  0 of 1 (0.0%) + 1 lost with the host by design") {
		t.Errorf("the report does not show the partition's loss by design:\n%s", out.String())
	}

	clean := &report{launched: 3, ended: 3, base: []time.Duration{time.Second}, latencies: []time.Duration{5 * time.Second},
		costs: []faultCost{{fault: fault{kind: "leader-kill"}, exposed: 20}}, apiOK: 2, apiTotal: 2, leaks: map[string][]string{"netns": nil}}
	clean.check(objectives{launchMultiple: 10, platformShare: 0.1, availability: 0.99})
	if len(clean.missed) != 0 {
		t.Errorf("a clean run missed %q", clean.missed)
	}
	noBase := &report{launched: 1, latencies: []time.Duration{time.Second}}
	noBase.check(objectives{launchMultiple: 10, platformShare: 0.1, availability: 0.99})
	if diff := cmp.Diff([]string{"no launch in the fault-free baseline to compare the launch latency with"}, noBase.missed); diff != "" {
		t.Errorf("a run without a baseline (-want +got):\n%s", diff)
	}
}

// TestReportCapacityRefusalIsNoCrash: a task an agent refused for lack of
// an IP or an ENI never ran and is placed again at once, so it is no
// platform failure charged to a fault; but placement must never send one
// (issue #14), so the report names it and misses an objective of its own.
func TestReportCapacityRefusalIsNoCrash(t *testing.T) {
	t0 := time.Date(2026, 12, 3, 6, 0, 0, 0, time.UTC)
	ts := func(d time.Duration) *timestamppb.Timestamp { return timestamppb.New(t0.Add(d)) }
	l := &load{jobs: map[string]*jobInfo{"b": {id: "b", kind: "short"}}}
	o := newObserver(nil, l)
	o.tasks["b.0.1"] = &schedv1.Task{Id: "b.0.1", JobId: "b", AgentId: "i-1", State: agentv1.TaskState_TASK_STATE_FAILED,
		Reason: "NoNetworkCapacity", Message: "network: allocate address: no network capacity left on this host",
		Placed: ts(40 * time.Second), Ended: ts(41 * time.Second)}
	r := &report{baselineStart: t0, start: t0.Add(30 * time.Second), faults: []fault{{kind: "ec2-throttle", injected: 9 * time.Second, healed: 12 * time.Second}}}
	build(o, l, r)
	if r.platformTasks != 0 || r.unexplained != 0 || len(r.platform) != 0 {
		t.Errorf("a capacity refusal counted as a platform failure: %d (%d unexplained) %v", r.platformTasks, r.unexplained, r.platform)
	}
	want := []string{"b.0.1 on i-1 ended +11s: network: allocate address: no network capacity left on this host"}
	if diff := cmp.Diff(want, r.refusedNoIP); diff != "" {
		t.Errorf("refusals (-want +got):\n%s", diff)
	}
	r.check(objectives{launchMultiple: 10, platformShare: 0.1, availability: 0.99})
	if !strings.Contains(strings.Join(r.missed, "\n"), "tasks placed where the agent had no IP or ENI for them: 1") {
		t.Errorf("missed %q lacks the refusal", r.missed)
	}
}

// TestReportDiskFullRefusalIsNoCrash: a task whose host's disk filled
// while preparing it (HostDiskFull) never ran and was placed again
// elsewhere: listed with the fault it follows, not a platform failure,
// no objective missed.
func TestReportDiskFullRefusalIsNoCrash(t *testing.T) {
	t0 := time.Date(2026, 12, 3, 6, 0, 0, 0, time.UTC)
	ts := func(d time.Duration) *timestamppb.Timestamp { return timestamppb.New(t0.Add(d)) }
	l := &load{jobs: map[string]*jobInfo{"b": {id: "b", kind: "short"}}}
	o := newObserver(nil, l)
	o.tasks["b.0.1"] = &schedv1.Task{Id: "b.0.1", JobId: "b", AgentId: "i-1", State: agentv1.TaskState_TASK_STATE_FAILED,
		Reason: "HostDiskFull", Message: "network: allocate address: write allocation record: no space left on device",
		Placed: ts(40 * time.Second), Ended: ts(41 * time.Second)}
	r := &report{baselineStart: t0, start: t0.Add(30 * time.Second), faults: []fault{{kind: "disk-full", host: "i-1", injected: 10 * time.Second, healed: 20 * time.Second}}}
	build(o, l, r)
	if r.platformTasks != 0 || r.unexplained != 0 || len(r.platform) != 0 {
		t.Errorf("a disk-full refusal counted as a platform failure: %d (%d unexplained) %v", r.platformTasks, r.unexplained, r.platform)
	}
	want := []string{"b.0.1 on i-1 ended +11s (after disk-full +10s): network: allocate address: write allocation record: no space left on device"}
	if diff := cmp.Diff(want, r.refusedDisk); diff != "" {
		t.Errorf("refusals (-want +got):\n%s", diff)
	}
	r.check(objectives{launchMultiple: 10, platformShare: 0.1, availability: 0.99})
	for _, m := range r.missed {
		if strings.Contains(m, "disk-full") || strings.Contains(m, "platform") {
			t.Errorf("missed %q for a refusal", m)
		}
	}
}
