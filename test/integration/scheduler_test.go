package integration

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
	"github.com/titus-agent/titus-agent/pkg/schedlink"
	"github.com/titus-agent/titus-agent/pkg/scheduler"
	"github.com/titus-agent/titus-agent/pkg/task"
	"github.com/titus-agent/titus-agent/test/schedload"
	"github.com/titus-agent/titus-agent/test/testenv"
)

// schedEnv is a real scheduler (embedded etcd, or a shared one for HA
// tests) on a loopback port, and simulated agents speaking the real stream.
type schedEnv struct {
	t      *testing.T
	ctx    context.Context
	addrs  []string
	api    schedv1.SchedulerClient
	agents map[string]*schedload.Agent
}

const schedTTL = 2 * time.Second

func schedOptions(t *testing.T) scheduler.Options {
	return scheduler.Options{Listen: "127.0.0.1:0", DataDir: t.TempDir(), ElectionTTL: time.Second,
		CoreConfig: scheduler.CoreConfig{AgentTTL: schedTTL, HeartbeatInterval: 200 * time.Millisecond, CrashLoopBase: 100 * time.Millisecond, CrashLoopCap: time.Second}}
}

// startScheduler runs one replica until the test ends (or stop is called).
func startScheduler(t *testing.T, ctx context.Context, o scheduler.Options) (s *scheduler.Scheduler, stop func()) {
	t.Helper()
	s, err := scheduler.New(o, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("new scheduler: %v", err)
	}
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- s.Run(sctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("scheduler run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return s, stop
}

func waitLeading(t *testing.T, s *scheduler.Scheduler) {
	t.Helper()
	select {
	case <-s.Leading():
	case <-time.After(30 * time.Second):
		t.Fatalf("scheduler %s did not become leader", s.Addr())
	}
}

func newSchedEnv(t *testing.T, o scheduler.Options) (*schedEnv, *scheduler.Scheduler) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	s, _ := startScheduler(t, ctx, o)
	waitLeading(t, s)
	e := &schedEnv{t: t, ctx: ctx, addrs: []string{s.Addr()}, agents: map[string]*schedload.Agent{}}
	e.dialAPI()
	return e, s
}

func (e *schedEnv) dialAPI() {
	cc, err := grpc.NewClient(e.addrs[len(e.addrs)-1], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		e.t.Fatalf("dial: %v", err)
	}
	e.t.Cleanup(func() { cc.Close() })
	e.api = schedv1.NewSchedulerClient(cc)
}

func (e *schedEnv) agent(id, az string, cpu int64, b schedload.Behavior) *schedload.Agent {
	a := schedload.NewAgent(schedlink.Config{
		Address: strings.Join(e.addrs, ","), InstanceID: id, InstanceType: "m5.large", AZ: az,
		Capacity:   schedlink.Capacity{CPUMillicores: cpu, MemoryMiB: 16384, DiskMiB: 10000, NetworkMbps: 1000, ENIs: 3, IPsPerENI: 10},
		MinBackoff: 50 * time.Millisecond, MaxBackoff: 300 * time.Millisecond,
	}, b)
	a.Start(e.ctx)
	e.t.Cleanup(a.Stop)
	e.agents[id] = a
	return a
}

func (e *schedEnv) waitAgents(n int) {
	e.eventually("agents connected", func() (bool, string) {
		resp, err := e.api.ListAgents(e.ctx, &schedv1.ListAgentsRequest{})
		if err != nil {
			return false, err.Error()
		}
		c := 0
		for _, a := range resp.Agents {
			if a.Connected {
				c++
			}
		}
		return c == n, fmt.Sprintf("%d of %d connected", c, n)
	})
}

func (e *schedEnv) eventually(what string, cond func() (bool, string)) {
	e.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	last := ""
	for time.Now().Before(deadline) {
		ok, msg := cond()
		if ok {
			return
		}
		last = msg
		time.Sleep(50 * time.Millisecond)
	}
	e.t.Fatalf("%s: not reached within 30s (last: %s)", what, last)
}

func jobSpec(kind any) *schedv1.JobSpec {
	s := &schedv1.JobSpec{OwnerEmail: "tests@example.com", Application: "it",
		Task: &agentv1.TaskSpec{Image: "127.0.0.1:5000/busybox:latest", Command: []string{"true"},
			Resources: &agentv1.Resources{CpuMillicores: 1000, MemoryMib: 256}, KillGracePeriodSeconds: 1}}
	switch k := kind.(type) {
	case *schedv1.BatchJob:
		s.Kind = &schedv1.JobSpec_Batch{Batch: k}
	case *schedv1.ServiceJob:
		s.Kind = &schedv1.JobSpec_Service{Service: k}
	}
	return s
}

func (e *schedEnv) submit(spec *schedv1.JobSpec) string {
	e.t.Helper()
	resp, err := e.api.SubmitJob(e.ctx, &schedv1.SubmitJobRequest{Spec: spec})
	if err != nil {
		e.t.Fatalf("submit: %v", err)
	}
	return resp.JobId
}

func (e *schedEnv) job(id string) *schedv1.Job {
	e.t.Helper()
	j, err := e.api.GetJob(e.ctx, &schedv1.GetJobRequest{Id: id})
	if err != nil {
		e.t.Fatalf("get job: %v", err)
	}
	return j
}

func (e *schedEnv) liveTasks(jobID string) []*schedv1.Task {
	e.t.Helper()
	resp, err := e.api.ListTasks(e.ctx, &schedv1.ListTasksRequest{JobId: jobID})
	if err != nil {
		e.t.Fatalf("list tasks: %v", err)
	}
	return resp.Tasks
}

// running counts the job's tasks the scheduler sees running, per agent.
func (e *schedEnv) running(jobID string) map[string]int {
	out := map[string]int{}
	for _, t := range e.liveTasks(jobID) {
		if t.State == agentv1.TaskState_TASK_STATE_RUNNING {
			out[t.AgentId]++
		}
	}
	return out
}

func finishAfter(d time.Duration) schedload.Behavior {
	return func(*task.Spec) (time.Duration, int32) { return d, 0 }
}

func TestSchedulerBatchJobCompletesOnTwoAgents(t *testing.T) {
	begin(t)
	e, _ := newSchedEnv(t, schedOptions(t))
	a := e.agent("a", "az-a", 4000, finishAfter(300*time.Millisecond))
	b := e.agent("b", "az-b", 4000, finishAfter(300*time.Millisecond))
	e.waitAgents(2)
	id := e.submit(jobSpec(&schedv1.BatchJob{Size: 12}))
	e.eventually("job finished", func() (bool, string) {
		j := e.job(id)
		return j.State == schedv1.JobState_JOB_STATE_FINISHED, j.String()
	})
	if c := e.job(id).Counts; c.Finished != 12 || c.Failed != 0 {
		t.Fatalf("counts = %v, want 12 finished", c)
	}
	na, nb := len(a.Tasks.List()), len(b.Tasks.List())
	if na == 0 || nb == 0 || na+nb != 12 {
		t.Fatalf("tasks per agent a=%d b=%d, want both used and 12 in all", na, nb)
	}
}

func TestSchedulerServiceSpreadAndAgentLoss(t *testing.T) {
	begin(t)
	e, _ := newSchedEnv(t, schedOptions(t))
	a := e.agent("a", "az-a", 8000, schedload.RunForever)
	e.agent("b", "az-b", 8000, schedload.RunForever)
	e.waitAgents(2)
	id := e.submit(jobSpec(&schedv1.ServiceJob{Min: 1, Desired: 6, Max: 10}))
	e.eventually("6 running, 3 per AZ", func() (bool, string) {
		r := e.running(id)
		return len(r) == 2 && r[a.Config.InstanceID] == 3, fmt.Sprint(r)
	})

	// The agent dies: within the TTL its tasks are lost and replaced on the other.
	a.Stop()
	e.eventually("6 running on the survivor", func() (bool, string) {
		r := e.running(id)
		return len(r) == 1 && r[e.agents["b"].Config.InstanceID] == 6, fmt.Sprint(r)
	})
	if lost := e.job(id).Counts.Lost; lost != 3 {
		t.Fatalf("lost = %d, want 3", lost)
	}

	// It comes back still running its 3 old tasks: the scheduler has
	// replaced them, so reconcile kills them; no duplicates remain.
	a.Start(e.ctx)
	e.eventually("old tasks killed on the returning agent", func() (bool, string) {
		return len(a.Tasks.Running()) == 0, fmt.Sprint(a.Tasks.Running())
	})
	time.Sleep(3 * 200 * time.Millisecond) // a few heartbeats
	if n := len(e.liveTasks(id)); n != 6 {
		t.Fatalf("live tasks = %d, want 6", n)
	}

	// Scale down to 2, then drain b: its tasks move to a.
	if _, err := e.api.ScaleJob(e.ctx, &schedv1.ScaleJobRequest{Id: id, Min: 1, Desired: 2, Max: 10}); err != nil {
		t.Fatalf("scale: %v", err)
	}
	e.eventually("2 running", func() (bool, string) {
		n := 0
		for _, c := range e.running(id) {
			n += c
		}
		return n == 2 && len(e.liveTasks(id)) == 2, fmt.Sprint(e.running(id))
	})
	if _, err := e.api.DrainAgent(e.ctx, &schedv1.DrainAgentRequest{Id: e.agents["b"].Config.InstanceID}); err != nil {
		t.Fatalf("drain: %v", err)
	}
	e.eventually("moved off the drained agent", func() (bool, string) {
		r := e.running(id)
		return len(r) == 1 && r[a.Config.InstanceID] == 2, fmt.Sprint(r)
	})
}

func TestSchedulerReconnectReconciles(t *testing.T) {
	begin(t)
	e, _ := newSchedEnv(t, schedOptions(t))
	a := e.agent("a", "az-a", 8000, schedload.RunForever)
	e.waitAgents(1)
	id := e.submit(jobSpec(&schedv1.ServiceJob{Desired: 4, Max: 4}))
	e.eventually("4 running", func() (bool, string) {
		return e.running(id)[a.Config.InstanceID] == 4, fmt.Sprint(e.running(id))
	})
	// A short disconnect (well within the TTL) changes nothing.
	a.Stop()
	a.Start(e.ctx)
	e.waitAgents(1)
	time.Sleep(500 * time.Millisecond)
	if r, n := len(a.Tasks.Running()), len(e.liveTasks(id)); r != 4 || n != 4 {
		t.Fatalf("after reconnect: agent runs %d, scheduler has %d, want 4 and 4", r, n)
	}
	// The host is rebuilt (forgets its tasks) and reconnects: they are
	// marked lost and replaced, exactly 4 again.
	a.Stop()
	a.Tasks.Forget()
	a.Start(e.ctx)
	e.eventually("replaced after the agent forgot its tasks", func() (bool, string) {
		return len(a.Tasks.Running()) == 4 && e.running(id)[a.Config.InstanceID] == 4 && e.job(id).Counts.Lost == 4,
			fmt.Sprintf("agent %d, scheduler %v, lost %d", len(a.Tasks.Running()), e.running(id), e.job(id).Counts.Lost)
	})
}

// externalEtcd starts an etcd of its own for schedulers that do not embed
// it, and a 2-minute context for the test.
func externalEtcd(t *testing.T) (context.Context, *scheduler.EmbeddedEtcd) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	etcd, err := scheduler.StartEmbeddedEtcd(ctx, t.TempDir())
	if err != nil {
		t.Fatalf("etcd: %v", err)
	}
	t.Cleanup(etcd.Close)
	return ctx, etcd
}

