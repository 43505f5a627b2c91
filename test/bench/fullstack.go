package main

import (
	"context"
	"flag"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/pkg/namespaces"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	"github.com/titus-agent/titus-agent/pkg/isolation"
	"github.com/titus-agent/titus-agent/pkg/runtime"
	"github.com/titus-agent/titus-agent/test/testenv"
)

func init() {
	part("fullstack", 5, func(tb *testenv.Standalone, f benchFlags) { benchFullStack(tb, f.n, f.concurrent) })
}

// fullPath is one way of launching the same image, measured in the same
// run as the others.
type fullPath struct {
	name   string
	tag    string // prefix of its task ids
	launch func(ctx context.Context, id string) (time.Duration, error)
	// done tears down what launch started (ids it launched).
	done func(ctx context.Context, ids []string)
	// agent, if the path is an agent's: its tasks' launch steps are read.
	agent *testenv.Agent
	// events are the agent's task events (agent paths only).
	events *eventWaiter
	lat    sample
	ids    []string
	steps  map[string]sample // step (or transition) name -> ready offset from Accepted
	took   map[string]sample // step name -> duration
}

// benchFullStack is the one figure for the whole stack: bare containerd
// create+start; an agent with no extras; an agent with everything on (ec2
// provider from a warm pool on a simulated host, a loop-ext4 disk,
// bandwidth, metadata with a role), with the task's own user namespace off
// and on. Same containerd, same image, launches interleaved so every path
// sees the same machine noise; figures are ratios to bare containerd.
// launchPools is -pools: launch pools of the full-stack agent.
var launchPools int

func init() {
	flag.IntVar(&launchPools, "pools", 0, "fullstack: the full agent's launch pools, this many ready namespaces and 1 GiB disks (0: off)")
}

