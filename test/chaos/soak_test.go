package chaos

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/titus-agent/titus-agent/test/testenv"
)

var (
	flagSeed     = flag.Uint64("chaos.seed", 0, "seed of the fault schedule and the load's choices (0: drawn, and printed)")
	flagBaseline = flag.Duration("chaos.baseline", 30*time.Second, "how long the load runs fault-free first (the launch latency's baseline)")
	flagDuration = flag.Duration("chaos.duration", 110*time.Second, "how long the load and the faults run after the baseline (the drain comes after)")
	flagHosts    = flag.Int("chaos.hosts", 2, "simulated EC2 hosts, each with an agent and its own containerd")
	flagAZs      = flag.String("chaos.azs", "us-east-1a,us-east-1b", "availability zones the hosts are spread over")
	flagRate     = flag.Float64("chaos.rate", 8, "jobs submitted per minute")
	flagMix      = flag.String("chaos.mix", "short=3,long=1,fail=1,oom=1,meta=2,service=2", "job kinds and their weights")
	flagFaults   = flag.String("chaos.faults", "all", "faults to inject: all, none, or a comma-separated list of "+strings.Join(faultKinds, ","))
	flagEvery    = flag.Duration("chaos.fault-every", 10*time.Second, "time between the starts of two faults")
	flagMultiple = flag.Float64("chaos.slo-launch-multiple", 10, "objective: launch latency p99 under faults at most this multiple of the fault-free baseline's")
	flagShare    = flag.Float64("chaos.slo-platform-share", 0.10, "objective: per fault injected, share of the tasks it exposed that end Failed/Lost for a platform reason at most")
	flagAvail    = flag.Float64("chaos.slo-availability", 0.99, "objective: share of CLI calls that succeed, outside leader elections, at least")
)

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "the chaos soak must run as root (containerd, runc, network namespaces)")
		os.Exit(2)
	}
	code := m.Run()
	testenv.RemoveBuilt()
	os.Exit(code)
}

// TestChaosSoak runs the soak (see the package doc) and fails if an
// objective is missed. Its defaults are the short form `make test` runs.
func TestChaosSoak(t *testing.T) {
	seed := *flagSeed
	if seed == 0 {
		seed = rand.Uint64()
	}
	fmt.Printf("CHAOS: seed %d (replay with -chaos.seed %d)\n", seed, seed)
	mix, err := parseMix(*flagMix)
	if err != nil {
		t.Fatal(err)
	}
	kinds, err := parseFaults(*flagFaults)
	if err != nil {
		t.Fatal(err)
	}
	faults := schedule(rand.New(rand.NewPCG(seed, 1)), kinds, *flagDuration, *flagEvery, *flagHosts)
	fmt.Printf("CHAOS: %d faults scheduled\n", len(faults))
	for _, f := range faults {
		fmt.Printf("  +%-5s %s target %d hold %s\n", f.at, f.kind, f.target, f.hold)
	}

	setup := time.Now()
	f := startFleet(t, *flagHosts, strings.Split(*flagAZs, ","))
	fmt.Printf("CHAOS: fleet up in %s\n", time.Since(setup).Round(time.Second))
	l := &load{f: f, rng: rand.New(rand.NewPCG(seed, 2)), mix: mix, dir: t.TempDir(), jobs: map[string]*jobInfo{}}
	o := newObserver(f, l)
	r := &report{seed: seed, baseline: *flagBaseline, duration: *flagDuration, hosts: *flagHosts}
	// On failure every process's whole log is kept (the fleet's own
	// directories go with the run), and its directory printed last.
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, h := range f.hosts {
			t.Logf("== agent %s log (its tail)\n%s", h.sim.InstanceID, h.agent.Log())
		}
		dir, err := f.keepLogs(seed)
		if err != nil {
			t.Logf("CHAOS: %v", err)
		}
		if dir != "" {
			fmt.Printf("CHAOS: every process's whole log is kept in %s\n", dir)
		}
	})

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	obsCtx, stopObs := context.WithCancel(context.Background())
	defer stopObs()
	go o.run(obsCtx)
	go o.watchLeader(obsCtx)
	loadDone := make(chan struct{})
	loadCtx, stopLoad := context.WithTimeout(ctx, *flagBaseline+*flagDuration)
	defer stopLoad()
	go func() { l.run(loadCtx, *flagRate); close(loadDone) }()

	// The same load, fault-free first: its launch latency is what the
	// latency under faults is held to.
	r.baselineStart = time.Now()
	fmt.Printf("CHAOS: fault-free baseline for %s\n", *flagBaseline)
	time.Sleep(*flagBaseline)
	start := time.Now()
	r.start = start
	fmt.Printf("CHAOS: faults from now (+%s)\n", *flagBaseline)
	for i := range faults {
		if d := faults[i].at - time.Since(start); d > 0 {
			time.Sleep(d)
		}
		f.inject(&faults[i], start)
		fmt.Printf("CHAOS: %s\n", faults[i])
	}
	r.faults = faults
	<-loadDone

	// Drain: kill the services, let the batch jobs end, then wait out
	// the retention of ended jobs before looking for leaks.
	fmt.Printf("CHAOS: load stopped at +%s; draining\n", time.Since(start).Round(time.Second))
	l.drain()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		done, left := o.allDone()
		if done || time.Now().After(deadline) {
			r.unfinished = left
			break
		}
		time.Sleep(time.Second)
	}
	stopObs()
	o.pollScheduler(context.Background())
	if r.unfinished > 0 {
		_, r.unfinished = o.allDone()
		r.stuck = o.stuck(ctx)
	}
	time.Sleep(jobRetention + 5*time.Second)
	l.mu.Lock()
	var ids []string
	for id := range l.jobs {
		ids = append(ids, id)
	}
	l.mu.Unlock()
	sort.Strings(ids)
	// Teardown of the last tasks and the warm pools' release settle
	// within a few seconds; look again while something is left.
	for range 10 {
		r.leaks = f.leaks(ids)
		n := 0
		for _, v := range r.leaks {
			n += len(v)
		}
		if n == 0 {
			break
		}
		time.Sleep(3 * time.Second)
	}
	build(o, l, r)
	r.check(objectives{launchMultiple: *flagMultiple, platformShare: *flagShare, availability: *flagAvail})
	r.print(os.Stdout)
	if len(r.missed) > 0 {
		t.Errorf("CHAOS: %d objectives missed (seed %d): %s", len(r.missed), seed, strings.Join(r.missed, "; "))
	}
}