func TestSchedulerStandbyTakesOver(t *testing.T) {
	begin(t)
	ctx, etcd := externalEtcd(t)
	o := schedOptions(t)
	o.DataDir, o.Endpoints = "", etcd.Endpoints
	first, stopFirst := startScheduler(t, ctx, o)
	waitLeading(t, first)
	second, _ := startScheduler(t, ctx, o)
	e := &schedEnv{t: t, ctx: ctx, addrs: []string{first.Addr(), second.Addr()}, agents: map[string]*schedload.Agent{}}
	e.dialAPI() // the API client talks to the second (standby) first
	e.eventually("the standby names the leader", func() (bool, string) {
		_, err := e.api.ListJobs(ctx, &schedv1.ListJobsRequest{})
		return status.Code(err) == codes.Unavailable && strings.Contains(err.Error(), first.Addr()), fmt.Sprint(err)
	})
	e.api = nil
	e.addrs = e.addrs[:1]
	e.dialAPI()
	e.addrs = []string{first.Addr(), second.Addr()}
	e.agent("a", "az-a", 8000, finishAfter(1500*time.Millisecond))
	e.agent("b", "az-b", 8000, finishAfter(1500*time.Millisecond))
	e.waitAgents(2)
	id := e.submit(jobSpec(&schedv1.BatchJob{Size: 8}))
	e.eventually("tasks running", func() (bool, string) { return len(e.running(id)) > 0, "" })

	stopFirst() // the leader goes away mid-job
	waitLeading(t, second)
	e.addrs = e.addrs[1:]
	e.dialAPI()
	e.waitAgents(2)
	e.eventually("job finished under the new leader", func() (bool, string) {
		j := e.job(id)
		return j.State == schedv1.JobState_JOB_STATE_FINISHED, j.String()
	})
	total := 0
	for _, a := range e.agents {
		total += len(a.Tasks.List())
	}
	if total != 8 {
		t.Fatalf("tasks launched in all = %d, want 8 (no duplicates after failover)", total)
	}
}

