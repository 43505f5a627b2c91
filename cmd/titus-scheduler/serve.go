package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/titus-agent/titus-agent/pkg/audit"
	"github.com/titus-agent/titus-agent/pkg/authn"
	"github.com/titus-agent/titus-agent/pkg/authz"
	"github.com/titus-agent/titus-agent/pkg/logging"
	"github.com/titus-agent/titus-agent/pkg/logship"
	"github.com/titus-agent/titus-agent/pkg/metrics"
	"github.com/titus-agent/titus-agent/pkg/scheduler"
	"github.com/titus-agent/titus-agent/pkg/scheduler/api"
	"github.com/titus-agent/titus-agent/pkg/scheduler/core"
	"github.com/titus-agent/titus-agent/pkg/scheduler/lb"
	"github.com/titus-agent/titus-agent/pkg/scheduler/logarchive"
	"github.com/titus-agent/titus-agent/pkg/tlsconfig"
)

// serveConfig is the scheduler's YAML file (docs/config.md); flags given on
// the command line override it; unknown keys are refused.
type serveConfig struct {
	Listen              string   `json:"listen"`
	Advertise           string   `json:"advertise"`
	DataDir             string   `json:"dataDir"`
	EtcdEndpoints       []string `json:"etcdEndpoints"`
	AgentTTL            string   `json:"agentTTL"`
	ElectionTTL         string   `json:"electionTTL"`
	MaxPendingPerGroup  int      `json:"maxPendingPerGroup"`
	MaxPending          int      `json:"maxPending"`
	MaxLaunchingPerHost int      `json:"maxLaunchingPerHost"`
	// Ended jobs are kept this long (a duration), and at most this many, then removed.
	FinishedJobRetention string            `json:"finishedJobRetention"`
	MaxFinishedJobs      int               `json:"maxFinishedJobs"`
	CapacityGroups       []scheduler.Group `json:"capacityGroups"`
	MetricsListen        string            `json:"metricsListen"`
	// TLS of the API and agent stream: certFile, keyFile, and caFile to require client certificates.
	TLS tlsconfig.Files `json:"tls"`
	// Insecure allows plaintext, or no policy, on a non-loopback listen address.
	Insecure bool `json:"insecure"`
	// Auth: the policy file and bearer tokens (docs/security.md).
	Auth authConfig `json:"auth"`
	// MaxRequestBytes caps a unary API request.
	MaxRequestBytes int `json:"maxRequestBytes"`
	// Live (not ended) jobs, in total and per application.
	MaxLiveJobs               int `json:"maxLiveJobs"`
	MaxLiveJobsPerApplication int `json:"maxLiveJobsPerApplication"`
	// LoadBalancers turns on ELBv2 target group registration (docs/loadbalancers.md).
	LoadBalancers lbConfig `json:"loadBalancers"`
	// Exec bounds the exec sessions relayed to agents (docs/exec.md).
	Exec execConfig `json:"exec"`
	// Logs: where task logs are read from once their agent is gone, and
	// the bounds of log reads (docs/logs.md).
	Logs logsConfig `json:"logs"`
	// Audit bounds the audit trail: retention, and the refusals one
	// principal stores (docs/security.md).
	Audit auditConfig `json:"audit"`
}

// auditConfig is the audit section of the scheduler's file.
type auditConfig struct {
	// MaxAge (a duration) and MaxRecords bound retention.
	MaxAge     string `json:"maxAge"`
	MaxRecords int    `json:"maxRecords"`
	// MaxRecordsPerPrincipal caps the records one principal holds (its
	// own oldest go first).
	MaxRecordsPerPrincipal int `json:"maxRecordsPerPrincipal"`
	// RefusalBurst refusals of one principal are stored one by one, then
	// one per RefusalEvery (a duration); the rest are counted in one record
	// per principal and RefusalWindow (a duration).
	RefusalBurst  int    `json:"refusalBurst"`
	RefusalEvery  string `json:"refusalEvery"`
	RefusalWindow string `json:"refusalWindow"`
}

// logsConfig is the logs section of the scheduler's file.
type logsConfig struct {
	// S3 is the bucket the agents ship task logs to (their logship section).
	S3 logsS3Config `json:"s3"`
	// MaxReadsPerCaller and MaxReads bound the log reads open at once.
	MaxReadsPerCaller int `json:"maxReadsPerCaller"`
	MaxReads          int `json:"maxReads"`
	// followInterval and followGrace: the flags, or s3's keys.
	followInterval, followGrace time.Duration
}

