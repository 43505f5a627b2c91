package scheduler

import (
	"crypto/tls"
	"time"

	"github.com/titus-agent/titus-agent/pkg/authn"
	"github.com/titus-agent/titus-agent/pkg/authz"
	"github.com/titus-agent/titus-agent/pkg/metrics"
	"github.com/titus-agent/titus-agent/pkg/scheduler/core"
	"github.com/titus-agent/titus-agent/pkg/scheduler/model"
)

// Capacity groups are part of the configuration; their type lives in the model.
type (
	Group = model.Group
	Tier  = model.Tier
)

// Tiers of capacity groups.
const (
	TierCritical = model.TierCritical
	TierFlex     = model.TierFlex
	DefaultGroup = model.DefaultGroup
)

// Defaults of the finished-job retention (Options.FinishedJobRetention, MaxFinishedJobs).
const (
	DefaultFinishedJobRetention = core.DefaultFinishedJobRetention
	DefaultMaxFinishedJobs      = core.DefaultMaxFinishedJobs
)

// Defaults of the live-job caps (Options.MaxLiveJobs, MaxLiveJobsPerApplication).
const (
	DefaultMaxLiveJobs               = core.DefaultMaxLiveJobs
	DefaultMaxLiveJobsPerApplication = core.DefaultMaxLiveJobsPerApplication
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
	// Insecure allows plaintext, or no policy, on a non-loopback listen
	// address. Without it New refuses both.
	Insecure bool
	// Authn authenticates callers (nil: anonymous, or client certificates
	// named by SAN/CN, no tokens).
	Authn *authn.Authenticator
	// Policy, if set, is checked on every RPC; nil allows everything
	// (loopback or Insecure only), which New logs loudly.
	Policy *authz.Policy
	// MaxRequestBytes caps a unary API request (default authz.DefaultMaxRequestBytes).
	MaxRequestBytes int
	// MaxLiveJobs and MaxLiveJobsPerApplication cap the jobs not ended.
	MaxLiveJobs               int
	MaxLiveJobsPerApplication int
	// AuditMaxAge and AuditMaxRecords bound the audit trail's retention.
	AuditMaxAge     time.Duration
	AuditMaxRecords int
}

func (o *Options) setDefaults() {
	if o.Prefix == "" {
		o.Prefix = "/titus/"
	}
	if o.ElectionTTL <= 0 {
		o.ElectionTTL = 5 * time.Second
	}
	if o.TxnOps <= 0 {
		o.TxnOps = 128
	}
	if o.Advertise == "" {
		o.Advertise = o.Listen
	}
}

// core is the part of the options the core takes.
func (o *Options) core() core.Config {
	return core.Config{
		AgentTTL: o.AgentTTL, HeartbeatInterval: o.HeartbeatInterval, Groups: o.Groups,
		MaxPendingPerGroup: o.MaxPendingPerGroup, MaxPendingTotal: o.MaxPendingTotal, MaxLaunchingPerHost: o.MaxLaunchingPerHost,
		QuarantineFailures: o.QuarantineFailures, QuarantineWindow: o.QuarantineWindow,
		CrashLoopBase: o.CrashLoopBase, CrashLoopCap: o.CrashLoopCap,
		FinishedJobRetention: o.FinishedJobRetention, MaxFinishedJobs: o.MaxFinishedJobs,
		PlaceBatch: o.PlaceBatch, Metrics: o.Metrics,
		MaxLiveJobs: o.MaxLiveJobs, MaxLiveJobsPerApplication: o.MaxLiveJobsPerApplication,
	}
}
