package healthcheck

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/titus-agent/titus-agent/pkg/task"
)

func TestTrackerThresholds(t *testing.T) {
	t0 := time.Unix(1000, 0)
	check := task.HealthCheck{HealthyThreshold: 2, UnhealthyThreshold: 3, StartPeriod: 10 * time.Second}
	tests := []struct {
		name    string
		last    *task.Health
		results []bool // at t0+1s, +2s, ... (+11s on is past the start period)
		offset  time.Duration
		want    []task.HealthStatus
	}{
		{"passes make it healthy", nil, []bool{true, true, true}, 0,
			[]task.HealthStatus{task.HealthStarting, task.HealthHealthy, task.HealthHealthy}},
		{"failures in the start period do not count", nil, []bool{false, false, false, false}, 0,
			[]task.HealthStatus{task.HealthStarting, task.HealthStarting, task.HealthStarting, task.HealthStarting}},
		{"a pass in the start period counts", nil, []bool{true, true}, 0,
			[]task.HealthStatus{task.HealthStarting, task.HealthHealthy}},
		{"failures after the start period", nil, []bool{false, false, false}, 20 * time.Second,
			[]task.HealthStatus{task.HealthStarting, task.HealthStarting, task.HealthUnhealthy}},
		{"a pass resets the failures", nil, []bool{false, false, true, false, false, false}, 20 * time.Second,
			[]task.HealthStatus{task.HealthStarting, task.HealthStarting, task.HealthStarting, task.HealthStarting, task.HealthStarting, task.HealthUnhealthy}},
		{"healthy then unhealthy then healthy", nil, []bool{true, true, false, false, false, true, true}, 20 * time.Second,
			[]task.HealthStatus{task.HealthStarting, task.HealthHealthy, task.HealthHealthy, task.HealthHealthy, task.HealthUnhealthy, task.HealthUnhealthy, task.HealthHealthy}},
		{"a recorded status stands until the thresholds say otherwise", &task.Health{Status: task.HealthUnhealthy, Since: t0}, []bool{true, false, true, true}, 20 * time.Second,
			[]task.HealthStatus{task.HealthUnhealthy, task.HealthUnhealthy, task.HealthUnhealthy, task.HealthHealthy}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := NewTracker(check, t0, tt.last, t0)
			var got []task.HealthStatus
			for i, ok := range tt.results {
				h, _ := tr.Observe(Result{OK: ok, Output: "out"}, t0.Add(tt.offset+time.Duration(i+1)*time.Second))
				got = append(got, h.Status)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Fatalf("statuses (-want +got):\n%s", diff)
			}
		})
	}
}

func TestTrackerReportsChangesAndOutput(t *testing.T) {
	t0 := time.Unix(1000, 0)
	tr := NewTracker(task.HealthCheck{HealthyThreshold: 1, UnhealthyThreshold: 1}, t0, nil, t0)
	h, changed := tr.Observe(Result{OK: true, Output: "fine"}, t0.Add(time.Second))
	want := task.Health{Status: task.HealthHealthy, Since: t0.Add(time.Second).UTC(), Checked: t0.Add(time.Second).UTC(), OK: true, Output: "fine"}
	if diff := cmp.Diff(want, h); diff != "" || !changed {
		t.Fatalf("first pass (changed %v):\n%s", changed, diff)
	}
	h, changed = tr.Observe(Result{OK: true, Output: "still fine"}, t0.Add(2*time.Second))
	if changed || h.Output != "still fine" || !h.Since.Equal(t0.Add(time.Second)) {
		t.Fatalf("second pass: changed %v, %+v", changed, h)
	}
	long := make([]byte, 10*task.MaxHealthOutput)
	for i := range long {
		long[i] = 'x'
	}
	h, changed = tr.Observe(Result{Output: string(long)}, t0.Add(3*time.Second))
	if !changed || h.Status != task.HealthUnhealthy || len(h.Output) > task.MaxHealthOutput {
		t.Fatalf("failure: changed %v, status %v, output %d bytes", changed, h.Status, len(h.Output))
	}
}
