package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	"github.com/titus-agent/titus-agent/pkg/agent"
)

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "titus-agent",
		Short:         "Container host agent: every task gets its own VPC IP, IAM role and limits",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&opts.socket, "socket", agent.DefaultConfig().Socket, "the agent's control socket")
	root.PersistentFlags().DurationVar(&opts.timeout, "timeout", 0, "give up after this long (0 = no limit)")
	root.AddCommand(newDaemonCmd(), newTaskCmd(), newHealthCmd(), newVersionCmd(), newConfigCmd(), newVPCCmd(), newMetadataCmd(), newIdentityCmd(), newImageCmd())
	return root
}

func newHealthCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "health",
		Short: "Print every host health check with its detail",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withClient(func(ctx context.Context, c agentv1.AgentClient) error {
				h, err := c.Health(ctx, &agentv1.HealthRequest{})
				if err != nil {
					return err
				}
				if opts.output == "json" {
					return printJSON(cmd.OutOrStdout(), h)
				}
				tw := newTable(cmd.OutOrStdout(), "CHECK", "OK", "DETAIL")
				for _, c := range h.GetChecks() {
					tw.row(c.GetName(), fmt.Sprint(c.GetOk()), c.GetDetail())
				}
				tw.flush()
				if !h.GetHealthy() {
					return &cliError{msg: "host is unhealthy", code: 2}
				}
				return nil
			})
		},
	}
	addOutputFlag(cmd)
	return cmd
}

func newVersionCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print the CLI's and the daemon's versions",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if opts.output != "json" {
				fmt.Fprintf(cmd.OutOrStdout(), "client: %s (%s)\n", agent.Version, agent.Commit)
			}
			return withClient(func(ctx context.Context, c agentv1.AgentClient) error {
				v, err := c.Version(ctx, &agentv1.VersionRequest{})
				if err != nil {
					return err
				}
				if opts.output == "json" {
					type build struct {
						Version string `json:"version"`
						Commit  string `json:"commit"`
					}
					return printAny(cmd.OutOrStdout(), struct {
						Client     build  `json:"client"`
						Daemon     build  `json:"daemon"`
						Containerd string `json:"containerd"`
					}{build{agent.Version, agent.Commit}, build{v.GetVersion(), v.GetCommit()}, v.GetContainerdVersion()})
				}
				fmt.Fprintf(cmd.OutOrStdout(), "daemon: %s (%s)\ncontainerd: %s\n", v.GetVersion(), v.GetCommit(), v.GetContainerdVersion())
				return nil
			})
		},
	}
	addOutputFlag(cmd)
	return cmd
}

func newConfigCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "config", Short: "Configuration tools"}
	var path string
	check := &cobra.Command{
		Use:   "check",
		Short: "Validate a configuration file and print the effective configuration",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := agent.LoadConfig(path)
			if err != nil {
				return err
			}
			return printAny(cmd.OutOrStdout(), cfg)
		},
	}
	check.Flags().StringVarP(&path, "config", "c", "/etc/titus-agent/agent.yaml", "configuration file")
	cmd.AddCommand(check)
	return cmd
}
