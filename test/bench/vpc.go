package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	"github.com/titus-agent/titus-agent/pkg/task"
	"github.com/titus-agent/titus-agent/pkg/vpc"
	"github.com/titus-agent/titus-agent/test/testenv"
)

func init() {
	part("vpc", 30, func(tb *testenv.Standalone, f benchFlags) { benchVPC(tb, f.n) })
}

// benchInstanceType has room for the runs below: 7 task ENIs × 29 IPs.
const benchInstanceType = "m5.4xlarge"

// benchVPC measures, on simulated hosts over moto: a task's IP + netns
// setup from a warm pool against the cold path that has to ask EC2 first;
// and LaunchTask → Running with the ec2 network against no network.
func benchVPC(tb *testenv.Standalone, n int) {
	ctx := context.Background()
	moto := testenv.StartMoto(tb)
	hv := testenv.StartHypervisor(tb, moto.Endpoint, testenv.HypervisorOptions{})
	sg, err := hv.EC2.CreateSecurityGroup(ctx, &ec2.CreateSecurityGroupInput{
		GroupName: aws.String("bench"), Description: aws.String("bench"), VpcId: aws.String(hv.VPCID),
	})
	if err != nil {
		tb.Fatalf("create SG: %v", err)
	}
	groups := []string{aws.ToString(sg.GroupId)}
	tb.Cleanup(func() {
		for _, err := range hv.Errors() {
			fmt.Println("hypervisor:", err)
		}
		for _, d := range hv.Duplicates() {
			fmt.Println("hypervisor:", d)
		}
	})

	k := min(n, 50)
	warmHost := hv.AddHost(tb, "us-east-1a", benchInstanceType)
	warm, warmP := benchNetwork(tb, moto.Endpoint, warmHost, groups, vpc.PoolConfig{WarmIPs: k + 1, MinDefaultIPs: k + 1, ReleaseAfter: time.Hour})
	waitPoolFree(tb, warmP, k+1)
	// The first setup on an ENI finds its link and fills its route table: once per ENI, not per task.
	if _, err := warm.Setup(ctx, "warmup", task.NetworkRequest{}); err != nil {
		tb.Fatalf("warm-up setup: %v", err)
	}
	waitPoolFree(tb, warmP, k)
	warmS, warmA := setupLoop(tb, warm, warmP, "warm", k)

	coldHost := hv.AddHost(tb, "us-east-1a", benchInstanceType)
	cold, coldP := benchNetwork(tb, moto.Endpoint, coldHost, groups, vpc.PoolConfig{WarmIPs: -1, ReleaseAfter: time.Hour})
	coldS, coldA := setupLoop(tb, cold, coldP, "cold", k)

	fmt.Printf("\n== task IP + netns setup (Network.Setup), %d sequential tasks each, EC2 = moto\n", k)
	fmt.Printf("%-40s %10s %10s\n", "", "p50", "p99")
	fmt.Printf("%-40s %10s %10s   (target p50 < 15 ms)\n", "warm pool (no EC2 call)", ms(warmS.pct(0.5)), ms(warmS.pct(0.99)))
	fmt.Printf("%-40s %10s %10s\n", "  of which address from the pool", ms(warmA.pct(0.5)), ms(warmA.pct(0.99)))
	fmt.Printf("%-40s %10s %10s\n", "cold path (assign/create ENI in EC2)", ms(coldS.pct(0.5)), ms(coldS.pct(0.99)))
	fmt.Printf("%-40s %10s %10s\n", "  of which address from EC2", ms(coldA.pct(0.5)), ms(coldA.pct(0.99)))
	fmt.Printf("%-40s %10s %10s\n", "ratio cold / warm", ratio(coldS.pct(0.5), warmS.pct(0.5)), ratio(coldS.pct(0.99), warmS.pct(0.99)))

	benchLaunchWithNetwork(tb, moto.Endpoint, hv, groups, min(n, 30))
}

