package integration

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
	"github.com/titus-agent/titus-agent/pkg/schedlink"
	"github.com/titus-agent/titus-agent/pkg/task"
	"github.com/titus-agent/titus-agent/test/schedload"
)

// Rollouts and drains against the real scheduler (its gRPC API, etcd,
// loops) and simulated agents speaking the real agent stream.

const (
	imageV1  = "127.0.0.1:5000/busybox:v1"
	imageV2  = "127.0.0.1:5000/busybox:v2"
	imageBad = "127.0.0.1:5000/busybox:bad"
)

// labeledAgent starts a simulated agent with labels.
func (e *schedEnv) labeledAgent(id, az string, cpu int64, labels map[string]string, b schedload.Behavior) *schedload.Agent {
	a := schedload.NewAgent(schedlink.Config{
		Address: strings.Join(e.addrs, ","), InstanceID: id, InstanceType: "m5.large", AZ: az, Labels: labels,
		Capacity:   schedlink.Capacity{CPUMillicores: cpu, MemoryMiB: 16384, DiskMiB: 10000, NetworkMbps: 1000, ENIs: 3, IPsPerENI: 10},
		MinBackoff: 50 * time.Millisecond, MaxBackoff: 300 * time.Millisecond,
	}, b)
	a.Start(e.ctx)
	e.t.Cleanup(a.Stop)
	e.agents[id] = a
	return a
}

// watchRunning samples, until stop, how many of the job's tasks the
// agents run (the ground truth a client would reach), keeping the least
// and the most seen.
type runWatch struct {
	low, high atomic.Int64
	stop      chan struct{}
	done      sync.WaitGroup
	// atLow says what the agents held when the least was seen.
	atLow string
}

func (e *schedEnv) watchRunning(jobID string) *runWatch {
	w := &runWatch{stop: make(chan struct{})}
	w.low.Store(1 << 30)
	count := func() int64 {
		n := int64(0)
		for _, a := range e.agents {
			for _, id := range a.Tasks.Running() {
				if strings.HasPrefix(id, jobID+".") {
					n++
				}
			}
		}
		return n
	}
	w.done.Go(func() {
		for {
			n := count()
			if n < w.low.Load() {
				w.low.Store(n)
				var b strings.Builder
				for name, a := range e.agents {
					for _, v := range a.Tasks.List() {
						if strings.HasPrefix(v.Spec.ID, jobID+".") {
							fmt.Fprintf(&b, "%s:%s=%s/%s ", name, v.Spec.ID[len(jobID):], v.Status.State, v.Status.Reason)
						}
					}
				}
				w.atLow = b.String()
			}
			if n > w.high.Load() {
				w.high.Store(n)
			}
			select {
			case <-w.stop:
				return
			case <-time.After(time.Millisecond):
			}
		}
	})
	return w
}

func (w *runWatch) end() (low, high int64) {
	close(w.stop)
	w.done.Wait()
	return w.low.Load(), w.high.Load()
}

func serviceSpec6(image string, update *schedv1.UpdateStrategy, budget string) *schedv1.JobSpec {
	s := jobSpec(&schedv1.ServiceJob{Min: 6, Desired: 6, Max: 6, Update: update})
	s.Task.Image = image
	s.Task.Resources.CpuMillicores = 100
	if budget != "" {
		s.GetService().DisruptionBudget = &schedv1.DisruptionBudget{MaxUnavailable: budget}
	}
	return s
}

// launchesByImage counts the launches every agent received, by image,
// and fails on a task id sent twice.
func (e *schedEnv) launchesByImage() map[string]int {
	e.t.Helper()
	out := map[string]int{}
	for _, a := range e.agents {
		for id, n := range a.Tasks.Launches() {
			if n > 1 {
				e.t.Errorf("task %s launched %d times", id, n)
			}
		}
		for _, v := range a.Tasks.List() {
			out[v.Spec.Image]++
		}
	}
	return out
}

