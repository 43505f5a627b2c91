package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"google.golang.org/protobuf/types/known/durationpb"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	"github.com/titus-agent/titus-agent/test/testenv"
)

func init() {
	part("health", 60, func(tb *testenv.Standalone, f benchFlags) { benchHealth(tb, 100, 20*time.Second) })
}

// benchHealth measures what health checks cost the agent: its CPU time
// per second of wall time with n tasks (busybox httpd, each in its own
// netns on the local provider) and no checks, then the same n tasks each
// checked every second by tcp, then by http, as ratios of the baseline.
// Exec checks are not in it: their cost is containerd's, the shim's and
// runc's (a process per check), not the agent's.
func benchHealth(tb *testenv.Standalone, n int, window time.Duration) {
	ctx := context.Background()
	ctd := testenv.StartContainerd(tb)
	reg := testenv.StartRegistry(tb)
	image := testenv.PushBusybox(tb, reg, "busybox", "latest")

	b := make([]byte, 3)
	rand.Read(b)
	// A /22: three rounds of n tasks never wait for each other's addresses.
	octet, _ := rand.Int(rand.Reader, big.NewInt(62))
	bridge, cidr := "tbh"+hex.EncodeToString(b), fmt.Sprintf("198.19.%d.0/22", 4*(octet.Int64()+1))
	tb.Cleanup(func() {
		if l, err := netlink.LinkByName(bridge); err == nil {
			netlink.LinkDel(l)
		}
		exec.Command("nft", "delete", "table", "ip", "titus_"+bridge).Run()
		exec.Command("nft", "delete", "table", "inet", "titus_fw_"+bridge).Run()
		exec.Command("nft", "delete", "table", "bridge", "titus_fw_"+bridge).Run()
	})
	cfg := fmt.Sprintf("logLevel: warn\nnetwork:\n  provider: local\n  netnsDir: {{DIR}}/netns\n  dns: [198.18.0.2]\n  local:\n    cidr: %s\n    bridge: %s\n", cidr, bridge)
	a := testenv.StartAgent(tb, testenv.AgentOptions{Containerd: ctd.Address, PlainHTTP: []string{reg.Host}, Config: cfg})
	events, err := watch(ctx, a)
	if err != nil {
		tb.Fatalf("watch: %v", err)
	}

	// Task ids (and so host veth names) unique to the run.
	runID := hex.EncodeToString(b)
	type row struct {
		name   string
		cpuPer time.Duration // agent CPU per second of wall time
	}
	var rows []row
	for round, kind := range []string{"", "tcp", "http"} {
		ids := make([]string, n)
		specs := make([]*agentv1.TaskSpec, n)
		for i := range specs {
			ids[i] = fmt.Sprintf("hc%s-%d-%d", runID, round, i)
			specs[i] = &agentv1.TaskSpec{Id: ids[i], OwnerEmail: "bench@example.com", Image: image,
				Command:   []string{"sh", "-c", "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www"},
				Resources: &agentv1.Resources{CpuMillicores: 100, MemoryMib: 16}, KillGracePeriodSeconds: 1}
			if kind != "" {
				specs[i].HealthCheck = &agentv1.HealthCheckSpec{Kind: kind, Port: 8080, Interval: durationpb.New(time.Second),
					Timeout: durationpb.New(time.Second), HealthyThreshold: 1, UnhealthyThreshold: 3}
				if kind == "http" {
					specs[i].HealthCheck.Path = "/index.html"
				}
			}
		}
		launchAll(ctx, tb, a, events, specs)
		if kind != "" {
			waitAllHealthy(ctx, a, ids)
		}
		time.Sleep(3 * time.Second) // let launch work settle
		c0, t0 := cpuTime(a.Pid()), time.Now()
		time.Sleep(window)
		c1, t1 := cpuTime(a.Pid()), time.Now()
		name := "no checks"
		if kind != "" {
			// Checks that fail (a host too loaded for the tasks to answer
			// within the timeout) still run: the row is still a cost, but
			// say so.
			healthy := countHealth(ctx, a, ids, agentv1.HealthStatus_HEALTH_STATUS_HEALTHY)
			name = fmt.Sprintf("%s check every 1s (%d/%d Healthy)", kind, healthy, n)
		}
		rows = append(rows, row{name, time.Duration(float64(c1-c0) / t1.Sub(t0).Seconds())})
		killAll(ctx, a, ids)
	}

	fmt.Printf("\n== health: agent CPU with %d tasks (busybox httpd, own netns), %s window each (same run)\n", n, window)
	fmt.Printf("%-44s %16s %10s %12s\n", "", "agent CPU/s", "ratio", "per check")
	base := rows[0].cpuPer
	for i, r := range rows {
		per, ratioS := "", "1.00x"
		if i > 0 {
			per = fmt.Sprintf("%.0f µs", float64(r.cpuPer-base)/float64(time.Microsecond)/float64(n))
			ratioS = ratioF(float64(r.cpuPer), float64(base))
		}
		fmt.Printf("%-44s %13.1f ms %10s %12s\n", r.name, float64(r.cpuPer)/float64(time.Millisecond), ratioS, per)
	}
	fmt.Printf("(CPU/s = ms of agent CPU per second of wall time; 1000 ms = one core; per check = extra CPU per check, %d checks/s)\n", n)
}

// launchAll launches specs, 10 at a time, and waits until each runs.
func launchAll(ctx context.Context, tb *testenv.Standalone, a *testenv.Agent, events *eventWaiter, specs []*agentv1.TaskSpec) {
	sem := make(chan struct{}, 10)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for _, s := range specs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if _, err := agentLaunchSpec(ctx, a, events, s); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		tb.Fatalf("launch: %v (and %d more)\n%s", errs[0], len(errs)-1, a.Log())
	}
}

func countHealth(ctx context.Context, a *testenv.Agent, ids []string, want agentv1.HealthStatus) int {
	l, err := a.Client.ListTasks(ctx, &agentv1.ListTasksRequest{})
	if err != nil {
		return 0
	}
	mine := map[string]bool{}
	for _, id := range ids {
		mine[id] = true
	}
	got := 0
	for _, tk := range l.GetTasks() {
		if mine[tk.GetSpec().GetId()] && tk.GetHealth().GetStatus() == want {
			got++
		}
	}
	return got
}

// waitAllHealthy waits (at most a minute) until every task is Healthy.
func waitAllHealthy(ctx context.Context, a *testenv.Agent, ids []string) {
	deadline := time.Now().Add(time.Minute)
	for countHealth(ctx, a, ids, agentv1.HealthStatus_HEALTH_STATUS_HEALTHY) < len(ids) && time.Now().Before(deadline) {
		time.Sleep(500 * time.Millisecond)
	}
}

// cpuTime is a process's user + system CPU time so far.
func cpuTime(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command (which may hold spaces) start after ')'.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	const clkTck = 100 // USER_HZ on Linux
	return time.Duration(utime+stime) * time.Second / clkTck
}
