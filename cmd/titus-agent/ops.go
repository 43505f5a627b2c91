package main

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"slices"

	"github.com/spf13/cobra"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
)

func newVPCCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "vpc", Short: "Inspect and clean up the host's task networking"}
	status := &cobra.Command{
		Use:   "status",
		Short: "ENIs, security-group sets, IPs free/used per ENI, pool targets",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withClient(func(ctx context.Context, c agentv1.AgentClient) error {
				st, err := c.VPCStatus(ctx, &agentv1.VPCStatusRequest{})
				if err != nil {
					return err
				}
				var v any
				if err := json.Unmarshal(st.GetStatusJson(), &v); err != nil {
					return fmt.Errorf("decode status: %w", err)
				}
				if opts.output == "json" {
					return printAny(cmd.OutOrStdout(), map[string]any{"provider": st.GetProvider(), "status": v})
				}
				fmt.Fprintf(cmd.OutOrStdout(), "provider: %s\n", st.GetProvider())
				return printYAMLish(cmd.OutOrStdout(), v, "")
			})
		},
	}
	addOutputFlag(status)
	var apply bool
	gc := &cobra.Command{
		Use:   "gc",
		Short: "Free addresses, namespaces and ENIs no task holds (dry run unless --apply)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withClient(func(ctx context.Context, c agentv1.AgentClient) error {
				r, err := c.VPCGC(ctx, &agentv1.VPCGCRequest{Apply: apply})
				if err != nil {
					return err
				}
				verb := "would free"
				if apply {
					verb = "freed"
				}
				if len(r.GetActions()) == 0 {
					fmt.Fprintln(cmd.OutOrStdout(), "nothing to free")
				}
				for _, a := range r.GetActions() {
					fmt.Fprintf(cmd.OutOrStdout(), "%s: %s\n", verb, a)
				}
				return nil
			})
		},
	}
	gc.Flags().BoolVar(&apply, "apply", false, "really free (default: dry run)")
	cmd.AddCommand(status, gc)
	return cmd
}

func newMetadataCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "metadata", Short: "See the EC2 metadata a task sees"}
	get := &cobra.Command{
		Use:     "get TASK PATH",
		Short:   "Fetch what the task would see at a metadata path",
		Example: "  titus-agent metadata get my-task /latest/meta-data/local-ipv4",
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withClient(func(ctx context.Context, c agentv1.AgentClient) error {
				r, err := c.MetadataGet(ctx, &agentv1.MetadataGetRequest{TaskId: args[0], Path: args[1]})
				if err != nil {
					return err
				}
				os.Stdout.Write(r.GetBody())
				if n := len(r.GetBody()); n > 0 && r.GetBody()[n-1] != '\n' {
					fmt.Println()
				}
				if r.GetStatus() != 200 {
					return &cliError{msg: fmt.Sprintf("HTTP %d", r.GetStatus()), code: 1}
				}
				return nil
			})
		},
	}
	cmd.AddCommand(get)
	return cmd
}

// printYAMLish prints decoded JSON as an indented outline.
func printYAMLish(w interface{ Write([]byte) (int, error) }, v any, indent string) error {
	switch t := v.(type) {
	case map[string]any:
		for _, k := range slices.Sorted(maps.Keys(t)) {
			val := t[k]
			switch val.(type) {
			case map[string]any, []any:
				fmt.Fprintf(w, "%s%s:\n", indent, k)
				printYAMLish(w, val, indent+"  ")
			default:
				fmt.Fprintf(w, "%s%s: %v\n", indent, k, val)
			}
		}
	case []any:
		for _, val := range t {
			switch val.(type) {
			case map[string]any, []any:
				fmt.Fprintf(w, "%s-\n", indent)
				printYAMLish(w, val, indent+"  ")
			default:
				fmt.Fprintf(w, "%s- %v\n", indent, val)
			}
		}
	default:
		fmt.Fprintf(w, "%s%v\n", indent, t)
	}
	return nil
}