func (e *schedEnv) rolloutState(id string) (*schedv1.Rollout, string) {
	j := e.job(id)
	return j.GetRollout(), fmt.Sprintf("revision %d rollout %v", j.Revision, j.GetRollout())
}

// byRevision counts the job's running tasks by revision, as the scheduler sees them.
func (e *schedEnv) byRevision(id string) map[uint64]int {
	out := map[uint64]int{}
	for _, t := range e.liveTasks(id) {
		if t.State == agentv1.TaskState_TASK_STATE_RUNNING {
			out[t.Revision]++
		}
	}
	return out
}

// TestRolloutKeepsFiveOfSixRunning: a rolling update of a 6-task service
// with maxUnavailable 1 never has fewer than 5 of its tasks running on the
// agents, and ends with 6 tasks of the new revision, each launched once.
func TestRolloutKeepsFiveOfSixRunning(t *testing.T) {
	begin(t)
	e, _ := newSchedEnv(t, schedOptions(t))
	for i, az := range []string{"az-a", "az-b", "az-c"} {
		e.agent(fmt.Sprintf("h%d", i), az, 4000, schedload.RunForever)
	}
	e.waitAgents(3)
	update := &schedv1.UpdateStrategy{MaxSurge: "0", MaxUnavailable: "1"}
	id := e.submit(serviceSpec6(imageV1, update, ""))
	e.eventually("6 running", func() (bool, string) { return e.byRevision(id)[1] == 6, fmt.Sprint(e.byRevision(id)) })

	w := e.watchRunning(id)
	j, err := e.api.UpdateJob(e.ctx, &schedv1.UpdateJobRequest{Id: id, Spec: serviceSpec6(imageV2, update, "")})
	if err != nil {
		t.Fatalf("update: %v", err)
	}
	if j.Revision != 2 {
		t.Fatalf("revision after update = %d, want 2", j.Revision)
	}
	e.eventually("rollout complete", func() (bool, string) {
		r, s := e.rolloutState(id)
		return r.GetState() == schedv1.Rollout_STATE_COMPLETE, s
	})
	low, _ := w.end()
	if low < 5 {
		t.Errorf("running tasks dropped to %d during the rollout, want at least 5; agents then held: %s", low, w.atLow)
	}
	if got := e.byRevision(id); got[2] != 6 || len(got) != 1 {
		t.Errorf("running by revision %v, want 6 of revision 2", got)
	}
	if got := e.launchesByImage(); got[imageV1] != 6 || got[imageV2] != 6 {
		t.Errorf("launches by image %v, want 6 of each", got)
	}
}

