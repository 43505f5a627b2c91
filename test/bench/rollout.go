package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
	"github.com/titus-agent/titus-agent/pkg/schedlink"
	"github.com/titus-agent/titus-agent/pkg/scheduler"
	"github.com/titus-agent/titus-agent/test/schedload"
	"github.com/titus-agent/titus-agent/test/testenv"
)

func init() {
	part("rollout", 65, func(tb *testenv.Standalone, _ benchFlags) { benchRollout(tb) })
}

// rolloutTasks and rolloutUnavailable size the rollout part.
const (
	rolloutTasks       = 100
	rolloutUnavailable = "10%"
)

// benchRollout times a rolling update of a 100-task service with
// maxUnavailable 10% (no surge) on the real scheduler (embedded etcd,
// gRPC on loopback) and 20 simulated agents speaking the real agent stream
// (tasks run at once: containers for 100 tasks would measure containerd,
// not the rollout). The baseline is measured in the same run: the time to
// launch one wave (10 tasks of a fresh job, submit to all Running); the
// ideal rollout is 10 such waves back to back.
func benchRollout(tb *testenv.Standalone) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	r, err := runRollout(ctx, tb.TempDir())
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "rollout (simulated agents)\tvalue\tbaseline\n")
	fmt.Fprintf(tw, "one wave: %d tasks submit->running (median of 5)\t%s\tmeasured here\n", r.wave, r.waveTime.Round(time.Millisecond))
	fmt.Fprintf(tw, "update->rollout complete, %d tasks, maxUnavailable %s\t%s\tideal %d waves = %s; %.2fx of ideal\n",
		rolloutTasks, rolloutUnavailable, r.rollout.Round(time.Millisecond), r.waves, r.ideal.Round(time.Millisecond), r.ratio())
	fmt.Fprintf(tw, "fewest tasks running during the rollout\t%d\t>= %d\n", r.low, rolloutTasks-r.wave)
	tw.Flush()
	if err != nil {
		fmt.Printf("rollout: FAILED: %v\n", err)
	}
}

type rolloutReport struct {
	wave, waves, low int
	waveTime, ideal  time.Duration
	rollout          time.Duration
}

func (r rolloutReport) ratio() float64 {
	if r.ideal <= 0 {
		return 0
	}
	return r.rollout.Seconds() / r.ideal.Seconds()
}

func runRollout(ctx context.Context, dir string) (rolloutReport, error) {
	var rep rolloutReport
	s, err := scheduler.New(scheduler.Options{
		Listen: "127.0.0.1:0", DataDir: dir, ElectionTTL: 15 * time.Second,
		CoreConfig: scheduler.CoreConfig{AgentTTL: 10 * time.Second, HeartbeatInterval: time.Second},
	}, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError})))
	if err != nil {
		return rep, err
	}
	sctx, scancel := context.WithCancel(ctx)
	runErr := make(chan error, 1)
	go func() { runErr <- s.Run(sctx) }()
	defer func() { scancel(); <-runErr }()
	select {
	case <-s.Leading():
	case <-ctx.Done():
		return rep, ctx.Err()
	}
	cc, err := grpc.NewClient(s.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return rep, err
	}
	defer cc.Close()
	api := schedv1.NewSchedulerClient(cc)
	var agents []*schedload.Agent
	for i := range 20 {
		a := schedload.NewAgent(schedlink.Config{
			Conn: cc, InstanceID: "roll-" + strconv.Itoa(i), InstanceType: "m5.2xlarge", AZ: "az-" + strconv.Itoa(i%3),
			HeartbeatInterval: time.Second,
			Capacity:          schedlink.Capacity{CPUMillicores: 8000, MemoryMiB: 32768, DiskMiB: 100_000, NetworkMbps: 10_000, ENIs: 4, IPsPerENI: 15},
		}, schedload.RunForever)
		a.Start(ctx)
		defer a.Stop()
		agents = append(agents, a)
	}
	if err := poll(ctx, func() (bool, error) {
		resp, err := api.ListAgents(ctx, &schedv1.ListAgentsRequest{})
		n := 0
		for _, a := range resp.GetAgents() {
			if a.Connected {
				n++
			}
		}
		return n == len(agents), err
	}); err != nil {
		return rep, fmt.Errorf("agents: %w", err)
	}
	spec := func(image string, n uint32) *schedv1.JobSpec {
		return &schedv1.JobSpec{OwnerEmail: "bench@example.com", Application: "bench",
			Kind: &schedv1.JobSpec_Service{Service: &schedv1.ServiceJob{Min: n, Desired: n, Max: n,
				Update: &schedv1.UpdateStrategy{MaxSurge: "0", MaxUnavailable: rolloutUnavailable}}},
			Task: &agentv1.TaskSpec{Image: image, Command: []string{"sleep", "inf"}, Resources: &agentv1.Resources{CpuMillicores: 100, MemoryMib: 128}}}
	}
	running := func(id string) (int, error) {
		resp, err := api.ListTasks(ctx, &schedv1.ListTasksRequest{JobId: id, PageSize: 1000})
		n := 0
		for _, t := range resp.GetTasks() {
			if t.State == agentv1.TaskState_TASK_STATE_RUNNING {
				n++
			}
		}
		return n, err
	}

	// Baseline: one wave, submit to all running, median of 5.
	rep.wave = rolloutTasks / 10
	var waves []time.Duration
	for range 5 {
		start := time.Now()
		resp, err := api.SubmitJob(ctx, &schedv1.SubmitJobRequest{Spec: spec("registry.example/wave:1", uint32(rep.wave))})
		if err != nil {
			return rep, err
		}
		if err := poll(ctx, func() (bool, error) { n, err := running(resp.JobId); return n == rep.wave, err }); err != nil {
			return rep, fmt.Errorf("wave: %w", err)
		}
		waves = append(waves, time.Since(start))
		if _, err := api.KillJob(ctx, &schedv1.KillJobRequest{Id: resp.JobId}); err != nil {
			return rep, err
		}
	}
	rep.waveTime = median(waves)
	rep.waves = (rolloutTasks + rep.wave - 1) / rep.wave
	rep.ideal = time.Duration(rep.waves) * rep.waveTime

	resp, err := api.SubmitJob(ctx, &schedv1.SubmitJobRequest{Spec: spec("registry.example/svc:1", rolloutTasks)})
	if err != nil {
		return rep, err
	}
	id := resp.JobId
	if err := poll(ctx, func() (bool, error) { n, err := running(id); return n == rolloutTasks, err }); err != nil {
		return rep, fmt.Errorf("service: %w", err)
	}
	rep.low = rolloutTasks
	start := time.Now()
	if _, err := api.UpdateJob(ctx, &schedv1.UpdateJobRequest{Id: id, Spec: spec("registry.example/svc:2", rolloutTasks)}); err != nil {
		return rep, err
	}
	err = poll(ctx, func() (bool, error) {
		j, err := api.GetJob(ctx, &schedv1.GetJobRequest{Id: id})
		if err != nil {
			return false, err
		}
		if r := j.GetRollout(); r.GetState() == schedv1.Rollout_STATE_COMPLETE {
			return true, nil
		}
		n, err := running(id)
		rep.low = min(rep.low, n)
		return false, err
	})
	rep.rollout = time.Since(start)
	return rep, err
}

// poll calls cond every few milliseconds until it holds, fails, or ctx ends.
func poll(ctx context.Context, cond func() (bool, error)) error {
	for {
		ok, err := cond()
		if err != nil || ok {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}