// logsS3Config names the log bucket; an empty bucket reads no archive.
type logsS3Config struct {
	Bucket   string `json:"bucket"`
	Prefix   string `json:"prefix"`
	Region   string `json:"region"`
	Endpoint string `json:"endpoint"`
	// FollowInterval and FollowGrace (Go durations): how often task logs
	// -f lists a task's objects, and how long after the task ended it
	// waits for the final one.
	FollowInterval string `json:"followInterval"`
	FollowGrace    string `json:"followGrace"`
}

// execConfig is the exec section of the scheduler's file.
type execConfig struct {
	// MaxSessionsPerCaller bounds one principal's concurrent relayed sessions.
	MaxSessionsPerCaller int `json:"maxSessionsPerCaller"`
}

// lbConfig is the loadBalancers section of the scheduler's file.
type lbConfig struct {
	// Region of the target groups; setting it turns the integration on.
	Region string `json:"region"`
	// Endpoint overrides the ELBv2 endpoint (moto in tests).
	Endpoint string `json:"endpoint"`
	// MaxDeregistrationWait bounds a stop's wait for the deregistration delay (a duration).
	MaxDeregistrationWait string `json:"maxDeregistrationWait"`
	// ReconcileInterval: how often target groups are compared with the tasks (a duration).
	ReconcileInterval string `json:"reconcileInterval"`
}

// authConfig is the auth section of the scheduler's file.
type authConfig struct {
	PolicyFile string            `json:"policyFile"`
	Token      authn.TokenConfig `json:"token"`
	// AgentCAFile is the CA (PEM) of agents' certificates, apart from users'.
	AgentCAFile string `json:"agentCAFile"`
}

