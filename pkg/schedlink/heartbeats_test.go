package schedlink

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
	"github.com/titus-agent/titus-agent/pkg/task"
)

func view(id string, st task.State, ip string) task.View {
	v := task.View{Spec: task.Spec{ID: id}}
	v.Status.State = st
	if ip != "" {
		v.Network = &task.NetworkAttachment{IPv4: ip}
	}
	return v
}

func ids(l []*schedv1.TaskStatus) []string {
	out := []string{}
	for _, s := range l {
		out = append(out, s.TaskId)
	}
	return out
}

// TestHeartbeatsListOnlyChanges: registration lists every task; with a
// scheduler that takes them, a heartbeat lists only the tasks whose status
// changed since the previous one (state, reason, exit code, IP, health),
// every task again when the scheduler asks and every fullEvery-th time,
// and forgets tasks the agent no longer has. A scheduler that does not
// take them gets every task every time.
func TestHeartbeatsListOnlyChanges(t *testing.T) {
	h := newHeartbeats()
	views := []task.View{view("a", task.Running, "198.18.0.10"), view("b", task.Accepted, ""), view("c", task.Finished, "")}
	if got := ids(h.all(views)); !cmp.Equal(got, []string{"a", "b", "c"}) {
		t.Fatalf("registration lists %v", got)
	}
	h.changesOnly = true
	step := func(what string, views []task.View, all bool, want []string, wantChanges bool) {
		t.Helper()
		got, changes := h.next(views, all)
		if diff := cmp.Diff(want, ids(got)); diff != "" || changes != wantChanges {
			t.Errorf("%s: listed (-want +got) %s, changes only %v (want %v)", what, diff, changes, wantChanges)
		}
	}
	step("nothing changed", views, false, []string{}, true)
	views[1] = view("b", task.Running, "198.18.0.11")
	step("b got its IP and runs", views, false, []string{"b"}, true)
	views[0].Status.Health = &task.Health{Status: task.HealthUnhealthy, Output: "503", Checked: time.Unix(1, 0)}
	step("a unhealthy", views, false, []string{"a"}, true)
	views[0].Status.Health = &task.Health{Status: task.HealthUnhealthy, Output: "503", Checked: time.Unix(2, 0)}
	step("a checked again, same result", views, false, []string{}, true)
	views = append(views[:2:2], view("d", task.Accepted, ""))
	step("c pruned by the agent, d new", views, false, []string{"d"}, true)
	if _, ok := h.sent["c"]; ok {
		t.Errorf("a task the agent no longer lists is still remembered")
	}
	step("the scheduler asks for every task", views, true, []string{"a", "b", "d"}, false)
	for h.count%fullEvery != fullEvery-1 {
		h.next(views, false)
	}
	step("every fullEvery-th heartbeat", views, false, []string{"a", "b", "d"}, false)

	old := newHeartbeats() // a scheduler that predates changes-only heartbeats
	old.all(views)
	if got, changes := old.next(views, false); len(got) != 3 || changes {
		t.Errorf("without the scheduler's consent: listed %v, changes only %v; want every task", ids(got), changes)
	}
}

// TestHeartbeatsQuietOnlyWhenNothingChanged: a heartbeat skips listing
// only with changes-only heartbeats, a Tasks version equal to the one read
// before the previous List, no request for every task, and not on a
// fullEvery-th heartbeat.
func TestHeartbeatsQuietOnlyWhenNothingChanged(t *testing.T) {
	h := newHeartbeats()
	h.changesOnly, h.ver, h.verKnown = true, 7, true
	if !h.quiet(7, true, false) {
		t.Errorf("same version: not quiet")
	}
	for _, tt := range []struct {
		name       string
		ver        uint64
		known, all bool
	}{{"changed", 8, true, false}, {"no version", 7, false, false}, {"all asked", 7, true, true}} {
		if h.quiet(tt.ver, tt.known, tt.all) {
			t.Errorf("%s: quiet", tt.name)
		}
	}
	h.count = fullEvery - 1
	if h.quiet(7, true, false) {
		t.Errorf("quiet on the fullEvery-th heartbeat")
	}
	h.changesOnly, h.count = false, 0
	if h.quiet(7, true, false) {
		t.Errorf("quiet for a scheduler that takes full lists only")
	}
}
