package integration

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
	"github.com/titus-agent/titus-agent/pkg/schedlink"
	"github.com/titus-agent/titus-agent/pkg/task"
	"github.com/titus-agent/titus-agent/test/schedload"
)

// deafTasks are simulated tasks whose transitions never reach the link
// (every update lost): only heartbeats tell the scheduler.
type deafTasks struct{ *schedload.SimTasks }

func (deafTasks) Subscribe(context.Context) <-chan task.Event { return make(chan task.Event) }

// TestSchedulerHeartbeatChanges: heartbeats list only the tasks whose
// status changed, on the real stream, and still carry every transition:
// an agent whose updates are all lost gets its tasks' ends to the
// scheduler through them. An agent that predates changes-only heartbeats
// (a raw stream sending full lists, ignoring what it does not know) keeps
// working with the new scheduler.
func TestSchedulerHeartbeatChanges(t *testing.T) {
	begin(t)
	e, _ := newSchedEnv(t, schedOptions(t))
	sim := schedload.NewSimTasks(func(*task.Spec) (time.Duration, int32) { return time.Second, 0 })
	deafCtx, stopDeaf := context.WithCancel(e.ctx)
	deafDone := make(chan struct{})
	t.Cleanup(func() { stopDeaf(); <-deafDone })
	go func() {
		defer close(deafDone)
		_ = schedlink.Run(deafCtx, schedlink.Config{Address: e.addrs[0], InstanceID: "deaf", InstanceType: "m5.large", AZ: "az-a",
			Capacity: schedlink.Capacity{CPUMillicores: 4000, MemoryMiB: 16384}, MinBackoff: 50 * time.Millisecond}, deafTasks{sim})
	}()
	e.waitAgents(1)
	batch := func(n uint32) string {
		s := jobSpec(&schedv1.BatchJob{Size: n})
		s.Task.Resources = &agentv1.Resources{CpuMillicores: 100, MemoryMib: 64}
		return e.submit(s)
	}
	j := batch(3)
	// Within 8s: the tasks run 1s and heartbeats come every 200ms; the
	// periodic full list (every 60th, 12s) must not be what tells.
	waitUntil(t, "the deaf agent's tasks finished, told by heartbeats alone", 8*time.Second, func() (bool, string) {
		job := e.job(j)
		return job.State == schedv1.JobState_JOB_STATE_FINISHED && job.Counts.Finished == 3, fmt.Sprint(job.State, job.Counts)
	})

	// An old agent: full lists in every heartbeat, no changes_only.
	cc, err := grpc.NewClient(e.addrs[0], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	sctx, cancel := context.WithCancel(e.ctx)
	t.Cleanup(cancel)
	stream, err := schedv1.NewSchedulerClient(cc).Connect(sctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&schedv1.AgentMessage{Msg: &schedv1.AgentMessage_Register{Register: &schedv1.Register{
		InstanceId: "old", InstanceType: "m5.large", Az: "az-a", Capacity: &schedv1.Capacity{CpuMillicores: 4000, MemoryMib: 16384}}}}); err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil || first.GetRegistered() == nil || !first.GetRegistered().GetChangesOnly() {
		t.Fatalf("registration answered %v (%v), want Registered offering changes_only", first, err)
	}
	launched := make(chan []string, 8)
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				return
			}
			var ids []string
			for _, ts := range m.GetLaunch().GetTasks() {
				ids = append(ids, ts.GetId())
			}
			if len(ids) > 0 {
				launched <- ids
			}
		}
	}()
	stopDeaf()
	<-deafDone
	j2 := batch(8) // only the old agent is connected now
	var mine []string
	waitUntil(t, "the old agent is sent tasks", 30*time.Second, func() (bool, string) {
		// Heartbeat meanwhile (an old agent's: every task, every time).
		hb := &schedv1.Heartbeat{Healthy: true}
		for _, id := range mine {
			hb.Tasks = append(hb.Tasks, &schedv1.TaskStatus{TaskId: id, State: agentv1.TaskState_TASK_STATE_RUNNING, Ip: "198.18.7.1"})
		}
		if err := stream.Send(&schedv1.AgentMessage{Msg: &schedv1.AgentMessage_Heartbeat{Heartbeat: hb}}); err != nil {
			t.Fatal(err)
		}
		select {
		case ids := <-launched:
			mine = append(mine, ids...)
		case <-time.After(200 * time.Millisecond):
		}
		return len(mine) > 0, fmt.Sprintf("job %v", e.job(j2))
	})
	full := func(st agentv1.TaskState) {
		for more := true; more; {
			select {
			case ids := <-launched:
				mine = append(mine, ids...)
			default:
				more = false
			}
		}
		hb := &schedv1.Heartbeat{Healthy: true}
		for _, id := range mine {
			hb.Tasks = append(hb.Tasks, &schedv1.TaskStatus{TaskId: id, State: st, Reason: "Completed", Ip: "198.18.7.1"})
		}
		if err := stream.Send(&schedv1.AgentMessage{Msg: &schedv1.AgentMessage_Heartbeat{Heartbeat: hb}}); err != nil {
			t.Fatal(err)
		}
	}
	e.eventually("the old agent's tasks running", func() (bool, string) {
		full(agentv1.TaskState_TASK_STATE_RUNNING)
		n := e.running(j2)["old"]
		return n == 8, fmt.Sprintf("%d of 8 running on old (%d launched)", n, len(mine))
	})
	full(agentv1.TaskState_TASK_STATE_FINISHED)
	waitUntil(t, "the job finished", 30*time.Second, func() (bool, string) {
		full(agentv1.TaskState_TASK_STATE_FINISHED)
		job := e.job(j2)
		return job.State == schedv1.JobState_JOB_STATE_FINISHED, fmt.Sprint(job.State, job.Counts, " old ran ", strings.Join(mine, ","))
	})
}
