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

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/titus-agent/titus-agent/pkg/scheduler"
)

func newServeCmd() *cobra.Command {
	var (
		o         scheduler.Options
		endpoints string
		groups    string
	)
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run a scheduler replica (embedded etcd in --data-dir unless --etcd-endpoints is given)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
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
			log := slog.New(slog.NewTextHandler(os.Stderr, nil))
			s, err := scheduler.New(o, log)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			log.Info("serving", "addr", s.Addr())
			return s.Run(ctx)
		},
	}
	f := cmd.Flags()
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
	return cmd
}
