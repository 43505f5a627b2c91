package schedload

import (
	"context"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/titus-agent/titus-agent/pkg/task"
)

// A list handed out is a snapshot: later launches, kills and health
// changes do not show in it, and show in the next list.
func TestSimTasksListIsASnapshot(t *testing.T) {
	s := NewSimTasks(nil)
	ctx := context.Background()
	launch := func(id string) {
		t.Helper()
		spec := &task.Spec{ID: id, OwnerEmail: "t@example.com", Image: "registry.example/x:1", Command: []string{"true"},
			Resources: task.Resources{CPUMillicores: 100, MemoryMiB: 64},
			HealthCheck: &task.HealthCheck{Kind: task.HealthExec, Command: []string{"true"},
				Interval: time.Second, Timeout: time.Second, HealthyThreshold: 1, UnhealthyThreshold: 1}}
		spec.Normalize()
		if err := s.Launch(ctx, spec); err != nil {
			t.Fatal(err)
		}
	}
	states := func(l []task.View) map[string]string {
		out := map[string]string{}
		for _, v := range l {
			st := v.Status.State.String()
			if v.Status.Health != nil {
				st += "/" + v.Status.Health.Status.String()
			}
			out[v.Spec.ID] = st
		}
		return out
	}
	launch("a")
	launch("b")
	first := s.List()
	want := states(first)
	launch("c")
	if err := s.Kill(ctx, "a", task.ReasonKilledByUser, ""); err != nil {
		t.Fatal(err)
	}
	s.SetHealth(func(*task.Spec) task.HealthStatus { return task.HealthHealthy })
	second := s.List()
	launch("d")
	if err := s.Kill(ctx, "b", task.ReasonKilledByUser, ""); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(want, states(first)); d != "" {
		t.Errorf("first list changed after it was taken (-want +got):\n%s", d)
	}
	if d := cmp.Diff(map[string]string{"a": "Killed", "b": "Running/Healthy", "c": "Running/Healthy"}, states(second)); d != "" {
		t.Errorf("second list (-want +got):\n%s", d)
	}
	if d := cmp.Diff(map[string]string{"a": "Killed", "b": "Killed/Healthy", "c": "Running/Healthy", "d": "Running/Healthy"}, states(s.List())); d != "" {
		t.Errorf("third list (-want +got):\n%s", d)
	}
	if d := cmp.Diff([]string{"c", "d"}, s.Running()); d != "" {
		t.Errorf("running (-want +got):\n%s", d)
	}
}