func TestSchedulerRefusesInvalidJobs(t *testing.T) {
	begin(t)
	e, _ := newSchedEnv(t, schedOptions(t))
	tests := []struct {
		name   string
		mutate func(*schedv1.JobSpec)
		fields []string
	}{
		{"no owner", func(s *schedv1.JobSpec) { s.OwnerEmail = "" }, []string{"owner_email"}},
		{"no image", func(s *schedv1.JobSpec) { s.Task.Image = "" }, []string{"task.image"}},
		{"too many tasks", func(s *schedv1.JobSpec) { s.GetBatch().Size = 1_000_000 }, []string{"batch.size"}},
		{"bad env and memory", func(s *schedv1.JobSpec) {
			s.Task.Env = map[string]string{"1X": "y"}
			s.Task.Resources.MemoryMib = 1
		}, []string{"task.env[1X]", "task.resources.memory_mib"}},
		{"unknown group", func(s *schedv1.JobSpec) { s.CapacityGroup = "nope" }, []string{"capacity_group"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := jobSpec(&schedv1.BatchJob{Size: 1})
			tt.mutate(spec)
			_, err := e.api.SubmitJob(e.ctx, &schedv1.SubmitJobRequest{Spec: spec})
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("err = %v, want InvalidArgument", err)
			}
			for _, f := range tt.fields {
				if !strings.Contains(err.Error(), f+":") {
					t.Errorf("error %q does not name field %s", err, f)
				}
			}
		})
	}
}