// TestRolloutOfUnhealthyImageRollsBack: an update to an image whose
// health check never passes is rolled back automatically (its tasks are
// killed as unhealthy until the failures count, or the progress deadline
// passes first), and the old revision keeps serving: with
// maxUnavailable 0, never fewer than 6 running throughout.
func TestRolloutOfUnhealthyImageRollsBack(t *testing.T) {
	begin(t)
	e, _ := newSchedEnv(t, schedOptions(t))
	e.agent("h0", "az-a", 4000, schedload.RunForever)
	e.agent("h1", "az-b", 4000, schedload.RunForever)
	e.waitAgents(2)
	health := func(s *task.Spec) task.HealthStatus {
		if s.Image == imageBad {
			return task.HealthUnhealthy
		}
		return task.HealthHealthy
	}
	for _, a := range e.agents {
		a.Tasks.SetHealth(health)
	}
	update := &schedv1.UpdateStrategy{MaxSurge: "1", MaxUnavailable: "0", ProgressDeadlineSeconds: 3}
	withCheck := func(image string) *schedv1.JobSpec {
		s := serviceSpec6(image, update, "")
		s.Task.HealthCheck = &agentv1.HealthCheckSpec{Kind: "exec", Command: []string{"true"}, Interval: durationpb.New(time.Second),
			Timeout: durationpb.New(500 * time.Millisecond), HealthyThreshold: 1, UnhealthyThreshold: 3}
		return s
	}
	id := e.submit(withCheck(imageV1))
	e.eventually("6 running", func() (bool, string) { return e.byRevision(id)[1] == 6, fmt.Sprint(e.byRevision(id)) })

	w := e.watchRunning(id)
	if _, err := e.api.UpdateJob(e.ctx, &schedv1.UpdateJobRequest{Id: id, Spec: withCheck(imageBad)}); err != nil {
		t.Fatalf("update: %v", err)
	}
	e.eventually("rolled back", func() (bool, string) {
		r, s := e.rolloutState(id)
		return r.GetState() == schedv1.Rollout_STATE_ROLLED_BACK && r.GetEnded() != nil, s
	})
	low, _ := w.end()
	if low < 6 {
		t.Errorf("running tasks dropped to %d, want 6 throughout (maxUnavailable 0); agents then held: %s", low, w.atLow)
	}
	j := e.job(id)
	if j.Revision != 1 || j.Spec.Task.Image != imageV1 || !(strings.Contains(j.Rollout.Reason, "HealthCheckFailed") || strings.Contains(j.Rollout.Reason, "no new task became available")) {
		t.Errorf("after rollback: revision %d image %s reason %q", j.Revision, j.Spec.Task.Image, j.Rollout.Reason)
	}
	e.eventually("the 6 of revision 1 alone", func() (bool, string) {
		got := e.byRevision(id)
		return got[1] == 6 && len(got) == 1, fmt.Sprint(got)
	})
	e.launchesByImage()
}