func benchFullStack(tb *testenv.Standalone, n, concurrent int) {
	ctx := context.Background()
	moto := testenv.StartMoto(tb)
	mock := testenv.StartIMDSMock(tb)
	hv := testenv.StartHypervisor(tb, moto.Endpoint, testenv.HypervisorOptions{})
	sg, err := hv.EC2.CreateSecurityGroup(ctx, &ec2.CreateSecurityGroupInput{
		GroupName: aws.String("bench-full"), Description: aws.String("bench"), VpcId: aws.String(hv.VPCID),
	})
	if err != nil {
		tb.Fatalf("create SG: %v", err)
	}
	ctd := testenv.StartContainerd(tb)
	reg := testenv.StartRegistry(tb)
	image := testenv.PushBusybox(tb, reg, "busybox", "latest")
	c, err := containerd.New(ctd.Address)
	if err != nil {
		tb.Fatalf("containerd: %v", err)
	}
	defer c.Close()
	bctx := namespaces.WithNamespace(ctx, "bench-bare")
	rt, err := runtime.New(ctx, runtime.Config{Address: ctd.Address, Namespace: "bench-bare", PlainHTTPRegistries: []string{reg.Host},
		LogDir: tb.TempDir(), LoggerBinary: testenv.LoggerBinary(tb)})
	if err != nil {
		tb.Fatalf("runtime: %v", err)
	}
	defer rt.Close()
	if _, err := rt.Pull(ctx, image); err != nil {
		tb.Fatalf("pull: %v", err)
	}
	img, err := c.GetImage(bctx, image)
	if err != nil {
		tb.Fatalf("image: %v", err)
	}

	common := "logLevel: " + agentLogLevel + "\n"
	var plainProf, fullProf *profiler
	if profileDir != "" {
		plainProf = &profiler{name: "plain", addr: freeLoopbackAddr()}
		fullProf = &profiler{name: "full", addr: freeLoopbackAddr()}
	}
	plain := testenv.StartAgent(tb, testenv.AgentOptions{Containerd: ctd.Address, PlainHTTP: []string{reg.Host},
		Config: common + debugConfig(plainProf.address()) + "containerd:\n  namespace: bench-plain\n"})
	host := hv.AddHost(tb, "us-east-1a", benchInstanceType)
	// Room for what one round holds: a batch per path, with the warm pool
	// refilled between batches.
	batch := max(concurrent, 10)
	// Unprivileged task roots (user namespaces) need a disk directory
	// others may search.
	usernsDir, err := os.MkdirTemp("", "titus-bench-userns-")
	if err != nil {
		tb.Fatalf("userns dir: %v", err)
	}
	tb.Cleanup(func() { testenv.RemoveDir(usernsDir) })
	if err := os.Chmod(usernsDir, 0o711); err != nil {
		tb.Fatalf("userns dir: %v", err)
	}
	// -pools N: the full agent keeps N namespaces and N disks of the
	// tasks' size ready (network.namespacePool, isolation.diskPool).
	var diskPool string
	if launchPools > 0 {
		diskPool = fmt.Sprintf("  diskPool: [{sizeMiB: 1024, count: %d}]\n", launchPools)
	}
	netConfig := strings.Replace(host.AgentConfig(testenv.SimAgentNetwork{
		Endpoint: moto.Endpoint, SecurityGroups: []string{aws.ToString(sg.GroupId)},
		WarmIPs: 2*batch + 2, MinWarmIPs: 2*batch + 2, ReuseCooldown: time.Second, DNS: []string{"198.18.0.2"},
	}), "network:\n", fmt.Sprintf("network:\n  namespacePool: %d\n", launchPools), 1)
	full := testenv.StartAgent(tb, testenv.AgentOptions{Containerd: ctd.Address, PlainHTTP: []string{reg.Host},
		Config: common + debugConfig(fullProf.address()) + "containerd:\n  namespace: bench-full\nisolation:\n  diskDir: " + filepath.Join(usernsDir, "disks") + "\n" + diskPool + fmt.Sprintf(`metadata:
  enabled: true
  upstream: %s
  stsEndpoint: %s
  region: us-east-1
  accessKeyID: testing
  secretAccessKey: testing
`, mock.Endpoint, moto.Endpoint) + netConfig})

	plainEv, err := watch(ctx, plain)
	if err != nil {
		tb.Fatalf("watch: %v", err)
	}
	fullEv, err := watch(ctx, full)
	if err != nil {
		tb.Fatalf("watch: %v", err)
	}
	spec := func(id string, extras, userNS bool) *agentv1.TaskSpec {
		s := &agentv1.TaskSpec{Id: id, OwnerEmail: "bench@example.com", Image: image, Command: []string{"sleep", "1000"},
			Resources: &agentv1.Resources{CpuMillicores: 100, MemoryMib: 32}, KillGracePeriodSeconds: 1}
		if extras {
			s.Resources.DiskMib = 1024
			s.Resources.NetworkMbps = 100
			s.IamRoleArn = "arn:aws:iam::123456789012:role/bench"
		}
		if userNS {
			s.Labels = map[string]string{isolation.LabelUserNS: "true"}
		}
		return s
	}
	agentPath := func(name, tag string, a *testenv.Agent, ev *eventWaiter, extras, userNS bool) *fullPath {
		return &fullPath{name: name, tag: tag, agent: a, events: ev,
			launch: func(ctx context.Context, id string) (time.Duration, error) {
				return agentLaunchSpec(ctx, a, ev, spec(id, extras, userNS))
			},
			done: func(ctx context.Context, ids []string) { killAll(ctx, a, ids) },
		}
	}
	var bareMu sync.Mutex
	bareCleanups := map[string]func(){}
	bare := &fullPath{name: "bare containerd create+start", tag: "bare",
		launch: func(ctx context.Context, id string) (time.Duration, error) {
			d, cleanup, err := bareLaunch(bctx, c, img, id)
			if err == nil {
				bareMu.Lock()
				bareCleanups[id] = cleanup
				bareMu.Unlock()
			}
			return d, err
		},
		done: func(ctx context.Context, ids []string) {
			var wg sync.WaitGroup
			for _, id := range ids {
				bareMu.Lock()
				f := bareCleanups[id]
				delete(bareCleanups, id)
				bareMu.Unlock()
				if f != nil {
					wg.Go(f)
				}
			}
			wg.Wait()
		},
	}
	paths := []*fullPath{
		bare,
		agentPath("agent, no extras", "plain", plain, plainEv, false, false),
		agentPath("agent, everything, userns off", "full", full, fullEv, true, false),
		agentPath("agent, everything, userns on", "userns", full, fullEv, true, true),
	}
	tb.Cleanup(func() { bare.done(ctx, slices.Collect(maps.Keys(bareCleanups))) })

	// Warm every path: image unpacked in each namespace, shims cached,
	// the ENI's link found and its route table filled.
	for _, p := range paths {
		id := p.tag + "-warm"
		if _, err := p.launch(ctx, id); err != nil {
			tb.Fatalf("warm-up %s: %v\n%s", p.name, err, agentLog(p.agent))
		}
		p.done(ctx, []string{id})
	}
	waitAgentPoolFree(tb, full, 2*batch)

	// Sequential: one launch of each path in turn; every batch's tasks are
	// killed (and their teardown waited for) before the next batch.
	plainProf.start()
	fullProf.start()
	for i := range n {
		for _, p := range paths {
			id := fmt.Sprintf("%s-%d", p.tag, i)
			d, err := p.launch(ctx, id)
			if err != nil {
				tb.Fatalf("%s launch %s: %v\n%s", p.name, id, err, agentLog(p.agent))
			}
			p.lat = append(p.lat, d)
			p.ids = append(p.ids, id)
		}
		if (i+1)%batch == 0 || i == n-1 {
			for _, p := range paths {
				p.recordSteps(ctx, p.ids[max(0, len(p.ids)-batch):])
			}
			finishBatch(ctx, tb, paths, full, 2*batch)
		}
	}
	plainProf.finish()
	fullProf.finish()
	seqLat := make([]sample, len(paths))
	for i, p := range paths {
		seqLat[i], p.lat = p.lat, nil
	}

	// Concurrent: each path launches `concurrent` tasks at once, paths in
	// turn; the wall time is from the first request to the last Running.
	walls := make([]time.Duration, len(paths))
	for round := range 2 {
		for j, p := range paths {
			var wg sync.WaitGroup
			var mu sync.Mutex
			start := time.Now()
			for k := range concurrent {
				id := fmt.Sprintf("%s-c%d-%d", p.tag, round, k)
				wg.Go(func() {
					d, err := p.launch(ctx, id)
					if err != nil {
						tb.Fatalf("%s concurrent launch %s: %v\n%s", p.name, id, err, agentLog(p.agent))
					}
					mu.Lock()
					p.lat = append(p.lat, d)
					p.ids = append(p.ids, id)
					mu.Unlock()
				})
			}
			wg.Wait()
			walls[j] += time.Since(start)
			finishBatch(ctx, tb, []*fullPath{p}, full, 2*batch)
		}
	}

	b := paths[0]
	fmt.Printf("\n== full stack: %d sequential launches per path, interleaved; %d concurrent x 2 rounds; same containerd and image\n", n, concurrent)
	fmt.Printf("%-32s %9s %9s %7s %7s %9s | %9s %9s %9s %7s\n", "sequential / concurrent", "p50", "p99", "x p50", "x p99", "launch/s", "c p50", "c p99", "c wall", "x wall")
	for i, p := range paths {
		mean := seqLat[i].mean()
		fmt.Printf("%-32s %9s %9s %7s %7s %9.1f | %9s %9s %9s %7s\n", p.name,
			ms(seqLat[i].pct(0.5)), ms(seqLat[i].pct(0.99)), ratio(seqLat[i].pct(0.5), seqLat[0].pct(0.5)), ratio(seqLat[i].pct(0.99), seqLat[0].pct(0.99)),
			1/mean.Seconds(), ms(p.lat.pct(0.5)), ms(p.lat.pct(0.99)), ms(walls[i]/2), ratio(walls[i], walls[0]))
	}
	fmt.Printf("targets: everything / bare p50 <= 1.15x, p99 <= 1.30x; concurrent wall <= 1.00x (x = ratio to %s)\n", b.name)
	fmt.Printf("\n== launch steps, sequential medians: READY is from Accepted, TOOK the step's own time\n")
	fmt.Printf("%-20s", "step")
	for _, p := range paths[1:] {
		fmt.Printf(" | %-30s", p.name)
	}
	fmt.Println()
	names := map[string]bool{}
	for _, p := range paths[1:] {
		for k := range p.steps {
			names[k] = true
		}
	}
	order := slices.Collect(maps.Keys(names))
	sort.Slice(order, func(i, j int) bool { return paths[2].steps[order[i]].pct(0.5) < paths[2].steps[order[j]].pct(0.5) })
	for _, k := range order {
		fmt.Printf("%-20s", k)
		for _, p := range paths[1:] {
			if s, ok := p.steps[k]; ok {
				fmt.Printf(" | ready %9s took %9s", ms(s.pct(0.5)), tookStr(p.took[k]))
			} else {
				fmt.Printf(" | %-30s", "-")
			}
		}
		fmt.Println()
	}
	benchColdPull(ctx, tb, c, reg, paths[0], paths[2], func(id, image string) *agentv1.TaskSpec {
		s := spec(id, true, false)
		s.Image = image
		return s
	})
}