func TestSchedulerMillionTasksBoundedQueue(t *testing.T) {
	begin(t)
	o := schedOptions(t)
	o.Groups = []scheduler.Group{{Name: "small", Tier: scheduler.TierFlex, MaxPending: 5000}}
	e, _ := newSchedEnv(t, o)
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	accepted, refused := 0, 0
	var lastErr error
	for i := 0; i < 1000; i++ { // 1000 jobs x 1000 tasks, no agents
		spec := jobSpec(&schedv1.BatchJob{Size: 1000})
		spec.CapacityGroup = "small"
		_, err := e.api.SubmitJob(e.ctx, &schedv1.SubmitJobRequest{Spec: spec})
		switch status.Code(err) {
		case codes.OK:
			accepted++
		case codes.ResourceExhausted:
			refused++
			lastErr = err
		default:
			t.Fatalf("submit %d: %v", i, err)
		}
	}
	if accepted != 5 || refused != 995 {
		t.Fatalf("accepted %d refused %d, want 5 and 995", accepted, refused)
	}
	if !strings.Contains(lastErr.Error(), `capacity group "small" has 5000 tasks queued, limit 5000`) {
		t.Fatalf("refusal is not clear: %v", lastErr)
	}
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	if grown := int64(after.HeapInuse) - int64(before.HeapInuse); grown > 64<<20 {
		t.Fatalf("heap grew by %d MiB for 5000 queued tasks", grown>>20)
	}
}

func TestSchedulerCrashLoopBacksOff(t *testing.T) {
	begin(t)
	e, _ := newSchedEnv(t, schedOptions(t))
	var mu sync.Mutex
	var starts []time.Time
	a := e.agent("a", "az-a", 8000, func(*task.Spec) (time.Duration, int32) { return 0, 1 })
	a.Tasks.OnLaunch = func(_ string, at time.Time) { mu.Lock(); starts = append(starts, at); mu.Unlock() }
	e.waitAgents(1)
	spec := jobSpec(&schedv1.BatchJob{Size: 1, Retry: &schedv1.RetryPolicy{Kind: schedv1.RetryPolicy_KIND_IMMEDIATE, MaxRetries: 5}})
	id := e.submit(spec)
	e.eventually("job failed after its retries", func() (bool, string) {
		j := e.job(id)
		return j.State == schedv1.JobState_JOB_STATE_FAILED, j.String()
	})
	mu.Lock()
	defer mu.Unlock()
	if len(starts) != 6 {
		t.Fatalf("attempts = %d, want 6", len(starts))
	}
	// Immediate retries at first, then the crash-loop floor doubles the
	// wait: 100ms, 200ms, 400ms (lower bounds only: machines are noisy).
	gaps := make([]time.Duration, 0, 5)
	for i := 1; i < len(starts); i++ {
		gaps = append(gaps, starts[i].Sub(starts[i-1]))
	}
	for i, floor := range []time.Duration{0, 0, 100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond} {
		if gaps[i] < floor {
			t.Fatalf("retry gaps %v: gap %d is shorter than the backoff %s", gaps, i, floor)
		}
	}
}