// TestDrainMovesTasksAtTheBudgetsPace: draining the blue group moves
// every task of a 6-task service (budget 1) to green, one at a time: a
// replacement first, then the old task; never fewer than 6 running and
// never more than 7; the drain says what blocks it.
func TestDrainMovesTasksAtTheBudgetsPace(t *testing.T) {
	begin(t)
	e, _ := newSchedEnv(t, schedOptions(t))
	blue := []*schedload.Agent{
		e.labeledAgent("blue-0", "az-a", 4000, map[string]string{"group": "blue"}, schedload.RunForever),
		e.labeledAgent("blue-1", "az-b", 4000, map[string]string{"group": "blue"}, schedload.RunForever),
	}
	e.waitAgents(2)
	id := e.submit(serviceSpec6(imageV1, nil, "1"))
	e.eventually("6 running on blue", func() (bool, string) { return e.byRevision(id)[1] == 6, fmt.Sprint(e.byRevision(id)) })
	e.labeledAgent("green-0", "az-a", 4000, map[string]string{"group": "green"}, schedload.RunForever)
	e.labeledAgent("green-1", "az-b", 4000, map[string]string{"group": "green"}, schedload.RunForever)
	e.waitAgents(4)

	w := e.watchRunning(id)
	resp, err := e.api.DrainAgent(e.ctx, &schedv1.DrainAgentRequest{Labels: map[string]string{"group": "blue"}})
	if err != nil {
		t.Fatalf("drain: %v", err)
	}
	blocked := false
	for _, a := range resp.Agents {
		blocked = blocked || strings.Contains(a.DrainBlocked, "blocked by budget of job "+id+": 1/1 unavailable")
	}
	if !blocked {
		t.Errorf("drain response does not say the budget blocks it: %v", resp.Agents)
	}
	e.eventually("blue drained", func() (bool, string) {
		n := 0
		for _, a := range blue {
			n += len(a.Tasks.Running())
		}
		return n == 0, fmt.Sprint(n, " left on blue")
	})
	low, high := w.end()
	if low < 6 || high > 7 {
		t.Errorf("running tasks between %d and %d during the drain, want 6 to 7 (budget 1)", low, high)
	}
	ls, err := e.api.ListAgents(e.ctx, &schedv1.ListAgentsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range ls.Agents {
		if strings.HasPrefix(a.Id, "blue") && (a.DrainRemaining != 0 || a.DrainBlocked != "") {
			t.Errorf("%s after the drain: remaining %d blocked %q", a.Id, a.DrainRemaining, a.DrainBlocked)
		}
	}
	if got := e.launchesByImage(); got[imageV1] != 12 {
		t.Errorf("launches %v, want 12 (6 first, 6 replacements)", got)
	}
}

// TestRolloutContinuesAfterLeaderDies: the leader is killed with a
// rollout half done (a replacement running but not yet Healthy); the
// standby loads it from etcd and finishes it: every slot gets exactly
// one task of the new revision, and no task is launched twice.
func TestRolloutContinuesAfterLeaderDies(t *testing.T) {
	begin(t)
	ctx, etcd := externalEtcd(t)
	o := schedOptions(t)
	o.DataDir, o.Endpoints = "", etcd.Endpoints
	first, stopFirst := startScheduler(t, ctx, o)
	waitLeading(t, first)
	second, _ := startScheduler(t, ctx, o)
	e := &schedEnv{t: t, ctx: ctx, addrs: []string{first.Addr()}, agents: map[string]*schedload.Agent{}}
	e.dialAPI()
	e.addrs = []string{first.Addr(), second.Addr()}
	for i, az := range []string{"az-a", "az-b"} {
		e.agent(fmt.Sprintf("h%d", i), az, 8000, schedload.RunForever)
	}
	e.waitAgents(2)
	// New tasks stay Starting (not available) until the test says so.
	starting := func(*task.Spec) task.HealthStatus { return task.HealthStarting }
	for _, a := range e.agents {
		a.Tasks.SetHealth(starting)
	}
	update := &schedv1.UpdateStrategy{MaxSurge: "2", MaxUnavailable: "0", ProgressDeadlineSeconds: 3600}
	id := e.submit(serviceSpec6(imageV1, update, ""))
	e.eventually("6 running", func() (bool, string) { return e.byRevision(id)[1] == 6, fmt.Sprint(e.byRevision(id)) })
	v2 := serviceSpec6(imageV2, update, "")
	v2.Task.HealthCheck = &agentv1.HealthCheckSpec{Kind: "exec", Command: []string{"true"}, Interval: durationpb.New(time.Second),
		Timeout: durationpb.New(500 * time.Millisecond), HealthyThreshold: 1, UnhealthyThreshold: 3}
	if _, err := e.api.UpdateJob(ctx, &schedv1.UpdateJobRequest{Id: id, Spec: v2}); err != nil {
		t.Fatalf("update: %v", err)
	}
	e.eventually("two replacements running, not yet healthy", func() (bool, string) {
		got := e.byRevision(id)
		return got[2] == 2 && got[1] == 6, fmt.Sprint(got)
	})

	stopFirst() // the leader dies mid-rollout
	waitLeading(t, second)
	e.addrs = e.addrs[1:]
	e.dialAPI()
	e.waitAgents(2)
	if r, s := e.rolloutState(id); r.GetState() != schedv1.Rollout_STATE_PROGRESSING || r.GetToRevision() != 2 {
		t.Fatalf("the standby's view: %s", s)
	}
	healthy := func(*task.Spec) task.HealthStatus { return task.HealthHealthy }
	for _, a := range e.agents {
		a.Tasks.SetHealth(healthy)
	}
	e.eventually("rollout complete under the new leader", func() (bool, string) {
		r, s := e.rolloutState(id)
		return r.GetState() == schedv1.Rollout_STATE_COMPLETE, s
	})
	if got := e.byRevision(id); got[2] != 6 || len(got) != 1 {
		t.Errorf("running by revision %v, want 6 of revision 2", got)
	}
	if got := e.launchesByImage(); got[imageV1] != 6 || got[imageV2] != 6 {
		t.Errorf("launches by image %v, want 6 of each (none doubled by the failover)", got)
	}
}
