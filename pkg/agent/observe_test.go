package agent

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/titus-agent/titus-agent/pkg/metrics"
	"github.com/titus-agent/titus-agent/pkg/runtime"
	"github.com/titus-agent/titus-agent/pkg/task"
)

func TestObserveLaunchPhases(t *testing.T) {
	t0 := time.Date(2026, 12, 3, 6, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	launched := []task.Transition{
		{State: task.Accepted, Reason: task.ReasonAccepted, Time: at(0)},
		{State: task.Preparing, Time: at(5)},
		{State: task.Starting, Time: at(40), Steps: []task.Step{{Name: "image", Took: 35 * time.Millisecond}, {Name: runtime.StepImageFetch, Took: 30 * time.Millisecond}}},
		{State: task.Running, Reason: task.ReasonStarted, Time: at(100)},
	}
	readopted := []task.Transition{{State: task.Running, Reason: task.ReasonReadopted, Time: at(0)}}

	m := metrics.New(prometheus.NewRegistry())
	hook := observeHook(m)
	for _, name := range []string{"image", "network", "disk", "metadata", "bandwidth", "hostmounts", "container",
		runtime.StepContainerCreate, runtime.StepTaskCreate, runtime.StepTaskStart, runtime.StepImageFetch, "not-a-phase"} {
		hook(name, 20*time.Millisecond)
	}
	observeLaunch(m, launched)
	observeLaunch(m, readopted) // not a launch

	for _, tc := range []struct {
		phase string
		count int
		sum   float64
	}{
		{metrics.PhaseTotal, 1, 0.1},
		{metrics.PhaseLaunch, 1, 0.07}, // total less the fetch
		{metrics.PhaseFetch, 1, 0.02},
		{metrics.PhaseAccept, 1, 0.005},
		{metrics.PhasePull, 1, 0.02},
		{metrics.PhaseContainerCreate, 1, 0.02},
		{metrics.PhaseTaskCreate, 1, 0.02},
		{metrics.PhaseTaskStart, 1, 0.02},
		{metrics.PhaseStart, 1, 0.02},
		{metrics.PhaseBandwidth, 1, 0.02},
		{metrics.PhaseHostMounts, 1, 0.02},
	} {
		h := m.LaunchDuration.WithLabelValues(tc.phase).(prometheus.Histogram)
		var c, s float64
		ch := make(chan prometheus.Metric, 1)
		h.Collect(ch)
		pb := readHistogram(t, <-ch)
		c, s = float64(pb.GetSampleCount()), pb.GetSampleSum()
		if int(c) != tc.count || s < tc.sum-1e-9 || s > tc.sum+1e-9 {
			t.Errorf("phase %s: count %v sum %v, want %d and %v", tc.phase, c, s, tc.count, tc.sum)
		}
	}
	if n := testutil.CollectAndCount(m.LaunchDuration); n != len(metrics.Phases) {
		t.Errorf("phases = %d, want %d (nothing unknown added)", n, len(metrics.Phases))
	}
}

func readHistogram(t *testing.T, m prometheus.Metric) *dto.Histogram {
	t.Helper()
	var pb dto.Metric
	if err := m.Write(&pb); err != nil {
		t.Fatal(err)
	}
	return pb.GetHistogram()
}
