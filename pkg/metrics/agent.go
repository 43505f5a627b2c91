package metrics

import (
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/prometheus/client_golang/prometheus"
)

// Launch phases, the values of the launch latency's "phase" label.
const (
	PhasePull     = "pull"
	PhaseNetwork  = "network"
	PhaseDisk     = "disk"
	PhaseMetadata = "metadata"
	PhaseStart    = "start"
	// The other hooks.
	PhaseHostMounts = "hostmounts"
	PhaseBandwidth  = "bandwidth"
	PhaseSecrets    = "secrets"
	// The runtime steps within start: containerd's container (snapshot,
	// spec), the shim and runc create, runc start.
	PhaseContainerCreate = "container_create"
	PhaseTaskCreate      = "task_create"
	PhaseTaskStart       = "task_start"
	// PhaseAccept is from accepting a task to its runner preparing it
	// (the agent's own: the record written, the runner started).
	PhaseAccept = "accept"
	// PhaseTotal is accept-to-running, the launch latency SLO.
	PhaseTotal = "total"
	// PhaseFetch is an image fetched from its registry (downloaded and
	// unpacked), part of PhasePull, only in launches whose image was not
	// there; PhaseLaunch is PhaseTotal less PhaseFetch: the launch with the
	// pull time set apart.
	PhaseFetch  = "fetch"
	PhaseLaunch = "launch"
)

// Failure causes, the values of the task failures' "cause" label.
const (
	// CausePlatform is a failure the platform caused (pull, network,
	// disk, metadata, runtime errors, lost on agent restart); it counts
	// against the SLO.
	CausePlatform = "platform"
	// CauseUser is the task's own doing (non-zero exit, OOM, bad image name).
	CauseUser = "user"
)

// Metadata request classes, the values of the "class" label.
const (
	MetadataCredentials = "credentials" // IAM role credentials
	MetadataToken       = "token"       // IMDSv2 token PUTs
	MetadataIdentity    = "identity"    // container-scoped instance data
	MetadataProxied     = "proxied"     // allowlisted, answered by the host's IMDS
	MetadataDenied      = "denied"      // unknown path or missing token
)

// Phases are the values of the launch latency's "phase" label.
var Phases = []string{PhaseAccept, PhasePull, PhaseHostMounts, PhaseNetwork, PhaseDisk, PhaseMetadata, PhaseBandwidth,
	PhaseSecrets, PhaseStart, PhaseContainerCreate, PhaseTaskCreate, PhaseTaskStart, PhaseTotal, PhaseFetch, PhaseLaunch}

// LaunchBuckets span 10ms to ~80s: a warm launch is well under a second, a
// cold pull of a large image can take a minute.
var LaunchBuckets = prometheus.ExponentialBuckets(0.01, 2, 14)

// Agent is the agent's collectors. All are registered by New.
type Agent struct {
	// LaunchDuration is launch latency in seconds by phase (Phase*).
	LaunchDuration *prometheus.HistogramVec
	// Tasks is the number of tasks by state (pkg/task state names).
	Tasks *prometheus.GaugeVec
	// TasksFinished counts tasks that reached a final state, by state.
	TasksFinished *prometheus.CounterVec
	// TaskFailures counts failed tasks by cause (Cause*).
	TaskFailures *prometheus.CounterVec
	// IPPool is the IP addresses held by the agent, by subnet and state
	// (free, assigned, cooldown).
	IPPool *prometheus.GaugeVec
	// AWSCalls counts AWS API attempts by service (EC2, STS), operation and
	// outcome (ok, error, throttled); see AWSAPIOptions.
	AWSCalls *prometheus.CounterVec
	// AWSThrottles counts throttled AWS API attempts by service and operation.
	AWSThrottles *prometheus.CounterVec
	// MetadataRequests counts metadata requests from tasks by class (Metadata*).
	MetadataRequests *prometheus.CounterVec
	// MetadataResponses counts metadata answers by class and HTTP status.
	MetadataResponses *prometheus.CounterVec
	// MetadataLatency is the time to answer a metadata request, by class.
	MetadataLatency *prometheus.HistogramVec
	// QuarantinedRecords is the number of task records the agent could
	// not read and keeps aside (their containers are left alone).
	QuarantinedRecords prometheus.Gauge
	// PoolSizes is the objects a launch pool holds ready, by pool
	// ("netns", "disk-<size>MiB").
	PoolSizes *prometheus.GaugeVec
	// PoolTakes counts launches that asked a pool, by pool and result
	// (hit: took a pre-made object; miss: made its own).
	PoolTakes *prometheus.CounterVec
	// GRPC measures the control API (grpc_server_*); add its interceptors
	// to the gRPC server.
	GRPC *grpcprom.ServerMetrics
}

