package scheduler

import (
	"crypto/tls"
	"fmt"
	"time"

	"github.com/titus-agent/titus-agent/pkg/metrics"
)

// Tier says how a capacity group's quota is honoured.
type Tier string

const (
	// TierCritical is guaranteed: a job that would exceed the group's quota is refused.
	TierCritical Tier = "critical"
	// TierFlex is best effort: a job beyond the quota is accepted and queued
	// until the group's usage drops below its quota; it is placed after critical work.
	TierFlex Tier = "flex"
)

// Group is a capacity group: a named per-application quota.
type Group struct {
	Name string `json:"name"`
	Tier Tier   `json:"tier"`
	// Quota of CPU (millicores) and memory (MiB); 0 = unlimited.
	CPUMillicores int64 `json:"cpuMillicores,omitempty"`
	MemoryMiB     int64 `json:"memoryMiB,omitempty"`
	// MaxPending bounds the group's queued (not yet placed) tasks; 0 = Options.MaxPendingPerGroup.
	MaxPending int `json:"maxPending,omitempty"`
}

// Defaults of the finished-job retention (Options.FinishedJobRetention, MaxFinishedJobs).
const (
	DefaultFinishedJobRetention = 24 * time.Hour
	DefaultMaxFinishedJobs      = 10_000
)

// DefaultGroup is used by jobs that name no capacity group.
const DefaultGroup = "default"

// Documented limits, checked at the door.
const (
	MaxTasksPerJob    = 10_000
	MaxJobNameLen     = 128
	MaxApplicationLen = 128
	MaxJobLabels      = 64
	MaxRetries        = 1000
	MaxRetryDelay     = time.Hour
)

// Options configure a Scheduler.
type Options struct {
	// Listen is the gRPC address (host:port) and Advertise what standbys tell clients.
	Listen    string
	Advertise string
	// Endpoints of an etcd cluster; empty = embedded etcd in DataDir.
	Endpoints []string
	DataDir   string
	// Prefix of every key in etcd.
	Prefix string
	// ElectionTTL is the leader's etcd session TTL: a dead leader is replaced after about this long.
	ElectionTTL time.Duration
	// AgentTTL: an agent silent this long is lost and its tasks are replaced.
	AgentTTL time.Duration
	// HeartbeatInterval is what agents are told to use.
	HeartbeatInterval time.Duration
	// Groups are the capacity groups; "default" (flex, unlimited) is added when absent.
	Groups []Group
	// Bounded queues: pending tasks per group and in total.
	MaxPendingPerGroup int
	MaxPendingTotal    int
	// MaxLaunchingPerHost caps tasks sent to a host but not yet running.
	MaxLaunchingPerHost int
	// Quarantine a host after QuarantineFailures platform failures within QuarantineWindow.
	QuarantineFailures int
	QuarantineWindow   time.Duration
	// CrashLoopBase/CrashLoopCap: whatever a job's retry policy, the third and
	// later consecutive failures wait at least base*2^(n-3), capped.
	CrashLoopBase time.Duration
	CrashLoopCap  time.Duration
	// FinishedJobRetention: a finished, failed or killed job and every
	// attempt of its tasks are kept this long after it ends (for job get,
	// job ls -a, task ls -a), then removed from memory and etcd.
	FinishedJobRetention time.Duration
	// MaxFinishedJobs bounds the ended jobs kept, however recent: past it the
	// oldest are removed first. With the queue bounds this keeps the
	// scheduler's memory and etcd bounded over a long life.
	MaxFinishedJobs int
	// PlaceBatch is the most tasks placed per round; TxnOps the most puts per etcd txn.
	PlaceBatch int
	TxnOps     int
	// Metrics, if set, gets placement latency, queue depth and agents by health.
	Metrics *metrics.Scheduler
	// TLS, if set, secures the API and the agent stream (see pkg/tlsconfig).
	TLS *tls.Config
}

func (o *Options) setDefaults() {
	if o.Prefix == "" {
		o.Prefix = "/titus/"
	}
	if o.ElectionTTL <= 0 {
		o.ElectionTTL = 5 * time.Second
	}
	if o.AgentTTL <= 0 {
		o.AgentTTL = 10 * time.Second
	}
	if o.HeartbeatInterval <= 0 {
		o.HeartbeatInterval = o.AgentTTL / 5
	}
	if o.MaxPendingPerGroup <= 0 {
		o.MaxPendingPerGroup = 100_000
	}
	if o.MaxPendingTotal <= 0 {
		o.MaxPendingTotal = 200_000
	}
	if o.MaxLaunchingPerHost <= 0 {
		o.MaxLaunchingPerHost = 32
	}
	if o.QuarantineFailures <= 0 {
		o.QuarantineFailures = 5
	}
	if o.QuarantineWindow <= 0 {
		o.QuarantineWindow = 10 * time.Minute
	}
	if o.CrashLoopBase <= 0 {
		o.CrashLoopBase = time.Second
	}
	if o.CrashLoopCap <= 0 {
		o.CrashLoopCap = 5 * time.Minute
	}
	if o.FinishedJobRetention <= 0 {
		o.FinishedJobRetention = DefaultFinishedJobRetention
	}
	if o.MaxFinishedJobs <= 0 {
		o.MaxFinishedJobs = DefaultMaxFinishedJobs
	}
	if o.PlaceBatch <= 0 {
		o.PlaceBatch = 4096
	}
	if o.TxnOps <= 0 {
		o.TxnOps = 128
	}
	if o.Advertise == "" {
		o.Advertise = o.Listen
	}
}

func (o *Options) groups() (map[string]*Group, error) {
	out := map[string]*Group{}
	for i := range o.Groups {
		g := o.Groups[i]
		if g.Name == "" {
			return nil, fmt.Errorf("capacity group %d: name is required", i)
		}
		switch g.Tier {
		case "":
			g.Tier = TierFlex
		case TierCritical, TierFlex:
		default:
			return nil, fmt.Errorf("capacity group %s: tier must be critical or flex", g.Name)
		}
		if g.MaxPending <= 0 {
			g.MaxPending = o.MaxPendingPerGroup
		}
		out[g.Name] = &g
	}
	if out[DefaultGroup] == nil {
		out[DefaultGroup] = &Group{Name: DefaultGroup, Tier: TierFlex, MaxPending: o.MaxPendingPerGroup}
	}
	return out, nil
}
