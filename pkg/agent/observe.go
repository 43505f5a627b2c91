package agent

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/titus-agent/titus-agent/pkg/metrics"
	"github.com/titus-agent/titus-agent/pkg/runtime"
	"github.com/titus-agent/titus-agent/pkg/task"
	"github.com/titus-agent/titus-agent/pkg/vpc"
)

// hookPhase maps lifecycle hooks to the launch phases the SLO dashboards use.
var hookPhase = map[string]string{
	"image":      metrics.PhasePull,
	"network":    metrics.PhaseNetwork,
	"disk":       metrics.PhaseDisk,
	"metadata":   metrics.PhaseMetadata,
	"container":  metrics.PhaseStart,
	"hostmounts": metrics.PhaseHostMounts,
	"bandwidth":  metrics.PhaseBandwidth,
	"secrets":    metrics.PhaseSecrets,

	runtime.StepContainerCreate: metrics.PhaseContainerCreate,
	runtime.StepTaskCreate:      metrics.PhaseTaskCreate,
	runtime.StepTaskStart:       metrics.PhaseTaskStart,
	runtime.StepImageFetch:      metrics.PhaseFetch,
}

// platformReasons are failures the platform, not the task, caused.
var platformReasons = map[task.Reason]bool{
	task.ReasonImagePullFailed:     true,
	task.ReasonNetworkSetupFailed:  true,
	task.ReasonNoNetworkCapacity:   true,
	task.ReasonHostDiskFull:        true,
	task.ReasonDiskSetupFailed:     true,
	task.ReasonMetadataSetupFailed: true,
	task.ReasonStartFailed:         true,
	task.ReasonPlatformError:       true,
	task.ReasonAgentRestartLost:    true,
}

// observeHook records one hook's duration as its launch phase.
func observeHook(m *metrics.Agent) func(string, time.Duration) {
	return func(hook string, d time.Duration) {
		if p, ok := hookPhase[hook]; ok {
			m.ObserveLaunch(p, d)
		}
	}
}

// observeLaunch records a launch's phases that the transitions tell (the
// hooks' are observed as they end): total, launch (total less the image
// fetched from its registry, if it was) and accept. A re-adopted task (no
// Accepted transition first) is not a launch.
func observeLaunch(m *metrics.Agent, tr []task.Transition) {
	if len(tr) < 2 || tr[0].State != task.Accepted || tr[len(tr)-1].Reason != task.ReasonStarted {
		return
	}
	total := tr[len(tr)-1].Time.Sub(tr[0].Time)
	var fetch time.Duration
	for _, t := range tr {
		for _, s := range t.Steps {
			if s.Name == runtime.StepImageFetch {
				fetch += s.Took
			}
		}
	}
	m.ObserveLaunch(metrics.PhaseTotal, total)
	m.ObserveLaunch(metrics.PhaseLaunch, max(total-fetch, 0))
	if tr[1].State == task.Preparing {
		m.ObserveLaunch(metrics.PhaseAccept, tr[1].Time.Sub(tr[0].Time))
	}
}

// watchTasks keeps task metrics and systemd's STATUS= line current.
func watchTasks(ctx context.Context, mgr *Manager, m *metrics.Agent, log *slog.Logger) {
	events := mgr.Subscribe(ctx)
	update := func() {
		counts := map[string]int{}
		for s, n := range mgr.Counts() {
			counts[s.String()] = n
		}
		m.SetTaskCounts(counts)
		if err := NotifyStatus(fmt.Sprintf("%d running, %d known", counts[task.Running.String()], len(mgr.List()))); err != nil {
			log.Debug("sd_notify status", "err", err)
		}
	}
	update()
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-events:
			if !ok {
				events = mgr.Subscribe(ctx) // fell behind; resubscribe
				continue
			}
			st := ev.Status
			switch {
			case st.State == task.Running && len(st.Transitions) > 0:
				observeLaunch(m, st.Transitions)
			case st.State.Terminal():
				m.TasksFinished.WithLabelValues(st.State.String()).Inc()
				if st.State == task.Failed || st.State == task.Lost {
					cause := metrics.CauseUser
					if platformReasons[st.Reason] {
						cause = metrics.CausePlatform
					}
					m.TaskFailures.WithLabelValues(cause).Inc()
				}
			}
			update()
		}
	}
}

// managerAlive reports whether the manager answers within a few seconds —
// the watchdog's test that the main loop is not wedged.
func managerAlive(mgr *Manager) func() bool {
	return func() bool {
		done := make(chan struct{})
		go func() { mgr.List(); close(done) }()
		select {
		case <-done:
			return true
		case <-time.After(5 * time.Second):
			return false
		}
	}
}

// watchPools publishes the address pools' levels every few seconds.
func watchPools(ctx context.Context, n *vpc.Network, m *metrics.Agent) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		if ls, err := n.Levels(ctx); err == nil {
			m.IPPool.Reset()
			for _, l := range ls {
				m.IPPool.WithLabelValues(l.Subnet, "free").Set(float64(l.Free))
				m.IPPool.WithLabelValues(l.Subnet, "used").Set(float64(l.Used))
				m.IPPool.WithLabelValues(l.Subnet, "cooling").Set(float64(l.Cooling))
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