// coldImages is how many fresh images the cold part pulls per path, and
// coldLayers how many 1 MiB layers of random data each has on top of
// busybox's.
const coldImages, coldLayers = 3, 8

// benchColdPull launches images no one pulled before: bare containerd
// pulls (unpacking, containerd's default concurrency) then creates and
// starts; the full agent launches (its image.fetch step is the pull).
// Pull time is printed apart from launch time.
func benchColdPull(ctx context.Context, tb *testenv.Standalone, c *containerd.Client, reg *testenv.Registry, bare, full *fullPath, spec func(id, image string) *agentv1.TaskSpec) {
	var barePull, bareRun, agentFetch, agentTotal, agentRest sample
	bctx := namespaces.WithNamespace(ctx, "bench-bare")
	for i := range coldImages {
		ref := testenv.PushBusyboxLayers(tb, reg, "cold-bare", fmt.Sprint(i), coldLayers, 1<<20)
		start := time.Now()
		img, err := c.Pull(bctx, ref, containerd.WithPullUnpack, containerd.WithResolver(docker.NewResolver(docker.ResolverOptions{
			Hosts: docker.ConfigureDefaultRegistries(docker.WithPlainHTTP(docker.MatchAllHosts)),
		})))
		if err != nil {
			tb.Fatalf("cold pull %s: %v", ref, err)
		}
		barePull = append(barePull, time.Since(start))
		d, cleanup, err := bareLaunch(bctx, c, img, fmt.Sprintf("bare-cold-%d", i))
		if err != nil {
			tb.Fatalf("cold launch: %v", err)
		}
		bareRun = append(bareRun, d)
		cleanup()

		ref = testenv.PushBusyboxLayers(tb, reg, "cold-agent", fmt.Sprint(i), coldLayers, 1<<20)
		id := fmt.Sprintf("full-cold-%d", i)
		d, err = agentLaunchSpec(ctx, full.agent, full.events, spec(id, ref))
		if err != nil {
			tb.Fatalf("cold launch %s: %v", id, err)
		}
		agentTotal = append(agentTotal, d)
		var fetch time.Duration
		if t, err := full.agent.Client.GetTask(ctx, &agentv1.GetTaskRequest{Id: id}); err == nil {
			for _, tr := range t.GetTransitions() {
				for _, s := range tr.GetSteps() {
					if s.GetName() == "image.fetch" {
						fetch += s.GetTook().AsDuration()
					}
				}
			}
		}
		agentFetch = append(agentFetch, fetch)
		agentRest = append(agentRest, d-fetch)
		full.done(ctx, []string{id})
	}
	fmt.Printf("\n== cold images: %d per path, busybox + %d layers of 1 MiB, medians\n", coldImages, coldLayers)
	fmt.Printf("%-32s %12s %12s %12s\n", "", "pull", "launch", "total")
	fmt.Printf("%-32s %12s %12s %12s\n", bare.name, ms(barePull.pct(0.5)), ms(bareRun.pct(0.5)), ms(barePull.pct(0.5)+bareRun.pct(0.5)))
	fmt.Printf("%-32s %12s %12s %12s   (pull = its image.fetch step; launch = total less it)\n", full.name, ms(agentFetch.pct(0.5)), ms(agentRest.pct(0.5)), ms(agentTotal.pct(0.5)))
}