// benchNetwork is the agent's network stack for host, in this process.
func benchNetwork(tb *testenv.Standalone, endpoint string, host *testenv.SimHost, groups []string, pc vpc.PoolConfig) (*vpc.Network, *vpc.EC2Provider) {
	ctx := context.Background()
	dir := tb.TempDir()
	api, err := vpc.NewEC2Client(ctx, vpc.EC2Config{Region: "us-east-1", Endpoint: endpoint, AccessKeyID: "testing", SecretAccessKey: "testing"})
	if err != nil {
		tb.Fatalf("EC2 client: %v", err)
	}
	hi, err := vpc.HostFromEC2(ctx, api, host.InstanceID)
	if err != nil {
		tb.Fatalf("host: %v", err)
	}
	p, err := vpc.NewEC2Provider(ctx, vpc.EC2ProviderConfig{
		API: api, Host: hi, AgentID: "bench", DefaultSecurityGroups: groups, Pool: pc,
		RecordPath: filepath.Join(dir, "vpc-ec2.json"), RefillInterval: 100 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		tb.Fatalf("ec2 provider: %v", err)
	}
	p.Start()
	tb.Cleanup(func() { p.Close() })
	dp, err := vpc.NewDataPlane(vpc.DataPlaneConfig{
		NetNSDir: filepath.Join(dir, "netns"), FilesDir: filepath.Join(dir, "files"),
		HostNetNS: host.NetNSPath(), DNS: []string{"198.18.0.2"},
	})
	if err != nil {
		tb.Fatalf("data plane: %v", err)
	}
	tb.Cleanup(dp.Close)
	n := vpc.NewNetwork(p, dp)
	// Runs before dp.Close: unmounts every task netns even after a failure.
	tb.Cleanup(func() {
		as, _ := p.Allocations(ctx)
		for _, a := range as {
			_ = n.Teardown(ctx, a.TaskID)
		}
	})
	return n, p
}

func waitPoolFree(tb *testenv.Standalone, p *vpc.EC2Provider, want int) {
	deadline := time.Now().Add(2 * time.Minute)
	for {
		free := 0
		for _, pl := range p.PoolStatus(context.Background()).Pools {
			free += pl.Free
		}
		if free >= want {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("warm pool never reached %d free IPs (has %d)", want, free)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// setupLoop sets up k tasks one after another (holding them all, so no
// released address comes back) and tears them down afterwards. It returns
// the whole setup's times and, within them, the address allocation's
// (Setup's own Allocate is then the idempotent lookup).
func setupLoop(tb *testenv.Standalone, nw *vpc.Network, p *vpc.EC2Provider, name string, k int) (total, alloc sample) {
	ctx := context.Background()
	var ids []string
	for i := range k {
		id := fmt.Sprintf("%s-%d", name, i)
		start := time.Now()
		if _, err := p.Allocate(ctx, id, task.NetworkRequest{}); err != nil {
			tb.Fatalf("%s allocate %d: %v", name, i, err)
		}
		alloc = append(alloc, time.Since(start))
		if _, err := nw.Setup(ctx, id, task.NetworkRequest{}); err != nil {
			tb.Fatalf("%s setup %d: %v", name, i, err)
		}
		total = append(total, time.Since(start))
		ids = append(ids, id)
	}
	for _, id := range ids {
		if err := nw.Teardown(ctx, id); err != nil {
			tb.Fatalf("%s teardown %s: %v", name, id, err)
		}
	}
	return total, alloc
}

// benchLaunchWithNetwork: two agents on one containerd, one with no
// network, one with the ec2 provider on a simulated host; launches
// interleaved so both see the same machine noise.
func benchLaunchWithNetwork(tb *testenv.Standalone, endpoint string, hv *testenv.Hypervisor, groups []string, k int) {
	ctx := context.Background()
	ctd := testenv.StartContainerd(tb)
	reg := testenv.StartRegistry(tb)
	image := testenv.PushBusybox(tb, reg, "busybox", "latest")
	common := "logLevel: " + agentLogLevel + "\n"
	plain := testenv.StartAgent(tb, testenv.AgentOptions{Containerd: ctd.Address, PlainHTTP: []string{reg.Host},
		Config: common + "containerd:\n  namespace: bench-plain\n"})
	host := hv.AddHost(tb, "us-east-1a", benchInstanceType)
	withNet := testenv.StartAgent(tb, testenv.AgentOptions{Containerd: ctd.Address, PlainHTTP: []string{reg.Host},
		Config: common + "containerd:\n  namespace: bench-net\n" + host.AgentConfig(testenv.SimAgentNetwork{
			Endpoint: endpoint, SecurityGroups: groups, WarmIPs: 4, MinWarmIPs: 4, DNS: []string{"198.18.0.2"},
		})})
	agents := []*testenv.Agent{plain, withNet}
	waiters := make([]*eventWaiter, len(agents))
	for i, a := range agents {
		w, err := watch(ctx, a)
		if err != nil {
			tb.Fatalf("watch: %v", err)
		}
		waiters[i] = w
		if _, err := agentLaunch(ctx, a, w, image, "warm"); err != nil {
			tb.Fatalf("warm-up launch: %v\n%s", err, a.Log())
		}
		killAll(ctx, a, []string{"warm"})
	}
	waitAgentPoolFree(tb, withNet, 4)
	samples := make([]sample, len(agents))
	ids := make([][]string, len(agents))
	for i := range k {
		for j, a := range agents {
			id := fmt.Sprintf("e2e-%d", i)
			d, err := agentLaunch(ctx, a, waiters[j], image, id)
			if err != nil {
				tb.Fatalf("launch %s: %v\n%s", id, err, a.Log())
			}
			samples[j] = append(samples[j], d)
			ids[j] = append(ids[j], id)
		}
	}
	for j, a := range agents {
		killAll(ctx, a, ids[j])
	}
	none, net := samples[0], samples[1]
	fmt.Printf("\n== LaunchTask -> Running, %d sequential launches each, same containerd and image\n", k)
	fmt.Printf("%-40s %10s %10s\n", "", "p50", "p99")
	fmt.Printf("%-40s %10s %10s\n", "network provider none", ms(none.pct(0.5)), ms(none.pct(0.99)))
	fmt.Printf("%-40s %10s %10s\n", "network provider ec2 (warm pool)", ms(net.pct(0.5)), ms(net.pct(0.99)))
	fmt.Printf("%-40s %10s %10s   (target <= 1.15x)\n", "ratio with / without network", ratio(net.pct(0.5), none.pct(0.5)), ratio(net.pct(0.99), none.pct(0.99)))
}

// waitAgentPoolFree waits until the agent's vpc status shows want free IPs.
func waitAgentPoolFree(tb *testenv.Standalone, a *testenv.Agent, want int) {
	deadline := time.Now().Add(2 * time.Minute)
	for {
		free := -1
		if st, err := a.Client.VPCStatus(context.Background(), &agentv1.VPCStatusRequest{}); err == nil {
			var ps vpc.PoolStatus
			if json.Unmarshal(st.GetStatusJson(), &ps) == nil {
				free = 0
				for _, p := range ps.Pools {
					free += p.Free
				}
			}
		}
		if free >= want {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("agent's warm pool never reached %d free IPs (has %d)\n%s", want, free, a.Log())
		}
		time.Sleep(100 * time.Millisecond)
	}
}
