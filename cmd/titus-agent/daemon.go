package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/titus-agent/titus-agent/pkg/agent"
	"github.com/titus-agent/titus-agent/pkg/logging"
)

func newDaemonCmd() *cobra.Command {
	var path string
	var o struct {
		stateDir, logDir, containerd, network, localCIDR, bridge, scheduler, upstream, group string
		plainHTTP                                                                            []string
	}
	cmd := &cobra.Command{
		Use:   "daemon",
		Short: "Run the agent (usually under systemd)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := agent.LoadConfig(path)
			if err != nil && path == defaultConfigPath && os.IsNotExist(unwrapAll(err)) {
				cfg, err = agent.DefaultConfig(), nil
			}
			if err != nil {
				return err
			}
			f := cmd.Flags()
			set := func(name string, dst *string, v string) {
				if f.Changed(name) {
					*dst = v
				}
			}
			set("socket", &cfg.Socket, opts.socket)
			set("socket-group", &cfg.SocketGroup, o.group)
			set("state-dir", &cfg.StateDir, o.stateDir)
			set("log-dir", &cfg.LogDir, o.logDir)
			set("containerd", &cfg.Containerd.Address, o.containerd)
			set("network", &cfg.Network.Provider, o.network)
			set("local-cidr", &cfg.Network.Local.CIDR, o.localCIDR)
			set("bridge", &cfg.Network.Local.Bridge, o.bridge)
			set("scheduler", &cfg.Scheduler.Address, o.scheduler)
			set("metadata-upstream", &cfg.Metadata.Upstream, o.upstream)
			if f.Changed("plain-http-registry") {
				cfg.Registries.PlainHTTP = o.plainHTTP
			}
			if err := cfg.Validate(); err != nil {
				return fmt.Errorf("config: %w", err)
			}
			var level slog.Level
			_ = level.UnmarshalText([]byte(cfg.LogLevel))
			log := logging.New(os.Stderr, level)
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			return agent.Run(ctx, cfg, log, nil)
		},
	}
	f := cmd.Flags()
	f.StringVarP(&path, "config", "c", defaultConfigPath, "configuration file (YAML); flags override it")
	f.StringVar(&o.group, "socket-group", "", "group allowed to use the socket besides root")
	f.StringVar(&o.stateDir, "state-dir", "", "durable state directory")
	f.StringVar(&o.logDir, "log-dir", "", "per-task log directory")
	f.StringVar(&o.containerd, "containerd", "", "containerd socket address")
	f.StringVar(&o.network, "network", "", "network provider: none, local or ec2")
	f.StringVar(&o.localCIDR, "local-cidr", "", "local provider: task address range")
	f.StringVar(&o.bridge, "bridge", "", "local provider: bridge name")
	f.StringVar(&o.scheduler, "scheduler", "", "scheduler address (host:port, or the replicas' comma-separated); empty = standalone")
	f.StringVar(&o.upstream, "metadata-upstream", "", "the host's IMDS, e.g. http://127.0.0.1:1338 in tests")
	f.StringSliceVar(&o.plainHTTP, "plain-http-registry", nil, "registry host:port allowed over plain HTTP (repeatable)")
	return cmd
}

const defaultConfigPath = "/etc/titus-agent/agent.yaml"

func unwrapAll(err error) error {
	for {
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return err
		}
		next := u.Unwrap()
		if next == nil {
			return err
		}
		err = next
	}
}