func tookStr(s sample) string {
	if len(s) == 0 {
		return "-"
	}
	return ms(s.pct(0.5))
}

// recordSteps reads the launch steps of ids from the agent's records.
func (p *fullPath) recordSteps(ctx context.Context, ids []string) {
	if p.agent == nil {
		return
	}
	if p.steps == nil {
		p.steps, p.took = map[string]sample{}, map[string]sample{}
	}
	for _, id := range ids {
		t, err := p.agent.Client.GetTask(ctx, &agentv1.GetTaskRequest{Id: id})
		if err != nil || len(t.GetTransitions()) == 0 {
			continue
		}
		t0 := t.GetTransitions()[0].GetTime().AsTime()
		for _, tr := range t.GetTransitions()[1:] {
			if tr.GetState() > agentv1.TaskState_TASK_STATE_RUNNING {
				break
			}
			name := "=" + stateName(tr.GetState())
			p.steps[name] = append(p.steps[name], tr.GetTime().AsTime().Sub(t0))
			for _, s := range tr.GetSteps() {
				took := s.GetTook().AsDuration()
				p.steps[s.GetName()] = append(p.steps[s.GetName()], s.GetStart().AsTime().Add(took).Sub(t0))
				p.took[s.GetName()] = append(p.took[s.GetName()], took)
			}
		}
	}
}

func stateName(s agentv1.TaskState) string {
	n := s.String()
	if len(n) > len("TASK_STATE_") {
		return n[len("TASK_STATE_"):]
	}
	return n
}

// finishBatch ends what the paths launched and waits until the full
// agent's warm pool is back to want free addresses.
func finishBatch(ctx context.Context, tb *testenv.Standalone, paths []*fullPath, full *testenv.Agent, want int) {
	var wg sync.WaitGroup
	for _, p := range paths {
		ids := p.ids
		p.ids = nil
		wg.Go(func() { p.done(ctx, ids) })
	}
	wg.Wait()
	waitAgentPoolFree(tb, full, want)
}

func agentLog(a *testenv.Agent) string {
	if a == nil {
		return ""
	}
	return a.Log()
}
