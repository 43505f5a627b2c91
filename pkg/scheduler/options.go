package scheduler

import (
	"crypto/tls"
	"time"

	"github.com/titus-agent/titus-agent/pkg/authn"
	"github.com/titus-agent/titus-agent/pkg/authz"
	"github.com/titus-agent/titus-agent/pkg/scheduler/api"
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

// Defaults of the load balancer integration (Options.MaxDeregistrationWait, TargetReconcileInterval).
const (
	DefaultMaxDeregistrationWait   = core.DefaultMaxDeregistrationWait
	DefaultTargetReconcileInterval = core.DefaultTargetReconcileInterval
)

// CoreConfig is the core's part of the options (see core.Config).
type CoreConfig = core.Config

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
	// CoreConfig tunes placement, reconciliation, queues, retries and
	// retention: the core owns those settings and their defaults.
	CoreConfig
	// TxnOps is the most puts per etcd transaction.
	TxnOps int
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
	// AuditMaxAge and AuditMaxRecords bound the audit trail's retention.
	AuditMaxAge     time.Duration
	AuditMaxRecords int
	// AuditMaxRecordsPerPrincipal caps one principal's records
	// (audit.Options.MaxRecordsPerPrincipal).
	AuditMaxRecordsPerPrincipal int
	// AuditRefusalBurst, AuditRefusalEvery and AuditRefusalWindow bound
	// the refusals one principal stores (audit.Options.Refusal*).
	AuditRefusalBurst                     int
	AuditRefusalEvery, AuditRefusalWindow time.Duration
	// ExecMaxSessionsPerCaller bounds one principal's concurrent exec
	// sessions relayed by this scheduler (0: api.DefaultExecMaxSessionsPerCaller).
	ExecMaxSessionsPerCaller int
	// LogArchive reads the logs of tasks whose agent is gone (the log
	// bucket); nil: such reads fail.
	LogArchive api.LogArchive
	// MaxLogReadsPerCaller and MaxLogReads bound the log reads open at
	// once per principal and in total (0: api.DefaultMaxLogReads...).
	MaxLogReadsPerCaller, MaxLogReads int
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
