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
// without a reason is named), attributes a platform loss to the fault
// before it, and every objective missed is listed; a clean run misses
// none.
func TestReportCountsAndObjectives(t *testing.T) {
	start := time.Date(2026, 12, 3, 6, 0, 0, 0, time.UTC)
	ts := func(d time.Duration) *timestamppb.Timestamp { return timestamppb.New(start.Add(d)) }
	l := &load{jobs: map[string]*jobInfo{"b": {id: "b", kind: "short"}, "s": {id: "s", kind: "service"}}}
	for _, ok := range []bool{true, true, true, false} {
		l.api = append(l.api, apiCall{op: "job submit", ok: ok, err: map[bool]string{false: "Unavailable: x"}[ok]})
	}
	o := newObserver(nil, l)
	for _, tk := range []*schedv1.Task{
		{Id: "b.0.1", JobId: "b", Index: 0, State: agentv1.TaskState_TASK_STATE_FINISHED, Placed: ts(0), Started: ts(time.Second), Ended: ts(5 * time.Second)},
		{Id: "b.0.2", JobId: "b", Index: 0, State: agentv1.TaskState_TASK_STATE_FINISHED, Placed: ts(0), Started: ts(2 * time.Second), Ended: ts(6 * time.Second)},
		{Id: "b.1.1", JobId: "b", Index: 1, State: agentv1.TaskState_TASK_STATE_FAILED, Reason: "NonZeroExit", Placed: ts(0), Started: ts(time.Second), Ended: ts(3 * time.Second)},
		{Id: "s.0.1", JobId: "s", State: agentv1.TaskState_TASK_STATE_LOST, Reason: "AgentLost", Placed: ts(0), Started: ts(time.Second), Ended: ts(25 * time.Second)},
		{Id: "s.1.1", JobId: "s", Index: 1, State: agentv1.TaskState_TASK_STATE_LOST, Placed: ts(0), Ended: ts(30 * time.Second)},
	} {
		o.tasks[tk.Id] = tk
	}
	o.seenOn["s.0.1"] = map[string]bool{"i-1": true, "i-2": true}
	r := &report{start: start, faults: []fault{{kind: "partition", injected: 20 * time.Second, healed: 30 * time.Second}}}
	build(o, l, r)
	if r.launched != 4 || r.ended != 5 || r.platformTasks != 1 || r.apiOK != 3 || r.apiTotal != 4 {
		t.Errorf("launched %d ended %d platform %d api %d/%d; want 4 5 1 3/4", r.launched, r.ended, r.platformTasks, r.apiOK, r.apiTotal)
	}
	if diff := cmp.Diff(map[string]int{"TASK_STATE_LOST AgentLost (after partition +20s)": 1}, r.platform); diff != "" {
		t.Errorf("platform reasons (-want +got):\n%s", diff)
	}
	wantTwice := []string{"batch slot b.0 completed 2 times", "s.0.1 on 2 hosts"}
	if diff := cmp.Diff(wantTwice, r.twice); diff != "" {
		t.Errorf("launched twice (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"s.1.1 TASK_STATE_LOST"}, r.lostNoReason); diff != "" {
		t.Errorf("lost without a reason (-want +got):\n%s", diff)
	}
	r.leaks = map[string][]string{"netns": {"i-1/t1"}, "mounts": nil}
	r.check(objectives{launchP99: 500 * time.Millisecond, platformShare: 0.1, availability: 0.99})
	for _, want := range []string{"launch latency p99 2s > 500ms", "platform-failed share 20.0% > 10.0%", "API availability 75.00% < 99.00%",
		"tasks launched twice: 2", "without a reason: 1", "leaked netns: 1"} {
		if !strings.Contains(strings.Join(r.missed, "\n"), want) {
			t.Errorf("missed objectives %q lack %q", r.missed, want)
		}
	}
	if len(r.missed) != 6 {
		t.Errorf("%d objectives missed, want 6: %q", len(r.missed), r.missed)
	}

	clean := &report{launched: 3, ended: 3, latencies: []time.Duration{time.Second}, apiOK: 2, apiTotal: 2, leaks: map[string][]string{"netns": nil}}
	clean.check(objectives{launchP99: 30 * time.Second, platformShare: 0.25, availability: 0.99})
	if len(clean.missed) != 0 {
		t.Errorf("a clean run missed %q", clean.missed)
	}
}