// TestSchedulerCapacityGroupTiers: a critical group refuses a job beyond
// its quota with a reason naming the group and the numbers; a flex group
// accepts it and keeps it queued until the group's usage drops.
func TestSchedulerCapacityGroupTiers(t *testing.T) {
	begin(t)
	o := schedOptions(t)
	o.Groups = []scheduler.Group{
		{Name: "crit", Tier: scheduler.TierCritical, CPUMillicores: 2000},
		{Name: "flex", Tier: scheduler.TierFlex, CPUMillicores: 1000},
	}
	e, _ := newSchedEnv(t, o)
	e.agent("a", "az-a", 16000, schedload.RunForever)
	e.waitAgents(1)
	inGroup := func(group string, kind any, cpu int64) *schedv1.JobSpec {
		s := jobSpec(kind)
		s.CapacityGroup, s.Task.Resources.CpuMillicores = group, cpu
		return s
	}

	e.submit(inGroup("crit", &schedv1.BatchJob{Size: 2}, 1000))
	_, err := e.api.SubmitJob(e.ctx, &schedv1.SubmitJobRequest{Spec: inGroup("crit", &schedv1.BatchJob{Size: 1}, 1000)})
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), `critical capacity group "crit"`) || !strings.Contains(err.Error(), "quota cpu=2000m") {
		t.Fatalf("over the critical quota: err = %v, want ResourceExhausted naming the group and its quota", err)
	}

	first := e.submit(inGroup("flex", &schedv1.ServiceJob{Desired: 2, Max: 2}, 500))
	second := e.submit(inGroup("flex", &schedv1.BatchJob{Size: 1}, 500))
	e.eventually("flex quota full: the second job queued", func() (bool, string) {
		c := e.job(second).Counts
		return len(e.running(first)) == 1 && e.running(first)["a"] == 2 && c.Pending == 1, fmt.Sprint(e.running(first), c)
	})
	time.Sleep(500 * time.Millisecond) // several placement rounds
	if c := e.job(second).Counts; c.Pending != 1 || c.Running+c.Launched != 0 {
		t.Fatalf("flex job placed beyond the group's quota: %v", c)
	}
	if r := e.job(second).QueuedReason; !strings.Contains(r, `capacity group "flex" (flex) full: 1/1 CPU cores in use`) {
		t.Fatalf("queued flex job's reason = %q, want the group, its tier and its usage", r)
	}
	if _, err := e.api.KillJob(e.ctx, &schedv1.KillJobRequest{Id: first}); err != nil {
		t.Fatal(err)
	}
	e.eventually("queued flex job placed once usage dropped", func() (bool, string) {
		return e.running(second)["a"] == 1, fmt.Sprint(e.job(second).Counts)
	})
	if r := e.job(second).QueuedReason; r != "" {
		t.Fatalf("reason after placement = %q, want none", r)
	}
}

