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

	"github.com/titus-agent/titus-agent/pkg/logging"
	"github.com/titus-agent/titus-agent/pkg/metrics"
	"github.com/titus-agent/titus-agent/pkg/scheduler"
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
}

func newServeCmd() *cobra.Command {
	var (
		o                       scheduler.Options
		endpoints, groups, path string
		metricsListen           string
		tlsFiles                tlsconfig.Files
	)
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run a scheduler replica (embedded etcd in --data-dir unless --etcd-endpoints is given)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			f := cmd.Flags()
			if path != "" {
				if err := applyConfigFile(path, f.Changed, &o, &endpoints, &metricsListen, &tlsFiles); err != nil {
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
	f.DurationVar(&o.AgentTTL, "agent-ttl", 10*time.Second, "an agent silent this long is lost")
	f.DurationVar(&o.ElectionTTL, "election-ttl", 5*time.Second, "leader lease TTL")
	f.IntVar(&o.MaxPendingPerGroup, "max-pending-per-group", 100_000, "queued tasks per capacity group")
	f.IntVar(&o.MaxPendingTotal, "max-pending", 200_000, "queued tasks in total")
	f.IntVar(&o.MaxLaunchingPerHost, "max-launching-per-host", 32, "tasks launching at once per host")
	f.DurationVar(&o.FinishedJobRetention, "finished-job-retention", scheduler.DefaultFinishedJobRetention, "ended jobs and their tasks (and lost agents with no task) are removed this long after they end")
	f.IntVar(&o.MaxFinishedJobs, "max-finished-jobs", scheduler.DefaultMaxFinishedJobs, "ended jobs kept at most; the oldest are removed first")
	f.StringVar(&tlsFiles.CertFile, "tls-cert", "", "serve TLS with this certificate (PEM)")
	f.StringVar(&tlsFiles.KeyFile, "tls-key", "", "private key of --tls-cert (PEM)")
	f.StringVar(&tlsFiles.CAFile, "tls-client-ca", "", "require client certificates signed by this CA (PEM)")
	f.StringVar(&metricsListen, "metrics-listen", metrics.DefaultSchedulerListen, "Prometheus endpoint (empty disables)")
	return cmd
}

// applyConfigFile sets every option the file names and no flag overrides.
func applyConfigFile(path string, changed func(string) bool, o *scheduler.Options, endpoints, metricsListen *string, tlsFiles *tlsconfig.Files) error {
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
	if err := dur("finished-job-retention", &o.FinishedJobRetention, c.FinishedJobRetention); err != nil {
		return err
	}
	if err := dur("agent-ttl", &o.AgentTTL, c.AgentTTL); err != nil {
		return err
	}
	if err := dur("election-ttl", &o.ElectionTTL, c.ElectionTTL); err != nil {
		return err
	}
	if len(c.CapacityGroups) > 0 && !changed("capacity-groups") {
		o.Groups = c.CapacityGroups
	}
	return nil
}
