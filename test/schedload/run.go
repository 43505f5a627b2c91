package schedload

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	goruntime "runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
	"github.com/titus-agent/titus-agent/pkg/schedlink"
	"github.com/titus-agent/titus-agent/pkg/scheduler"
)

// Options size a load run.
type Options struct {
	Agents, AZs, Tasks int
	// AgentTTL of the scheduler (default 10s): bounds dead-agent detection.
	AgentTTL time.Duration
	// HeartbeatInterval of the agents (default 1s).
	HeartbeatInterval time.Duration
	// Timeout bounds the whole run (default 4m).
	Timeout time.Duration
	// DataDir for the embedded etcd (default: a temporary directory, removed after).
	DataDir string
	// ElectionTTL of the scheduler's leader lease (default 15s: the run
	// measures placement, not failover, on a machine that may be busy).
	ElectionTTL time.Duration
	// Log gets the scheduler's log (default: discarded).
	Log *slog.Logger
	// Constrained runs Tasks more tasks after the first run, each job with
	// a hard constraint, a soft one and zoneBalance hard.
	Constrained bool
	// ProfileDir, if set, gets CPU, mutex and block profiles of each
	// placement phase (profile.go).
	ProfileDir string
}

// Report is what a run measured.
type Report struct {
	Agents, AZs, Tasks int
	Placed             int
	PlaceDuration      time.Duration
	PlacementsPerSec   float64
	// PlaceCPU is the CPU time the whole process (scheduler, etcd and the
	// simulated agents) used while placing: on a shared machine the rate
	// per CPU second moves less with other load than the rate per second.
	PlaceCPU          time.Duration
	SubmitToLaunchP50 time.Duration
	SubmitToLaunchP99 time.Duration
	HeartbeatsPerSec  float64
	// IdleCPUPerSec is the process's CPU per second while the placed fleet
	// only heartbeats (every task placed, nothing changing): what keeping
	// 5,000 agents' sessions costs, the simulated agents' side included.
	IdleCPUPerSec      time.Duration
	DeadAgentDetection time.Duration
	RSSBytes           int64
	HeapBytes          int64
	// EtcdPutsPerSec is the baseline: raw etcd writes of task-sized records
	// in the same transaction batching, measured in the same run.
	EtcdPutsPerSec float64
	// Constrained is the second run, in the same process on the same
	// fleet, with a hard constraint, a soft one and zoneBalance hard on
	// every job (zero when Options.Constrained is off).
	Constrained ConstrainedReport
}

// ConstrainedReport is the constrained run: its rate and what placement
// honoured.
type ConstrainedReport struct {
	Tasks, Placed    int
	PlaceDuration    time.Duration
	PlacementsPerSec float64
	PlaceCPU         time.Duration
	// Constraints are the placement of every job of the run.
	Constraints string
	// Checked: every task on a host matching the hard constraint, each
	// job's zones within one task of each other; Preferred is the share of
	// tasks on hosts matching the soft constraint (half the fleet does).
	Checked   bool
	Preferred float64
}

