package core

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/titus-agent/titus-agent/pkg/scheduler/constraint"
	"github.com/titus-agent/titus-agent/pkg/scheduler/model"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// connectTier registers (or re-registers) agent id in az-1 with label
// tier=tier and cpu millicores, as a reconnecting agent would (its
// attributes may have changed), reporting tasks as running.
func (ts *testScheduler) connectTier(id, tier string, cpu int64, tasks ...string) *Session {
	ts.t.Helper()
	sess := newSession()
	var st []model.TaskStatus
	for _, t := range tasks {
		st = append(st, model.TaskStatus{TaskID: t, State: task.Running})
	}
	ts.mu.Lock()
	sess.agent = ts.register(model.Registration{InstanceID: id, AZ: "az-1", Labels: map[string]string{"tier": tier},
		Capacity: model.Capacity{Resources: model.Resources{CPU: cpu, Mem: 65536}}, Tasks: st}, sess, time.Now())
	ts.mu.Unlock()
	return sess
}

// placedOn runs a placement round and returns, per task placed, its
// job's submit name and the agent it went to, in task id order.
func (ts *testScheduler) placedOn(names map[string]string) []string {
	ts.t.Helper()
	var out []string
	for _, id := range ts.place() {
		job, _, _ := strings.Cut(id, ".")
		ts.mu.RLock()
		out = append(out, names[job]+"@"+ts.tasks[id].agent.id)
		ts.mu.RUnlock()
	}
	return out
}

// The host lists placement keeps between rounds (per fleet generation,
// shared by jobs with the same constraints) and drops within a round
// (hosts found full) must follow the fleet: attributes changed on
// re-registration, agents lost, drained or freed.
func TestPlacementHostListsFollowTheFleet(t *testing.T) {
	gold := constraint.Spec{Constraints: []string{"label.tier = gold"}}
	prefer := constraint.Spec{Preferences: []constraint.PreferenceSpec{{Constraint: "label.tier = gold", Weight: 10}}}
	for _, tt := range []struct {
		name string
		pl   constraint.Spec
		// event happens between the rounds; ids are the first round's tasks.
		event func(ts *testScheduler, sess map[string]*Session, ids []string)
		first int // tasks of the first job (one placed in the first round)
		cpu   int64
		// want is where the second round's tasks of job check go ("second"
		// unless set).
		check string
		want  []string
	}{
		{name: "hard constraint: a host's attributes change on re-registration", pl: gold, first: 1,
			event: func(ts *testScheduler, sess map[string]*Session, ids []string) {
				sess["a"] = ts.connectTier("a", "silver", 8000, ids...)
				sess["b"] = ts.connectTier("b", "gold", 8000)
			}, want: []string{"second@b"}},
		{name: "soft constraint: a host's attributes change on re-registration", pl: prefer, first: 1,
			event: func(ts *testScheduler, sess map[string]*Session, ids []string) {
				sess["a"] = ts.connectTier("a", "silver", 8000, ids...)
				sess["b"] = ts.connectTier("b", "gold", 8000)
			}, want: []string{"second@b"}},
		{name: "no host left after re-registration", pl: gold, first: 1,
			event: func(ts *testScheduler, sess map[string]*Session, ids []string) {
				sess["a"] = ts.connectTier("a", "silver", 8000, ids...)
			}, want: nil},
		{name: "agent lost", pl: gold, first: 1,
			event: func(ts *testScheduler, sess map[string]*Session, ids []string) {
				ts.connectTier("b", "gold", 8000)
				ts.mu.Lock()
				ts.agentLost(ts.agents["a"], time.Now())
				ts.mu.Unlock()
			}, want: []string{"second@b"}},
		{name: "agent drained", pl: gold, first: 1,
			event: func(ts *testScheduler, sess map[string]*Session, ids []string) {
				ts.connectTier("b", "gold", 8000)
				if _, err := ts.Drain(model.AgentSelector{ID: "a"}, true); err != nil {
					t.Fatal(err)
				}
			}, want: []string{"second@b"}},
		{name: "agent unhealthy", pl: prefer, first: 1,
			event: func(ts *testScheduler, sess map[string]*Session, ids []string) {
				ts.Heartbeat(sess["a"], false, nil, nil)
			}, want: []string{"second@b"}},
		{name: "a host found full in one round has room in the next", pl: gold, first: 2,
			// a takes one 6000m task; the first job's second task finds
			// it full (dropped for that round); it ends, freeing a.
			event: func(ts *testScheduler, sess map[string]*Session, ids []string) {
				ts.report("a", sess["a"], task.Finished, ids[0])
			}, cpu: 6000, check: "first", want: []string{"first@a"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ts := newTestScheduler(t, Config{})
			sess := map[string]*Session{"a": ts.connectTier("a", "gold", 8000), "b": ts.connectTier("b", "silver", 8000)}
			names := map[string]string{}
			if tt.cpu == 0 {
				tt.cpu = 1000
			}
			if tt.check == "" {
				tt.check = "second"
			}
			spec := testSpec(&model.BatchJob{Size: uint32(tt.first)}, tt.cpu)
			spec.Placement = tt.pl.Clone()
			names[ts.submit(spec)] = "first"
			got := ts.placedOn(names)
			if diff := cmp.Diff([]string{"first@a"}, got); diff != "" {
				t.Fatalf("first round (-want +got):\n%s", diff)
			}
			var ids []string
			ts.mu.RLock()
			for _, a := range []string{"a"} {
				for id := range ts.agents[a].tasks {
					ids = append(ids, id)
				}
			}
			ts.mu.RUnlock()
			tt.event(ts, sess, ids)
			spec = testSpec(&model.BatchJob{Size: 1}, tt.cpu)
			spec.Placement = tt.pl.Clone()
			names[ts.submit(spec)] = "second"
			var got2 []string
			for _, p := range ts.placedOn(names) {
				if strings.HasPrefix(p, tt.check+"@") {
					got2 = append(got2, p)
				}
			}
			if diff := cmp.Diff(tt.want, got2); diff != "" {
				t.Errorf("second round, job %s (-want +got):\n%s", tt.check, diff)
			}
		})
	}
}

// Jobs share the host lists of identical constraints, never of
// different ones: a job must not be placed by another job's lists.
func TestPlacementHostListsNotSharedAcrossConstraints(t *testing.T) {
	ts := newTestScheduler(t, Config{})
	ts.connectTier("a", "gold", 8000)
	ts.connectTier("b", "silver", 8000)
	names := map[string]string{}
	for _, c := range []struct{ name, expr string }{
		{"gold", "label.tier = gold"}, {"silver", "label.tier = silver"},
		{"in-gold", "label.tier in [gold]"}, {"not-gold", "label.tier != gold"},
	} {
		spec := testSpec(&model.BatchJob{Size: 1}, 100)
		spec.Placement = constraint.Spec{Constraints: []string{c.expr}}
		names[ts.submit(spec)] = c.name
		ts.placedOn(names) // one round per job, each priming the lists
	}
	var got []string
	ts.mu.RLock()
	for _, t := range ts.tasks {
		got = append(got, names[t.job.rec.ID]+"@"+t.agent.id)
	}
	ts.mu.RUnlock()
	want := []string{"gold@a", "in-gold@a", "not-gold@b", "silver@b"}
	if diff := cmp.Diff(want, got, cmpopts.SortSlices(func(a, b string) bool { return a < b })); diff != "" {
		t.Errorf("placements (-want +got):\n%s", diff)
	}
}