func newServeCmd() *cobra.Command {
	var (
		o                       scheduler.Options
		endpoints, groups, path string
		metricsListen           string
		tlsFiles                tlsconfig.Files
		auth                    authConfig
		lbc                     lbConfig
		lc                      logsConfig
	)
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run a scheduler replica (embedded etcd in --data-dir unless --etcd-endpoints is given)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			f := cmd.Flags()
			if path != "" {
				if err := applyConfigFile(path, f.Changed, &o, &endpoints, &metricsListen, &tlsFiles, &auth, &lbc, &lc); err != nil {
					return err
				}
			}
			if endpoints != "" {
				o.Endpoints = strings.Split(endpoints, ",")
			}
			if groups != "" {
				b, err := os.ReadFile(groups)
				if err != nil {
					return err
				}
				if err := yaml.UnmarshalStrict(b, &o.Groups); err != nil {
					return fmt.Errorf("%s: %w", groups, err)
				}
			}
			tc, err := tlsFiles.Server()
			if err != nil {
				return err
			}
			o.TLS = tc
			if auth.AgentCAFile != "" {
				if err := tlsconfig.AddClientCA(tc, auth.AgentCAFile); err != nil {
					return err
				}
			}
			if o.Authn, err = authn.New(authn.Config{Token: auth.Token, AgentCAFile: auth.AgentCAFile}, nil); err != nil {
				return err
			}
			if auth.PolicyFile != "" {
				if o.Policy, err = authz.Load(auth.PolicyFile); err != nil {
					return err
				}
			}
			if lc.S3.Bucket != "" {
				cli, err := logship.NewS3(cmd.Context(), logship.AWSConfig{Region: lc.S3.Region, Endpoint: lc.S3.Endpoint})
				if err != nil {
					return err
				}
				o.LogArchive = logarchive.New(cli, lc.S3.Bucket, lc.S3.Prefix).WithFollow(lc.followInterval, lc.followGrace)
			}
			o.MaxLogReadsPerCaller, o.MaxLogReads = lc.MaxReadsPerCaller, lc.MaxReads
			if lbc.Region != "" {
				cli, err := lb.NewClient(cmd.Context(), lb.Config{Region: lbc.Region, Endpoint: lbc.Endpoint})
				if err != nil {
					return err
				}
				o.LoadBalancers = lb.New(cli)
			}
			log := logging.New(os.Stderr, slog.LevelInfo)
			reg := metrics.NewRegistry()
			o.Metrics = metrics.NewScheduler(reg)
			s, err := scheduler.New(o, log)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			if metricsListen != "" {
				go func() {
					if err := metrics.Serve(ctx, metricsListen, reg); err != nil {
						log.Error("metrics endpoint", "addr", metricsListen, "err", err)
					}
				}()
			}
			log.Info("serving", "addr", s.Addr())
			_, _ = daemon.SdNotify(false, daemon.SdNotifyReady)
			defer daemon.SdNotify(false, daemon.SdNotifyStopping)
			return s.Run(ctx)
		},
	}
	f := cmd.Flags()
	f.StringVarP(&path, "config", "c", "", "configuration file (YAML, see docs/config.md); flags override it")
	f.StringVar(&o.DataDir, "data-dir", "/var/lib/titus-scheduler", "state directory (embedded etcd)")
	f.StringVar(&o.Listen, "listen", "127.0.0.1:7400", "gRPC listen address")
	f.StringVar(&o.Advertise, "advertise", "", "address standbys give clients for this replica (default: --listen)")
	f.StringVar(&endpoints, "etcd-endpoints", "", "comma-separated etcd endpoints (instead of the embedded etcd)")
	f.StringVar(&groups, "capacity-groups", "", "YAML list of capacity groups {name, tier, cpuMillicores, memoryMiB, maxPending}")
	f.DurationVar(&o.AgentTTL, "agent-ttl", core.DefaultAgentTTL, "an agent silent this long is lost")
	f.DurationVar(&o.ElectionTTL, "election-ttl", 5*time.Second, "leader lease TTL")
	f.IntVar(&o.MaxPendingPerGroup, "max-pending-per-group", 100_000, "queued tasks per capacity group")
	f.IntVar(&o.MaxPendingTotal, "max-pending", 200_000, "queued tasks in total")
	f.IntVar(&o.MaxLaunchingPerHost, "max-launching-per-host", 32, "tasks launching at once per host")
	f.DurationVar(&o.FinishedJobRetention, "finished-job-retention", scheduler.DefaultFinishedJobRetention, "ended jobs and their tasks (and lost agents with no task) are removed this long after they end")
	f.IntVar(&o.MaxFinishedJobs, "max-finished-jobs", scheduler.DefaultMaxFinishedJobs, "ended jobs kept at most; the oldest are removed first")
	f.StringVar(&tlsFiles.CertFile, "tls-cert", "", "serve TLS with this certificate (PEM)")
	f.StringVar(&tlsFiles.KeyFile, "tls-key", "", "private key of --tls-cert (PEM)")
	f.StringVar(&tlsFiles.CAFile, "tls-client-ca", "", "require client certificates signed by this CA (PEM)")
	f.BoolVar(&o.Insecure, "insecure", false, "allow plaintext, or no --policy, on a non-loopback --listen address (anyone on the network may then act)")
	f.StringVar(&auth.AgentCAFile, "agent-ca", "", "CA (PEM) of agent certificates (URI SAN spiffe://titus-agent/agent/<instance id>), apart from users' (docs/security.md)")
	f.StringVar(&auth.PolicyFile, "policy", "", "authorization policy file (YAML, docs/security.md); without it every caller may do everything")
	f.StringVar(&auth.Token.JWKSFile, "token-jwks", "", "accept bearer tokens (JWT) signed by a key of this JWKS file (read at start)")
	f.StringVar(&auth.Token.Issuer, "token-issuer", "", "iss a bearer token must have")
	f.StringVar(&auth.Token.Audience, "token-audience", "", "aud a bearer token must include")
	f.IntVar(&o.MaxLiveJobs, "max-live-jobs", scheduler.DefaultMaxLiveJobs, "jobs not ended, in total (a service at desired 0 counts)")
	f.IntVar(&o.MaxLiveJobsPerApplication, "max-live-jobs-per-application", scheduler.DefaultMaxLiveJobsPerApplication, "jobs not ended, per application")
	f.StringVar(&lc.S3.Bucket, "logs-bucket", "", "S3 bucket the agents ship task logs to: task logs reads it when a task's agent is gone (docs/logs.md)")
	f.StringVar(&lc.S3.Prefix, "logs-prefix", "", "key prefix of shipped task logs (the agents' logship.prefix)")
	f.StringVar(&lc.S3.Region, "logs-region", "us-east-1", "region of --logs-bucket")
	f.StringVar(&lc.S3.Endpoint, "logs-endpoint", "", "S3 endpoint override, path-style (tests)")
	f.DurationVar(&lc.followInterval, "logs-follow-interval", logarchive.DefaultFollowInterval, "how often task logs -f lists a task's shipped files in the log bucket")
	f.DurationVar(&lc.followGrace, "logs-follow-grace", logarchive.DefaultFollowGrace, "how long task logs -f from the log bucket waits, after the task ended (or its last new file), for its final file")
	f.IntVar(&lc.MaxReadsPerCaller, "logs-max-reads-per-caller", api.DefaultMaxLogReadsPerCaller, "log reads one principal may have open at once")
	f.IntVar(&lc.MaxReads, "logs-max-reads", api.DefaultMaxLogReads, "log reads open at once in total")
	f.StringVar(&lbc.Region, "lb-region", "", "region of ELBv2 target groups: turns on registering service tasks in their jobs' target groups (docs/loadbalancers.md)")
	f.StringVar(&lbc.Endpoint, "lb-endpoint", "", "ELBv2 endpoint override (tests)")
	f.DurationVar(&o.MaxDeregistrationWait, "lb-max-deregistration-wait", scheduler.DefaultMaxDeregistrationWait, "longest a stop waits for a task to drain from its target groups before the kill")
	f.DurationVar(&o.TargetReconcileInterval, "lb-reconcile-interval", scheduler.DefaultTargetReconcileInterval, "how often target groups are compared with the tasks that should be in them, and drift fixed")
	f.IntVar(&o.ExecMaxSessionsPerCaller, "exec-max-sessions-per-caller", api.DefaultExecMaxSessionsPerCaller, "exec sessions one principal may have open through this scheduler at once")
	f.DurationVar(&o.AuditMaxAge, "audit-max-age", audit.DefaultMaxAge, "audit records older than this are removed")
	f.IntVar(&o.AuditMaxRecords, "audit-max-records", audit.DefaultMaxRecords, "audit records kept at most; the oldest are removed first")
	f.IntVar(&o.AuditMaxRecordsPerPrincipal, "audit-max-records-per-principal", 0, "audit records one principal holds at most; past it its own oldest are removed, never another's (0: a tenth of --audit-max-records, at least 1000)")
	f.IntVar(&o.AuditRefusalBurst, "audit-refusal-burst", audit.DefaultRefusalBurst, "refused calls of one principal stored one by one before the rest are only counted")
	f.DurationVar(&o.AuditRefusalEvery, "audit-refusal-every", audit.DefaultRefusalEvery, "past the burst, one more refusal of a principal is stored one by one per this interval")
	f.DurationVar(&o.AuditRefusalWindow, "audit-refusal-window", audit.DefaultRefusalWindow, "refusals not stored one by one are counted in one record per principal and window")
	f.StringVar(&metricsListen, "metrics-listen", metrics.DefaultSchedulerListen, "Prometheus endpoint (empty disables)")
	return cmd
}