// Print writes the report as a table, with the targets of the issue and
// placement as a ratio of the raw etcd write rate measured in the same run.
func (r Report) Print(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "scheduler\tvalue\ttarget / baseline\n")
	fmt.Fprintf(tw, "agents / AZs / tasks\t%d / %d / %d\t\n", r.Agents, r.AZs, r.Tasks)
	fmt.Fprintf(tw, "raw etcd writes/s (baseline)\t%.0f\tsame records, same txn batching\n", r.EtcdPutsPerSec)
	ratio := "n/a"
	if r.EtcdPutsPerSec > 0 {
		ratio = fmt.Sprintf("%.2fx of raw etcd", r.PlacementsPerSec/r.EtcdPutsPerSec)
	}
	fmt.Fprintf(tw, "placements/s (durable commit)\t%.0f (%d in %s)\t>= 4000; %s\n", r.PlacementsPerSec, r.Placed, r.PlaceDuration.Round(time.Millisecond), ratio)
	if c := r.Constrained; c.Tasks > 0 {
		cr := "n/a"
		if r.PlacementsPerSec > 0 {
			cr = fmt.Sprintf("%.2fx of unconstrained", c.PlacementsPerSec/r.PlacementsPerSec)
		}
		fmt.Fprintf(tw, "constrained placements/s\t%.0f (%d in %s)\t>= 10000 and >= 0.7x; %s\n", c.PlacementsPerSec, c.Placed, c.PlaceDuration.Round(time.Millisecond), cr)
		if r.PlaceCPU > 0 && c.PlaceCPU > 0 {
			u, k := float64(r.Placed)/r.PlaceCPU.Seconds(), float64(c.Placed)/c.PlaceCPU.Seconds()
			fmt.Fprintf(tw, "  placements per CPU second (process)\t%.0f unconstrained, %.0f constrained\t%.2fx; CPU %s / %s of %s / %s wall\n",
				u, k, k/u, r.PlaceCPU.Round(time.Millisecond), c.PlaceCPU.Round(time.Millisecond), r.PlaceDuration.Round(time.Millisecond), c.PlaceDuration.Round(time.Millisecond))
		}
		fmt.Fprintf(tw, "  every job's placement\t%s\t\n", c.Constraints)
		fmt.Fprintf(tw, "  honoured (hard + zone balance) / on preferred hosts\t%v / %.0f%%\thalf the fleet is preferred\n", c.Checked, 100*c.Preferred)
	}
	fmt.Fprintf(tw, "submit->launch received p50 / p99\t%s / %s\t\n", r.SubmitToLaunchP50.Round(time.Millisecond), r.SubmitToLaunchP99.Round(time.Millisecond))
	fmt.Fprintf(tw, "heartbeats absorbed/s\t%.0f\t%d agents at %s\n", r.HeartbeatsPerSec, r.Agents, time.Second)
	fmt.Fprintf(tw, "  CPU per second of the placed fleet (heartbeats only)\t%s\tprocess: scheduler + sim agents, %d tasks\n", r.IdleCPUPerSec.Round(time.Millisecond), r.Placed+r.Constrained.Placed)
	fmt.Fprintf(tw, "dead agent detected after\t%s\t<= 15s\n", r.DeadAgentDetection.Round(time.Millisecond))
	fmt.Fprintf(tw, "RSS / Go heap in use\t%d MiB / %d MiB\tone process: scheduler + embedded etcd + sim agents\n", r.RSSBytes>>20, r.HeapBytes>>20)
	tw.Flush()
}

// txnOps is the most operations per etcd transaction the load run uses.
const txnOps = 1024