// New creates the agent's collectors and registers them with reg.
func New(reg prometheus.Registerer) *Agent {
	a := &Agent{
		LaunchDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "titus_agent", Name: "launch_duration_seconds",
			Help:    "Task launch latency by phase; phase=total is accept to running.",
			Buckets: LaunchBuckets,
		}, []string{"phase"}),
		Tasks: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "titus_agent", Name: "tasks",
			Help: "Tasks held by the agent, by state.",
		}, []string{"state"}),
		TasksFinished: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "titus_agent", Name: "tasks_finished_total",
			Help: "Tasks that reached a final state, by state.",
		}, []string{"state"}),
		TaskFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "titus_agent", Name: "task_failures_total",
			Help: "Failed tasks by cause: platform (counts against the SLO) or user.",
		}, []string{"cause"}),
		IPPool: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "titus_agent", Name: "ip_pool_addresses",
			Help: "IP addresses held for tasks, by subnet and state (free, assigned, cooldown).",
		}, []string{"subnet", "state"}),
		AWSCalls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "titus_agent", Name: "aws_api_calls_total",
			Help: "AWS API attempts by service, operation and outcome (ok, error, throttled).",
		}, []string{"service", "operation", "outcome"}),
		AWSThrottles: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "titus_agent", Name: "aws_api_throttles_total",
			Help: "Throttled AWS API attempts by service and operation.",
		}, []string{"service", "operation"}),
		MetadataRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "titus_agent", Name: "metadata_requests_total",
			Help: "Metadata service requests from tasks, by class.",
		}, []string{"class"}),
		MetadataResponses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "titus_agent", Name: "metadata_responses_total",
			Help: "Metadata service answers to tasks, by class and HTTP status code.",
		}, []string{"class", "code"}),
		MetadataLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "titus_agent", Name: "metadata_request_duration_seconds",
			Help:    "Time to answer a metadata request, by class.",
			Buckets: prometheus.ExponentialBuckets(0.00005, 2, 16),
		}, []string{"class"}),
		QuarantinedRecords: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "titus_agent", Name: "quarantined_task_records",
			Help: "Task records the agent could not read, kept aside; their containers are left running.",
		}),
		PoolSizes: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "titus_agent", Name: "pool_ready",
			Help: "Objects a launch pool holds ready (pre-made network namespaces, formatted disks), by pool.",
		}, []string{"pool"}),
		PoolTakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "titus_agent", Name: "pool_takes_total",
			Help: "Launches that asked a pool, by pool and result (hit: took a pre-made object; miss: made its own).",
		}, []string{"pool", "result"}),
		GRPC: grpcprom.NewServerMetrics(),
	}
	// Known label values start at zero, so ratios and rates exist before
	// the first event.
	for _, p := range Phases {
		a.LaunchDuration.WithLabelValues(p)
	}
	for _, c := range []string{CausePlatform, CauseUser} {
		a.TaskFailures.WithLabelValues(c)
	}
	for _, c := range []string{MetadataCredentials, MetadataToken, MetadataIdentity, MetadataProxied, MetadataDenied} {
		a.MetadataRequests.WithLabelValues(c)
	}
	reg.MustRegister(a.LaunchDuration, a.Tasks, a.TasksFinished, a.TaskFailures, a.IPPool,
		a.AWSCalls, a.AWSThrottles, a.MetadataRequests, a.MetadataResponses, a.MetadataLatency, a.QuarantinedRecords,
		a.PoolSizes, a.PoolTakes, a.GRPC)
	return a
}

// ObserveLaunch records how long one launch phase took.
func (a *Agent) ObserveLaunch(phase string, d time.Duration) {
	a.LaunchDuration.WithLabelValues(phase).Observe(d.Seconds())
}

// PoolTake counts a launch that asked a pool (vpc and isolation PoolStats).
func (a *Agent) PoolTake(pool string, hit bool) {
	result := "miss"
	if hit {
		result = "hit"
	}
	a.PoolTakes.WithLabelValues(pool, result).Inc()
}

// PoolReady sets how many objects a pool holds ready.
func (a *Agent) PoolReady(pool string, n int) { a.PoolSizes.WithLabelValues(pool).Set(float64(n)) }

// SetTaskCounts replaces the tasks-by-state gauge with counts; states
// missing from counts drop to zero.
func (a *Agent) SetTaskCounts(counts map[string]int) {
	a.Tasks.Reset()
	for state, n := range counts {
		a.Tasks.WithLabelValues(state).Set(float64(n))
	}
}
