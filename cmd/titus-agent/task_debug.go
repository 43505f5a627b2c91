package main

import (
	"context"
	"fmt"
	"io"
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
				printReadBack(out, r)
				fmt.Fprintln(out, "Transitions:")
				tw := newTable(out, "  TIME", "STATE", "REASON", "MESSAGE")
				for _, tr := range t.GetTransitions() {
					tw.row("  "+tr.GetTime().AsTime().Local().Format("15:04:05.000"), stateName(tr.GetState()), tr.GetReason(), tr.GetMessage())
				}
				tw.flush()
				printLaunchSteps(out, t.GetTransitions())
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

// printReadBack prints what inspect read inside the task: its network
// namespace's interfaces, routes and metadata listeners, and its root
// filesystem's use against its disk quota.
func printReadBack(out io.Writer, r *agentv1.InspectTaskResponse) {
	if len(r.GetInterfaces()) > 0 {
		fmt.Fprintln(out, "Interfaces (in the task's netns):")
		tw := newTable(out, "  NAME", "STATE", "MTU", "MAC", "ADDRESSES")
		for _, i := range r.GetInterfaces() {
			tw.row("  "+i.GetName(), i.GetState(), strconv.Itoa(int(i.GetMtu())), i.GetMac(), strings.Join(i.GetAddresses(), " "))
		}
		tw.flush()
		fmt.Fprintln(out, "Routes:")
		for _, rt := range r.GetRoutes() {
			fmt.Fprintln(out, "  "+rt)
		}
		ls := "none listening"
		if len(r.GetMetadataListeners()) > 0 {
			ls = strings.Join(r.GetMetadataListeners(), " ")
		}
		fmt.Fprintf(out, "Metadata: %s\n", ls)
	}
	if d := r.GetDisk(); d != nil {
		quota := "no quota (the host's filesystem)"
		if d.GetQuotaMib() > 0 {
			quota = fmt.Sprintf("quota %dMiB", d.GetQuotaMib())
		}
		pct := 0.0
		if d.GetSizeBytes() > 0 {
			pct = 100 * float64(d.GetUsedBytes()) / float64(d.GetSizeBytes())
		}
		fmt.Fprintf(out, "Disk:    %s used of %s (%.0f%%), %s available, %s\n", mib(d.GetUsedBytes()), mib(d.GetSizeBytes()), pct, mib(d.GetAvailableBytes()), quota)
	}
}

func mib(b uint64) string { return fmt.Sprintf("%.1fMiB", float64(b)/(1<<20)) }
