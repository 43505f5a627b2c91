package main

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
)

func newTaskInspectCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "inspect ID",
		Short: "Show what the runtime really applied: OCI spec (secrets redacted), mounts, cgroup and limits, network",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withClient(func(ctx context.Context, c agentv1.AgentClient) error {
				r, err := c.InspectTask(ctx, &agentv1.InspectTaskRequest{Id: args[0]})
				if err != nil {
					return err
				}
				if opts.output == "json" {
					return printJSON(cmd.OutOrStdout(), r)
				}
				out := cmd.OutOrStdout()
				t := r.GetTask()
				fmt.Fprintf(out, "ID:      %s\nState:   %s %s\nPID:     %d\nCgroup:  %s\n", t.GetSpec().GetId(), stateName(t.GetState()), t.GetReason(), r.GetPid(), r.GetCgroup())
				if len(r.GetLimits()) > 0 {
					fmt.Fprintln(out, "Limits (read back):")
					for _, k := range slices.Sorted(maps.Keys(r.GetLimits())) {
						fmt.Fprintf(out, "  %-24s %s\n", k, r.GetLimits()[k])
					}
				}
				if n := t.GetNetwork(); n != nil {
					fmt.Fprintf(out, "Network:\n  netns   %s\n  ipv4    %s\n  ipv6    %s\n  eni     %s %s\n", n.GetNetns(), n.GetIpv4(), n.GetIpv6(), n.GetEniId(), n.GetMac())
				}
				fmt.Fprintln(out, "Transitions:")
				tw := newTable(out, "  TIME", "STATE", "REASON", "MESSAGE")
				for _, tr := range t.GetTransitions() {
					tw.row("  "+tr.GetTime().AsTime().Local().Format("15:04:05.000"), stateName(tr.GetState()), tr.GetReason(), tr.GetMessage())
				}
				tw.flush()
				if s := r.GetOciSpecJson(); s != "" {
					fmt.Fprintln(out, "OCI spec:")
					fmt.Fprintln(out, s)
				}
				return nil
			})
		},
	}
	addOutputFlag(cmd)
	return cmd
}

func newTaskTopCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "top ID",
		Short: "List the processes of a task's cgroup",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withClient(func(ctx context.Context, c agentv1.AgentClient) error {
				r, err := c.TopTask(ctx, &agentv1.TopTaskRequest{Id: args[0]})
				if err != nil {
					return err
				}
				if opts.output == "json" {
					return printJSON(cmd.OutOrStdout(), r)
				}
				tw := newTable(cmd.OutOrStdout(), "PID", "HOST PID", "PPID", "UID", "CPU", "RSS", "COMMAND")
				for _, p := range r.GetProcesses() {
					tw.row(strconv.Itoa(int(p.GetPid())), strconv.Itoa(int(p.GetHostPid())), strconv.Itoa(int(p.GetPpid())), strconv.Itoa(int(p.GetUid())),
						fmt.Sprintf("%.2fs", p.GetCpuSeconds()), fmt.Sprintf("%.1fMiB", float64(p.GetRssBytes())/(1<<20)), strings.TrimSpace(p.GetCommand()))
				}
				tw.flush()
				return nil
			})
		},
	}
	addOutputFlag(cmd)
	return cmd
}
