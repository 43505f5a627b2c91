package metrics

import (
	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/prometheus/client_golang/prometheus"
)

// Placement outcomes, the values of the placement latency's "result" label.
const (
	PlacementPlaced      = "placed"
	PlacementUnplaceable = "unplaceable"
)

// Agent health, the values of the agents gauge's "health" label.
const (
	AgentHealthy   = "healthy"
	AgentUnhealthy = "unhealthy"
	AgentDraining  = "draining"
	AgentLost      = "lost"
)

// PlacementBuckets span 100µs to ~1.6s.
var PlacementBuckets = prometheus.ExponentialBuckets(0.0001, 2, 15)

// Scheduler is the scheduler's collectors. All are registered by NewScheduler.
type Scheduler struct {
	// PlacementDuration is the time to place one task, by result.
	PlacementDuration *prometheus.HistogramVec
	// QueueDepth is the tasks waiting to be placed.
	QueueDepth prometheus.Gauge
	// Agents is the number of agents by health (Agent*).
	Agents *prometheus.GaugeVec
	// QuarantinedRecords counts records in etcd the scheduler could not
	// read, skipped and copied under its quarantine prefix: alert on any.
	QuarantinedRecords prometheus.Counter
	// TargetCalls counts the ELBv2 calls of the load balancer integration,
	// by op (register, deregister, describe) and result (ok, error).
	TargetCalls *prometheus.CounterVec
	// GRPC measures the job and agent-stream APIs (grpc_server_*); add its
	// interceptors to the gRPC server.
	GRPC *grpcprom.ServerMetrics
}

// NewScheduler creates the scheduler's collectors and registers them with reg.
func NewScheduler(reg prometheus.Registerer) *Scheduler {
	s := &Scheduler{
		PlacementDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "titus_scheduler", Name: "placement_duration_seconds",
			Help:    "Time to place one task, by result (placed, unplaceable).",
			Buckets: PlacementBuckets,
		}, []string{"result"}),
		QueueDepth: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "titus_scheduler", Name: "queue_depth",
			Help: "Tasks waiting to be placed.",
		}),
		Agents: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "titus_scheduler", Name: "agents",
			Help: "Registered agents by health (healthy, unhealthy, draining, lost).",
		}, []string{"health"}),
		QuarantinedRecords: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "titus_scheduler", Name: "store_quarantined_records_total",
			Help: "Records in etcd that could not be read, were skipped and copied under the quarantine prefix.",
		}),
		TargetCalls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "titus_scheduler", Name: "target_group_calls_total",
			Help: "ELBv2 calls putting tasks into and out of target groups, by op (register, deregister, describe) and result (ok, error).",
		}, []string{"op", "result"}),
		GRPC: grpcprom.NewServerMetrics(),
	}
	for _, r := range []string{PlacementPlaced, PlacementUnplaceable} {
		s.PlacementDuration.WithLabelValues(r)
	}
	for _, h := range []string{AgentHealthy, AgentUnhealthy, AgentDraining, AgentLost} {
		s.Agents.WithLabelValues(h)
	}
	for _, op := range []string{"register", "deregister", "describe"} {
		for _, r := range []string{"ok", "error"} {
			s.TargetCalls.WithLabelValues(op, r)
		}
	}
	reg.MustRegister(s.PlacementDuration, s.QueueDepth, s.Agents, s.QuarantinedRecords, s.TargetCalls, s.GRPC)
	return s
}
