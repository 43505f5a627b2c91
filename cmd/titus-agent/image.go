package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
)

func newImageCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "image", Short: "List and remove the host's container images"}
	ls := &cobra.Command{
		Use:   "ls",
		Short: "Images, least recently used first, with the tasks holding them",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withClient(func(ctx context.Context, c agentv1.AgentClient) error {
				r, err := c.ListImages(ctx, &agentv1.ListImagesRequest{})
				if err != nil {
					return err
				}
				if opts.output == "json" {
					return printJSON(cmd.OutOrStdout(), r)
				}
				printImages(cmd.OutOrStdout(), r, time.Now())
				return nil
			})
		},
	}
	addOutputFlag(ls)
	rm := &cobra.Command{
		Use:   "rm IMAGE...",
		Short: "Remove images; one a task on this host holds, or a pinned one, is refused",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withClient(func(ctx context.Context, c agentv1.AgentClient) error {
				r, err := c.RemoveImage(ctx, &agentv1.RemoveImageRequest{Images: args})
				if err != nil {
					return err
				}
				for _, n := range r.GetRemoved() {
					fmt.Fprintf(cmd.OutOrStdout(), "removed %s\n", n)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "freed %s\n", bytesHuman(r.GetFreedBytes()))
				return nil
			})
		},
	}
	var minAge time.Duration
	prune := &cobra.Command{
		Use:   "prune",
		Short: "Remove every image no task holds and not pinned, whatever the watermarks",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withClient(func(ctx context.Context, c agentv1.AgentClient) error {
				req := &agentv1.PruneImagesRequest{}
				if cmd.Flags().Changed("min-age") {
					if minAge < 0 {
						return fmt.Errorf("--min-age: must be 0 or more")
					}
					req.MinAge = durationpb.New(minAge)
				}
				r, err := c.PruneImages(ctx, req)
				if err != nil {
					return err
				}
				for _, n := range r.GetRemoved() {
					fmt.Fprintf(cmd.OutOrStdout(), "removed %s\n", n)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "freed %s; image store now %s\n", bytesHuman(r.GetFreedBytes()), bytesHuman(r.GetStoreBytes()))
				return nil
			})
		},
	}
	prune.Flags().DurationVar(&minAge, "min-age", 0, "keep images pulled more recently than this (default: images.gc.minAge)")
	cmd.AddCommand(ls, rm, prune)
	return cmd
}

func printImages(w io.Writer, r *agentv1.ListImagesResponse, now time.Time) {
	t := newTable(w, "IMAGE", "DIGEST", "SIZE", "LAST USED", "PINNED", "USED BY")
	for _, img := range r.GetImages() {
		pinned := ""
		if img.GetPinned() {
			pinned = "yes"
		}
		dg := img.GetDigest()
		if _, hex, ok := strings.Cut(dg, ":"); ok && len(hex) > 12 {
			dg = hex[:12]
		}
		t.row(img.GetName(), dg, bytesHuman(img.GetSizeBytes()),
			now.Sub(img.GetLastUsed().AsTime()).Round(time.Second).String()+" ago", pinned, strings.Join(img.GetUsedBy(), ","))
	}
	t.flush()
	fmt.Fprintf(w, "image store: %s\n", bytesHuman(r.GetStoreBytes()))
}

// bytesHuman is n in binary units.
func bytesHuman(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