// applyConfigFile sets every option the file names and no flag overrides.
func applyConfigFile(path string, changed func(string) bool, o *scheduler.Options, endpoints, metricsListen *string, tlsFiles *tlsconfig.Files, auth *authConfig, lbc *lbConfig, lc *logsConfig) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	var c serveConfig
	if err := yaml.UnmarshalStrict(b, &c); err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	str := func(flag string, dst *string, v string) {
		if v != "" && !changed(flag) {
			*dst = v
		}
	}
	num := func(flag string, dst *int, v int) {
		if v != 0 && !changed(flag) {
			*dst = v
		}
	}
	dur := func(flag string, dst *time.Duration, v string) error {
		if v == "" || changed(flag) {
			return nil
		}
		d, err := time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("config %s: %s: %w", path, flag, err)
		}
		*dst = d
		return nil
	}
	str("listen", &o.Listen, c.Listen)
	str("advertise", &o.Advertise, c.Advertise)
	str("data-dir", &o.DataDir, c.DataDir)
	str("etcd-endpoints", endpoints, strings.Join(c.EtcdEndpoints, ","))
	str("metrics-listen", metricsListen, c.MetricsListen)
	str("tls-cert", &tlsFiles.CertFile, c.TLS.CertFile)
	str("tls-key", &tlsFiles.KeyFile, c.TLS.KeyFile)
	str("tls-client-ca", &tlsFiles.CAFile, c.TLS.CAFile)
	num("max-pending-per-group", &o.MaxPendingPerGroup, c.MaxPendingPerGroup)
	num("max-pending", &o.MaxPendingTotal, c.MaxPending)
	num("max-launching-per-host", &o.MaxLaunchingPerHost, c.MaxLaunchingPerHost)
	num("max-finished-jobs", &o.MaxFinishedJobs, c.MaxFinishedJobs)
	num("max-live-jobs", &o.MaxLiveJobs, c.MaxLiveJobs)
	num("max-live-jobs-per-application", &o.MaxLiveJobsPerApplication, c.MaxLiveJobsPerApplication)
	if c.Exec.MaxSessionsPerCaller < 0 {
		return fmt.Errorf("config %s: exec.maxSessionsPerCaller: must be at least 1, got %d", path, c.Exec.MaxSessionsPerCaller)
	}
	num("exec-max-sessions-per-caller", &o.ExecMaxSessionsPerCaller, c.Exec.MaxSessionsPerCaller)
	if c.MaxRequestBytes > 0 {
		o.MaxRequestBytes = c.MaxRequestBytes
	}
	if c.Insecure && !changed("insecure") {
		o.Insecure = true
	}
	str("policy", &auth.PolicyFile, c.Auth.PolicyFile)
	str("agent-ca", &auth.AgentCAFile, c.Auth.AgentCAFile)
	str("token-jwks", &auth.Token.JWKSFile, c.Auth.Token.JWKSFile)
	str("token-issuer", &auth.Token.Issuer, c.Auth.Token.Issuer)
	str("token-audience", &auth.Token.Audience, c.Auth.Token.Audience)
	auth.Token.UsernameClaim, auth.Token.GroupsClaim = c.Auth.Token.UsernameClaim, c.Auth.Token.GroupsClaim
	if err := dur("finished-job-retention", &o.FinishedJobRetention, c.FinishedJobRetention); err != nil {
		return err
	}
	if err := dur("agent-ttl", &o.AgentTTL, c.AgentTTL); err != nil {
		return err
	}
	if err := dur("election-ttl", &o.ElectionTTL, c.ElectionTTL); err != nil {
		return err
	}
	if c.Logs.MaxReadsPerCaller < 0 || c.Logs.MaxReads < 0 {
		return fmt.Errorf("config %s: logs.maxReadsPerCaller, logs.maxReads: must be at least 1", path)
	}
	str("logs-bucket", &lc.S3.Bucket, c.Logs.S3.Bucket)
	str("logs-prefix", &lc.S3.Prefix, c.Logs.S3.Prefix)
	str("logs-region", &lc.S3.Region, c.Logs.S3.Region)
	str("logs-endpoint", &lc.S3.Endpoint, c.Logs.S3.Endpoint)
	if err := dur("logs-follow-interval", &lc.followInterval, c.Logs.S3.FollowInterval); err != nil {
		return err
	}
	if err := dur("logs-follow-grace", &lc.followGrace, c.Logs.S3.FollowGrace); err != nil {
		return err
	}
	num("logs-max-reads-per-caller", &lc.MaxReadsPerCaller, c.Logs.MaxReadsPerCaller)
	num("logs-max-reads", &lc.MaxReads, c.Logs.MaxReads)
	str("lb-region", &lbc.Region, c.LoadBalancers.Region)
	str("lb-endpoint", &lbc.Endpoint, c.LoadBalancers.Endpoint)
	if err := dur("lb-max-deregistration-wait", &o.MaxDeregistrationWait, c.LoadBalancers.MaxDeregistrationWait); err != nil {
		return err
	}
	if err := dur("lb-reconcile-interval", &o.TargetReconcileInterval, c.LoadBalancers.ReconcileInterval); err != nil {
		return err
	}
	if c.Audit.MaxRecords < 0 || c.Audit.RefusalBurst < 0 || c.Audit.MaxRecordsPerPrincipal < 0 {
		return fmt.Errorf("config %s: audit.maxRecords, audit.maxRecordsPerPrincipal, audit.refusalBurst: must be at least 1", path)
	}
	num("audit-max-records", &o.AuditMaxRecords, c.Audit.MaxRecords)
	num("audit-max-records-per-principal", &o.AuditMaxRecordsPerPrincipal, c.Audit.MaxRecordsPerPrincipal)
	num("audit-refusal-burst", &o.AuditRefusalBurst, c.Audit.RefusalBurst)
	for _, d := range []struct {
		key, flag string
		dst       *time.Duration
		v         string
	}{{"audit.maxAge", "audit-max-age", &o.AuditMaxAge, c.Audit.MaxAge}, {"audit.refusalEvery", "audit-refusal-every", &o.AuditRefusalEvery, c.Audit.RefusalEvery},
		{"audit.refusalWindow", "audit-refusal-window", &o.AuditRefusalWindow, c.Audit.RefusalWindow}} {
		if err := dur(d.flag, d.dst, d.v); err != nil {
			return err
		}
		if *d.dst < 0 {
			return fmt.Errorf("config %s: %s: must be positive, got %s", path, d.key, *d.dst)
		}
	}
	if len(c.CapacityGroups) > 0 && !changed("capacity-groups") {
		o.Groups = c.CapacityGroups
	}
	return nil
}
