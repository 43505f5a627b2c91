package main

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	"github.com/titus-agent/titus-agent/pkg/isolation"
	"github.com/titus-agent/titus-agent/test/testenv"
)

// benchDisk compares launches with a disk quota against launches without,
// and write throughput inside the quota'd filesystem against the host's.
func benchDisk(tb *testenv.Standalone, n int) {
	ctx := context.Background()
	ctd := testenv.StartContainerd(tb)
	reg := testenv.StartRegistry(tb)
	image := testenv.PushBusybox(tb, reg, "busybox", "latest")
	a := testenv.StartAgent(tb, testenv.AgentOptions{Containerd: ctd.Address, PlainHTTP: []string{reg.Host}, Config: "logLevel: warn\n"})
	events, err := watch(ctx, a)
	if err != nil {
		tb.Fatalf("watch: %v", err)
	}
	spec := func(id string, disk int64, cmd ...string) *agentv1.TaskSpec {
		return &agentv1.TaskSpec{Id: id, OwnerEmail: "bench@example.com", Image: image, Command: cmd,
			Resources: &agentv1.Resources{CpuMillicores: 1000, MemoryMib: 256, DiskMib: disk}, KillGracePeriodSeconds: 1}
	}
	if _, err := agentLaunchSpec(ctx, a, events, spec("warm", 0, "sleep", "1000")); err != nil {
		tb.Fatalf("warm: %v", err)
	}
	var plain, quota sample
	var ids []string
	for i := 0; i < n; i++ {
		d, err := agentLaunchSpec(ctx, a, events, spec(fmt.Sprintf("plain-%d", i), 0, "sleep", "1000"))
		if err != nil {
			tb.Fatalf("launch: %v\n%s", err, a.Log())
		}
		plain = append(plain, d)
		d, err = agentLaunchSpec(ctx, a, events, spec(fmt.Sprintf("quota-%d", i), 1024, "sleep", "1000"))
		if err != nil {
			tb.Fatalf("launch with disk: %v\n%s", err, a.Log())
		}
		quota = append(quota, d)
		ids = append(ids, fmt.Sprintf("plain-%d", i), fmt.Sprintf("quota-%d", i))
		if len(ids) >= 20 {
			killAll(ctx, a, ids)
			ids = nil
		}
	}
	killAll(ctx, a, append(ids, "warm"))
	backend := "disk quota"
	if d, err := isolation.NewDisks(filepath.Join(a.Dir, "disks")); err == nil {
		backend = d.Backend() + " disk quota"
	}
	fmt.Printf("\n== launch latency with a 1 GiB disk quota vs without, %d launches each\n", n)
	fmt.Printf("%-34s %10s %10s\n", "", "p50", "p99")
	fmt.Printf("%-34s %10s %10s\n", "no disk quota", ms(plain.pct(0.5)), ms(plain.pct(0.99)))
	fmt.Printf("%-34s %10s %10s\n", backend, ms(quota.pct(0.5)), ms(quota.pct(0.99)))
	fmt.Printf("%-34s %10s %10s   (target <= 1.20x)\n", "ratio quota / none", ratio(quota.pct(0.5), plain.pct(0.5)), ratio(quota.pct(0.99), plain.pct(0.99)))

	// Throughput: 256 MiB written with fsync, inside the task's root fs.
	// Timed around the exec call; its own overhead is a few ms.
	const script = "dd if=/dev/zero of=/big bs=1M count=256 conv=fsync 2>&1 && rm /big"
	run := func(id string, disk int64) time.Duration {
		if _, err := agentLaunchSpec(ctx, a, events, spec(id, disk, "sleep", "1000")); err != nil {
			tb.Fatalf("launch: %v", err)
		}
		start := time.Now()
		s, err := a.Client.Exec(ctx, &agentv1.ExecRequest{Id: id, Args: []string{"sh", "-c", script}})
		if err != nil {
			tb.Fatalf("exec: %v", err)
		}
		var out strings.Builder
		code := int32(-1)
		for {
			o, err := s.Recv()
			if err != nil {
				break
			}
			out.Write(o.GetStdout())
			if o.GetExited() {
				code = o.GetExitCode()
			}
		}
		took := time.Since(start)
		if code != 0 {
			tb.Fatalf("dd in %s failed (%d): %s", id, code, out.String())
		}
		killAll(ctx, a, []string{id})
		return took
	}
	var host, inQuota sample
	for i := 0; i < 3; i++ {
		host = append(host, run(fmt.Sprintf("tp-host-%d", i), 0))
		inQuota = append(inQuota, run(fmt.Sprintf("tp-quota-%d", i), 1024))
	}
	mbps := func(d time.Duration) string {
		if d == 0 {
			return "n/a"
		}
		return fmt.Sprintf("%.0f MiB/s", 256/d.Seconds())
	}
	fmt.Printf("\n== write throughput, 256 MiB with fsync, median of 3\n")
	fmt.Printf("%-34s %12s\n", "host filesystem (overlay upper)", mbps(host.pct(0.5)))
	fmt.Printf("%-34s %12s\n", "quota'd filesystem ("+strings.TrimSuffix(backend, " disk quota")+")", mbps(inQuota.pct(0.5)))
	fmt.Printf("%-34s %12s\n", "ratio quota / host", ratio(host.pct(0.5), inQuota.pct(0.5)))
}
