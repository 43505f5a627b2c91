package metrics

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestAgentMetrics(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	a := New(reg)
	a.ObserveLaunch(PhasePull, 1500*time.Millisecond)
	a.ObserveLaunch(PhaseTotal, 2*time.Second)
	a.ObserveLaunch(PhaseTotal, 30*time.Millisecond)
	a.SetTaskCounts(map[string]int{"running": 3, "starting": 1})
	a.SetTaskCounts(map[string]int{"running": 4}) // starting drops out
	a.TaskFailures.WithLabelValues(CausePlatform).Inc()
	a.TaskFailures.WithLabelValues(CauseUser).Add(2)
	a.IPPool.WithLabelValues("subnet-1", "free").Set(2)
	a.MetadataRequests.WithLabelValues(MetadataCredentials).Inc()

	want := `
# HELP titus_agent_tasks Tasks held by the agent, by state.
# TYPE titus_agent_tasks gauge
titus_agent_tasks{state="running"} 4
# HELP titus_agent_task_failures_total Failed tasks by cause: platform (counts against the SLO) or user.
# TYPE titus_agent_task_failures_total counter
titus_agent_task_failures_total{cause="platform"} 1
titus_agent_task_failures_total{cause="user"} 2
# HELP titus_agent_ip_pool_addresses IP addresses held for tasks, by subnet and state (free, assigned, cooldown).
# TYPE titus_agent_ip_pool_addresses gauge
titus_agent_ip_pool_addresses{state="free",subnet="subnet-1"} 2
# HELP titus_agent_metadata_requests_total Metadata service requests from tasks, by class.
# TYPE titus_agent_metadata_requests_total counter
titus_agent_metadata_requests_total{class="credentials"} 1
titus_agent_metadata_requests_total{class="denied"} 0
titus_agent_metadata_requests_total{class="identity"} 0
titus_agent_metadata_requests_total{class="proxied"} 0
titus_agent_metadata_requests_total{class="token"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		"titus_agent_tasks", "titus_agent_task_failures_total", "titus_agent_ip_pool_addresses", "titus_agent_metadata_requests_total"); err != nil {
		t.Error(err)
	}
	// One series per phase, present before any launch.
	if n := testutil.CollectAndCount(a.LaunchDuration); n != len(Phases) {
		t.Errorf("launch latency series = %d, want %d (one per phase)", n, len(Phases))
	}
	if got := histogramCount(t, reg, "titus_agent_launch_duration_seconds", "phase", "total"); got != 2 {
		t.Errorf("phase=total observations = %d, want 2", got)
	}
	if got := histogramCount(t, reg, "titus_agent_launch_duration_seconds", "phase", "network"); got != 0 {
		t.Errorf("phase=network observations = %d, want 0", got)
	}
}

// histogramCount is the number of observations of one histogram series.
func histogramCount(t *testing.T, g prometheus.Gatherer, name, label, value string) uint64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label && lp.GetValue() == value {
					return m.GetHistogram().GetSampleCount()
				}
			}
		}
	}
	t.Fatalf("no series %s{%s=%q}", name, label, value)
	return 0
}

func TestSchedulerMetrics(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	s := NewScheduler(reg)
	s.PlacementDuration.WithLabelValues(PlacementPlaced).Observe(0.002)
	s.QueueDepth.Set(7)
	s.Agents.WithLabelValues(AgentHealthy).Set(3)
	s.Agents.WithLabelValues(AgentLost).Set(1)
	want := `
# HELP titus_scheduler_queue_depth Tasks waiting to be placed.
# TYPE titus_scheduler_queue_depth gauge
titus_scheduler_queue_depth 7
# HELP titus_scheduler_agents Registered agents by health (healthy, unhealthy, draining, lost).
# TYPE titus_scheduler_agents gauge
titus_scheduler_agents{health="draining"} 0
titus_scheduler_agents{health="healthy"} 3
titus_scheduler_agents{health="lost"} 1
titus_scheduler_agents{health="unhealthy"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "titus_scheduler_queue_depth", "titus_scheduler_agents"); err != nil {
		t.Error(err)
	}
	if got := histogramCount(t, reg, "titus_scheduler_placement_duration_seconds", "result", PlacementPlaced); got != 1 {
		t.Errorf("placed observations = %d, want 1", got)
	}
	if got := histogramCount(t, reg, "titus_scheduler_placement_duration_seconds", "result", PlacementUnplaceable); got != 0 {
		t.Errorf("unplaceable observations = %d, want 0", got)
	}
}

// Agent and scheduler collectors live in separate registries (processes);
// registering the agent's twice in one is a programming error.
func TestDoubleRegistrationPanics(t *testing.T) {
	reg := prometheus.NewRegistry()
	New(reg)
	defer func() {
		if recover() == nil {
			t.Error("registering the agent's collectors twice did not panic")
		}
	}()
	New(reg)
}

func TestServe(t *testing.T) {
	reg := NewRegistry()
	a := New(reg)
	a.TaskFailures.WithLabelValues(CausePlatform).Inc()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- ServeListener(ctx, l, reg) }()

	resp, err := http.Get("http://" + l.Addr().String() + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	for _, want := range []string{
		`titus_agent_task_failures_total{cause="platform"} 1`,
		`titus_agent_launch_duration_seconds_bucket{phase="pull",le="0.01"} 0`,
		"go_goroutines ",
		"process_open_fds ",
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	cancel()
	if err := <-served; err != nil {
		t.Errorf("ServeListener after cancel: %v", err)
	}
}

func TestServeNeedsAddress(t *testing.T) {
	if err := Serve(context.Background(), "", prometheus.NewRegistry()); err == nil {
		t.Error("Serve with no address succeeded")
	}
	if err := Serve(context.Background(), "127.0.0.1:notaport", prometheus.NewRegistry()); err == nil {
		t.Error("Serve on a bad address succeeded")
	}
}