// TestSchedulerCLIShowsWhyQueued: job ls and job get of a titus-scheduler
// process show why a flex job beyond its group's quota is queued, and
// stop once it is placed.
func TestSchedulerCLIShowsWhyQueued(t *testing.T) {
	begin(t)
	groups := filepath.Join(t.TempDir(), "groups.yaml")
	if err := os.WriteFile(groups, []byte("- {name: nightly, tier: flex, cpuMillicores: 1000}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	sched := startSchedulerProc(t, "--capacity-groups", groups)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	a := simAgents(t, ctx, sched.addr, schedload.RunForever, "az-a")[0]
	waitUntil(t, "agent connected", 60*time.Second, func() (bool, string) {
		out, _ := sched.cli("agent", "ls")
		return strings.Contains(out, "connected"), out
	})
	job := func(kind string) string {
		return sched.submit("ownerEmail: tests@example.com\napplication: it\ncapacityGroup: nightly\n" + kind +
			"\ntask: {image: \"registry.example/x:1\", command: [x], resources: {cpuMillicores: 500, memoryMib: 64}}\n")
	}
	first := job("service: {min: 1, desired: 2, max: 2}")
	waitUntil(t, "first job running", 30*time.Second, func() (bool, string) {
		return len(a.Tasks.Running()) == 2, fmt.Sprint(a.Tasks.Running())
	})
	second := job("batch: {size: 1}")
	const why = `capacity group "nightly" (flex) full: 1/1 CPU cores in use`
	waitUntil(t, "job ls says why the second job is queued", 30*time.Second, func() (bool, string) {
		out, err := sched.cli("job", "ls")
		for _, line := range strings.Split(out, "\n") {
			if strings.HasPrefix(line, second) {
				return err == nil && strings.Contains(line, why), out
			}
		}
		return false, out
	})
	if out, err := sched.cli("job", "get", second); err != nil || !strings.Contains(out, "QUEUED BECAUSE") || !strings.Contains(out, why) {
		t.Fatalf("job get of the queued job: %v\n%s", err, out)
	}
	if r := sched.jobJSON(second)["queuedReason"]; r == nil || !strings.Contains(r.(string), why) {
		t.Fatalf("job get -o json: queuedReason = %v", r)
	}
	if out, err := sched.cli("job", "kill", first); err != nil {
		t.Fatalf("job kill: %v\n%s", err, out)
	}
	waitUntil(t, "second job placed, reason gone", 30*time.Second, func() (bool, string) {
		out, err := sched.cli("job", "get", second)
		return err == nil && !strings.Contains(out, "full") && sched.jobJSON(second)["queuedReason"] == nil && len(a.Tasks.Running()) == 1, out
	})
}

// TestSchedulerQuarantinesFailingHost: a host whose launches keep failing
// with platform errors is quarantined after QuarantineFailures and the
// job's retries run on the healthy host.
func TestSchedulerQuarantinesFailingHost(t *testing.T) {
	begin(t)
	o := schedOptions(t)
	o.QuarantineFailures, o.QuarantineWindow = 3, time.Minute
	e, _ := newSchedEnv(t, o)
	bad := e.agent("a-bad", "az-a", 8000, schedload.RunForever)
	var mu sync.Mutex
	badLaunches := 0
	bad.Tasks.LaunchError = func(*task.Spec) error {
		mu.Lock()
		badLaunches++
		mu.Unlock()
		return fmt.Errorf("network setup: no ENI could be attached")
	}
	good := e.agent("b-good", "az-a", 8000, finishAfter(100*time.Millisecond))
	e.waitAgents(2)
	// Bin-packing puts all four on the first host (a-bad) first.
	id := e.submit(jobSpec(&schedv1.BatchJob{Size: 4, Retry: &schedv1.RetryPolicy{MaxRetries: 10}}))
	e.eventually("job finished on the healthy host", func() (bool, string) {
		j := e.job(id)
		return j.State == schedv1.JobState_JOB_STATE_FINISHED, j.String()
	})
	resp, err := e.api.ListAgents(e.ctx, &schedv1.ListAgentsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range resp.Agents {
		if want := a.Id == "a-bad"; a.Quarantined != want {
			t.Errorf("agent %s quarantined = %v, want %v", a.Id, a.Quarantined, want)
		}
	}
	mu.Lock()
	n := badLaunches
	mu.Unlock()
	if n < 3 || len(good.Tasks.List()) != 4 {
		t.Fatalf("launches: %d failed on a-bad (want >= 3), %d on b-good (want 4)", n, len(good.Tasks.List()))
	}
	// Quarantined: a new job goes to the healthy host only.
	id2 := e.submit(jobSpec(&schedv1.BatchJob{Size: 2}))
	e.eventually("second job finished", func() (bool, string) {
		j := e.job(id2)
		return j.State == schedv1.JobState_JOB_STATE_FINISHED, j.String()
	})
	mu.Lock()
	defer mu.Unlock()
	if badLaunches != n {
		t.Fatalf("a quarantined host got %d more launches", badLaunches-n)
	}
}

// TestSchedulerPrunesEndedJobs: over many finished jobs the scheduler
// keeps only the newest MaxFinishedJobs, in memory (job ls -a) and in etcd
// (job and task keys counted directly), and a pruned job's get says why
// it is gone.
func TestSchedulerPrunesEndedJobs(t *testing.T) {
	begin(t)
	ctx, etcd := externalEtcd(t)
	cli, err := clientv3.New(clientv3.Config{Endpoints: etcd.Endpoints})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	o := schedOptions(t)
	o.DataDir, o.Endpoints, o.Prefix = "", etcd.Endpoints, "/prune/"
	o.MaxFinishedJobs, o.FinishedJobRetention = 5, time.Hour
	s, _ := startScheduler(t, ctx, o)
	waitLeading(t, s)
	e := &schedEnv{t: t, ctx: ctx, addrs: []string{s.Addr()}, agents: map[string]*schedload.Agent{}}
	e.dialAPI()
	e.agent("a", "az-a", 8000, finishAfter(20*time.Millisecond))
	e.waitAgents(1)
	keys := func(sub string) int64 {
		resp, err := cli.Get(ctx, o.Prefix+sub, clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			t.Fatalf("etcd count: %v", err)
		}
		return resp.Count
	}
	const jobs = 200
	var ids []string
	for range jobs {
		spec := jobSpec(&schedv1.BatchJob{Size: 2})
		spec.Task.Resources.CpuMillicores = 250
		ids = append(ids, e.submit(spec))
	}
	e.eventually("all but the newest 5 ended jobs pruned", func() (bool, string) {
		resp, err := e.api.ListJobs(ctx, &schedv1.ListJobsRequest{All: true})
		if err != nil {
			return false, err.Error()
		}
		nj, nt := keys("jobs/"), keys("tasks/")
		return s.Stats().PrunedJobs == jobs-5 && len(resp.Jobs) == 5 && nj == 5 && nt == 10,
			fmt.Sprintf("pruned %d, listed %d, etcd %d job / %d task keys", s.Stats().PrunedJobs, len(resp.Jobs), nj, nt)
	})
	_, err = e.api.GetJob(ctx, &schedv1.GetJobRequest{Id: ids[0]})
	if status.Code(err) != codes.NotFound || !strings.Contains(err.Error(), "ended jobs are kept 1h0m0s after they end, and at most the 5 most recent") {
		t.Fatalf("get of a pruned job: %v, want NotFound saying ended jobs are removed", err)
	}
	resp, err := e.api.ListTasks(ctx, &schedv1.ListTasksRequest{JobId: ids[0], All: true})
	if err != nil || len(resp.Tasks) != 0 {
		t.Fatalf("tasks of a pruned job: %v, %v; want none", resp.GetTasks(), err)
	}
}

// cliJSON runs a CLI command with -o json and decodes its output into v.
func (s *schedProc) cliJSON(v any, args ...string) error {
	out, err := s.cli(append(args, "-o", "json")...)
	if err != nil {
		return fmt.Errorf("%v: %s", err, out)
	}
	return protojson.Unmarshal([]byte(out), v.(proto.Message))
}

// TestSchedulerRestartSameDataDir: one titus-scheduler (no standby, its
// embedded etcd in --data-dir) is killed with SIGKILL while a batch and a
// service job run and a third job is queued, then started again over the
// same directory. Nothing is lost: every job is there, the running tasks
// are known under the same ids (none replaced, none launched twice), the
// queued job is still queued, and the batch job completes.
func TestSchedulerRestartSameDataDir(t *testing.T) {
	begin(t)
	sched := &schedProc{t: t, addr: testenv.Addr(testenv.FreePort(t)), dir: t.TempDir()}
	start := func(name string) *testenv.Process {
		p := testenv.StartProcess(t, sched.dir, name, exec.Command(testenv.SchedulerBinary(t), "serve", "--data-dir", filepath.Join(sched.dir, "data"),
			"--listen", sched.addr, "--metrics-listen", "", "--election-ttl", "2s", "--agent-ttl", "10s"))
		testenv.WaitTCP(t, sched.addr, p, 60*time.Second)
		waitUntil(t, name+" leads", 60*time.Second, func() (bool, string) {
			out, err := sched.cli("job", "ls")
			return err == nil, out
		})
		return p
	}
	first := start("scheduler-1")

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	agents := simAgents(t, ctx, sched.addr, batchFor(12*time.Second), "az-a", "az-b") // batch tasks span the restart
	waitUntil(t, "agents registered", 30*time.Second, func() (bool, string) {
		out, _ := sched.cli("agent", "ls")
		return strings.Count(out, "connected") == 2, out
	})
	spec := func(kind, cmd string, cpu int) string {
		return sched.submit(fmt.Sprintf("ownerEmail: tests@example.com\napplication: it\n%s\ntask: {image: \"registry.example/x:1\", command: [%s], resources: {cpuMillicores: %d, memoryMib: 64}}\n", kind, cmd, cpu))
	}
	batch := spec("batch: {size: 6}", "batch", 500)
	svc := spec("service: {min: 1, desired: 4, max: 4}", "serve", 500)
	launchedOf := func(job string) (launched, running int) {
		for _, a := range agents {
			for _, v := range a.Tasks.List() {
				if strings.HasPrefix(v.Spec.ID, job+".") {
					launched++
					if !v.Status.State.Terminal() {
						running++
					}
				}
			}
		}
		return launched, running
	}
	var before schedv1.ListTasksResponse
	waitUntil(t, "all 10 tasks running, as the scheduler sees them", 30*time.Second, func() (bool, string) {
		err := sched.cliJSON(&before, "task", "ls")
		n := 0
		for _, tk := range before.Tasks {
			if tk.State == agentv1.TaskState_TASK_STATE_RUNNING {
				n++
			}
		}
		return err == nil && n == 10, fmt.Sprint(n, err)
	})
	queued := spec("batch: {size: 1}", "batch", 64000) // no agent has room: stays queued

	// SIGKILL: no flush, no resignation; then the same directory again.
	_ = syscall.Kill(first.Cmd.Process.Pid, syscall.SIGKILL)
	_ = first.Cmd.Wait()
	start("scheduler-2")

	var jobs schedv1.ListJobsResponse
	if err := sched.cliJSON(&jobs, "job", "ls", "-a"); err != nil {
		t.Fatalf("job ls after the restart: %v", err)
	}
	byID := map[string]*schedv1.Job{}
	for _, j := range jobs.Jobs {
		byID[j.Id] = j
	}
	for _, id := range []string{batch, svc, queued} {
		if j := byID[id]; j == nil || j.State != schedv1.JobState_JOB_STATE_ACCEPTED {
			t.Fatalf("job %s after the restart: %v (jobs: %v)", id, j, jobs.Jobs)
		}
	}
	if c := byID[queued].Counts; c.Pending != 1 {
		t.Fatalf("queued job after the restart: counts %v, want 1 pending", c)
	}
	var after schedv1.ListTasksResponse
	if err := sched.cliJSON(&after, "task", "ls"); err != nil {
		t.Fatalf("task ls after the restart: %v", err)
	}
	known := map[string]bool{}
	for _, tk := range after.Tasks {
		known[tk.Id] = true
	}
	for _, tk := range before.Tasks {
		if strings.HasPrefix(tk.Id, svc+".") && !known[tk.Id] {
			t.Fatalf("running task %s unknown after the restart (known: %v)", tk.Id, known)
		}
	}
	if len(after.Tasks) > len(before.Tasks) {
		t.Fatalf("tasks after the restart %d > before %d: some were placed again", len(after.Tasks), len(before.Tasks))
	}

	waitUntil(t, "queued job still queued, saying why", 30*time.Second, func() (bool, string) {
		var j schedv1.Job
		err := sched.cliJSON(&j, "job", "get", queued)
		return err == nil && j.Counts.GetPending() == 1 && strings.HasPrefix(j.QueuedReason, "no agent can take a task now"), fmt.Sprint(j.Counts, j.QueuedReason, err)
	})
	waitUntil(t, "batch job finished after the restart", 60*time.Second, func() (bool, string) {
		j := sched.jobJSON(batch)
		return j["state"] == "JOB_STATE_FINISHED", fmt.Sprint(j["state"], j["counts"])
	})
	var j schedv1.Job
	if err := sched.cliJSON(&j, "job", "get", batch); err != nil {
		t.Fatal(err)
	}
	if c := j.Counts; c.Finished != 6 || c.Lost != 0 || c.Retries != 0 {
		t.Fatalf("batch job counts %v, want 6 finished, none lost or retried", c)
	}
	if l, _ := launchedOf(batch); l != 6 {
		t.Fatalf("batch tasks launched = %d, want 6 (none repeated)", l)
	}
	if l, r := launchedOf(svc); l != 4 || r != 4 {
		t.Fatalf("service tasks launched %d, running %d, want 4 and 4 (none replaced)", l, r)
	}
	var svcTasks schedv1.ListTasksResponse
	if err := sched.cliJSON(&svcTasks, "task", "ls", "--job", svc); err != nil || len(svcTasks.Tasks) != 4 {
		t.Fatalf("service tasks after the restart: %v, %v", svcTasks.Tasks, err)
	}
	for _, tk := range svcTasks.Tasks {
		if tk.State != agentv1.TaskState_TASK_STATE_RUNNING || tk.Attempt != 1 {
			t.Fatalf("service task %s: %v attempt %d, want running, first attempt", tk.Id, tk.State, tk.Attempt)
		}
	}
}