// Run starts a scheduler and opts.Agents simulated agents, submits
// opts.Tasks tasks in batch jobs of up to 1000, and measures.
func Run(ctx context.Context, o Options) (Report, error) {
	if o.Agents <= 0 || o.AZs <= 0 || o.Tasks <= 0 {
		return Report{}, fmt.Errorf("agents, azs and tasks must be positive")
	}
	if o.AgentTTL <= 0 {
		o.AgentTTL = 10 * time.Second
	}
	if o.HeartbeatInterval <= 0 {
		o.HeartbeatInterval = time.Second
	}
	if o.ElectionTTL <= 0 {
		o.ElectionTTL = 15 * time.Second
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Timeout <= 0 {
		o.Timeout = 4 * time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	if o.DataDir == "" {
		dir, err := os.MkdirTemp("", "titus-sched-load")
		if err != nil {
			return Report{}, err
		}
		defer os.RemoveAll(dir)
		o.DataDir = dir
	}
	rep := Report{Agents: o.Agents, AZs: o.AZs, Tasks: o.Tasks}
	prof, err := newProfiler(o.ProfileDir)
	if err != nil {
		return rep, err
	}
	defer prof.stop()
	bdir := filepath.Join(o.DataDir, "baseline")
	rep.EtcdPutsPerSec, err = EtcdBaseline(ctx, bdir, o.Tasks, txnOps)
	os.RemoveAll(bdir)
	if err != nil {
		return rep, fmt.Errorf("etcd baseline: %w", err)
	}
	s, err := scheduler.New(scheduler.Options{
		Listen: "127.0.0.1:0", DataDir: o.DataDir, ElectionTTL: o.ElectionTTL, TxnOps: txnOps,
		CoreConfig: scheduler.CoreConfig{AgentTTL: o.AgentTTL, HeartbeatInterval: o.HeartbeatInterval, MaxPendingTotal: o.Tasks + 1, MaxPendingPerGroup: o.Tasks + 1},
	}, o.Log)
	if err != nil {
		return rep, err
	}
	sctx, scancel := context.WithCancel(ctx)
	var exitErr atomic.Value
	runErr := make(chan error, 1)
	go func() { runErr <- s.Run(sctx) }()
	defer func() { scancel(); <-runErr }()
	select {
	case <-s.Leading():
	case err := <-runErr:
		runErr <- err
		return rep, fmt.Errorf("scheduler: %w", err)
	case <-ctx.Done():
		return rep, ctx.Err()
	}
	// A scheduler that stops (lost leadership, etcd trouble) ends the run at once.
	go func() {
		select {
		case err := <-runErr:
			runErr <- err
			if sctx.Err() == nil {
				exitErr.Store(fmt.Errorf("scheduler stopped: %v", err))
				cancel()
			}
		case <-sctx.Done():
		}
	}()
	wrap := func(err error) error {
		if e, _ := exitErr.Load().(error); e != nil {
			return fmt.Errorf("%w (%v)", err, e)
		}
		return err
	}
	cc, err := grpc.NewClient(s.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return rep, err
	}
	defer cc.Close()
	api := schedv1.NewSchedulerClient(cc)

	// Agents share a few connections (one per 100 streams), as a fleet's
	// streams would share a load balancer's.
	var conns []*grpc.ClientConn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	var (
		mu       sync.Mutex
		received = map[string]time.Time{}
	)
	onLaunch := func(id string, at time.Time) {
		mu.Lock()
		received[id] = at
		mu.Unlock()
	}
	agents := make([]*Agent, o.Agents)
	for i := range agents {
		if i%100 == 0 {
			c, err := grpc.NewClient(s.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				return rep, err
			}
			conns = append(conns, c)
		}
		a := NewAgent(schedlink.Config{
			Conn: conns[len(conns)-1], InstanceID: "sim-" + strconv.Itoa(i), InstanceType: "m5.2xlarge",
			AZ: "az-" + strconv.Itoa(i%o.AZs), HeartbeatInterval: o.HeartbeatInterval,
			Capacity:   schedlink.Capacity{CPUMillicores: 8000, MemoryMiB: 32768, DiskMiB: 100_000, NetworkMbps: 10_000, ENIs: 4, IPsPerENI: 15},
			Labels:     simLabels(i),
			Attributes: schedlink.Attributes{Kernel: simKernel(i), AgentVersion: "1.0.0", CgroupMode: "v2"},
		}, RunForever)
		a.Tasks.OnLaunch = onLaunch
		agents[i] = a
		a.Start(ctx)
	}
	defer func() {
		for _, a := range agents {
			a.Stop()
		}
	}()
	if err := waitFor(ctx, func() bool { return connected(ctx, api) >= o.Agents }); err != nil {
		return rep, wrap(fmt.Errorf("agents did not all register: %w", err))
	}

	// Submit every job at once, then wait for every launch to arrive.
	submitted := map[string]time.Time{}
	if err := prof.start("unconstrained"); err != nil {
		return rep, err
	}
	start, cpu0 := time.Now(), processCPU()
	base := s.Stats().Placed
	for left := o.Tasks; left > 0; left -= 1000 {
		n := min(left, 1000)
		at := time.Now()
		resp, err := api.SubmitJob(ctx, &schedv1.SubmitJobRequest{Spec: &schedv1.JobSpec{
			OwnerEmail: "load@example.com", Application: "load",
			Kind: &schedv1.JobSpec_Batch{Batch: &schedv1.BatchJob{Size: uint32(n)}},
			Task: &agentv1.TaskSpec{Image: "registry.example/load:1", Command: []string{"sleep", "inf"},
				Resources: &agentv1.Resources{CpuMillicores: 100, MemoryMib: 128}, Network: &agentv1.NetworkRequest{SecurityGroupIds: []string{"sg-1"}}},
		}})
		if err != nil {
			return rep, wrap(fmt.Errorf("submit: %w", err))
		}
		submitted[resp.JobId] = at
	}
	if err := waitFor(ctx, func() bool { return s.Stats().Placed-base >= int64(o.Tasks) }); err != nil {
		return rep, wrap(fmt.Errorf("placed %d of %d: %w", s.Stats().Placed-base, o.Tasks, err))
	}
	rep.PlaceDuration, rep.PlaceCPU = time.Since(start), processCPU()-cpu0
	rep.Placed = int(s.Stats().Placed - base)
	rep.PlacementsPerSec = float64(rep.Placed) / rep.PlaceDuration.Seconds()
	if err := prof.stop(); err != nil {
		return rep, err
	}
	if err := noOvercommit(ctx, api); err != nil {
		return rep, err
	}
	_ = waitFor(ctx, func() bool { mu.Lock(); defer mu.Unlock(); return len(received) >= o.Tasks })
	mu.Lock()
	lat := make([]time.Duration, 0, len(received))
	for id, at := range received {
		jobID, _, _ := strings.Cut(id, ".")
		lat = append(lat, at.Sub(submitted[jobID]))
	}
	mu.Unlock()
	slices.Sort(lat)
	if len(lat) > 0 {
		rep.SubmitToLaunchP50 = lat[len(lat)/2]
		rep.SubmitToLaunchP99 = lat[len(lat)*99/100]
	}

	if o.Constrained {
		if err := prof.start("constrained"); err != nil {
			return rep, err
		}
		if rep.Constrained, err = runConstrained(ctx, api, s, o, prof.stop); err != nil {
			return rep, wrap(err)
		}
		if err := noOvercommit(ctx, api); err != nil {
			return rep, err
		}
	}

	// Heartbeats absorbed in a steady window.
	hb0, t0, c0 := s.Stats().Heartbeats, time.Now(), processCPU()
	select {
	case <-time.After(3 * time.Second):
	case <-ctx.Done():
		return rep, ctx.Err()
	}
	rep.HeartbeatsPerSec = float64(s.Stats().Heartbeats-hb0) / time.Since(t0).Seconds()
	rep.IdleCPUPerSec = time.Duration(float64(processCPU()-c0) / time.Since(t0).Seconds())

	// A dead agent: it stops talking; how long until it is declared lost?
	lost0 := s.Stats().LostAgents
	dead := agents[len(agents)-1]
	died := time.Now()
	dead.Stop()
	if err := waitFor(ctx, func() bool { return s.Stats().LostAgents > lost0 }); err != nil {
		return rep, wrap(fmt.Errorf("dead agent not detected: %w", err))
	}
	rep.DeadAgentDetection = time.Since(died)
	rep.RSSBytes = rss()
	var ms goruntime.MemStats
	goruntime.ReadMemStats(&ms)
	rep.HeapBytes = int64(ms.HeapInuse)
	return rep, nil
}

func connected(ctx context.Context, api schedv1.SchedulerClient) int {
	agents, err := allAgents(ctx, api)
	if err != nil {
		return 0
	}
	n := 0
	for _, a := range agents {
		if a.Connected {
			n++
		}
	}
	return n
}

// allAgents reads every page of ListAgents (a page holds at most
// api.MaxPageSize agents; one call sees only the first).
func allAgents(ctx context.Context, api schedv1.SchedulerClient) ([]*schedv1.Agent, error) {
	var out []*schedv1.Agent
	token := ""
	for {
		page, err := api.ListAgents(ctx, &schedv1.ListAgentsRequest{PageSize: 1000, PageToken: token})
		if err != nil {
			return nil, fmt.Errorf("list agents: %w", err)
		}
		out = append(out, page.Agents...)
		if token = page.NextPageToken; token == "" {
			return out, nil
		}
	}
}

// noOvercommit checks that no host was given more than it has, however
// many placement rounds were in flight.
func noOvercommit(ctx context.Context, api schedv1.SchedulerClient) error {
	agents, err := allAgents(ctx, api)
	if err != nil {
		return err
	}
	for _, a := range agents {
		c, u := a.GetCapacity(), a.GetUsed()
		if u.GetCpuMillicores() > c.GetCpuMillicores() || u.GetMemoryMib() > c.GetMemoryMib() || u.GetEnis() > c.GetEnis() {
			return fmt.Errorf("agent %s overcommitted: used %v of %v", a.Id, u, c)
		}
	}
	return nil
}

func waitFor(ctx context.Context, cond func() bool) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}

// processCPU is the user and system CPU time this process used so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// rss is this process's resident set size.
func rss() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}
