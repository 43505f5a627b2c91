package integration

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
	"github.com/titus-agent/titus-agent/pkg/task"
	"github.com/titus-agent/titus-agent/test/schedload"
	"github.com/titus-agent/titus-agent/test/testenv"
)

// TestSchedulerEC2SubnetZones: real agents with the ec2 provider on
// simulated hosts in two zones (moto). A task takes its IP in the first of
// its subnets in its host's zone; a task naming only subnet B (us-east-1b)
// cannot run on host a (us-east-1a). The scheduler learns subnets' zones
// from the agents' reports: the one attempt host a refuses before it has
// looked B up (SubnetNotInZone) is placed again at once, counted as no
// failure, and from then on a is left out, the job queued with a reason
// naming B's zone; once host b (us-east-1b) joins, the task runs there with
// an address of B, and later tasks of B go only to b.
func TestSchedulerEC2SubnetZones(t *testing.T) {
	begin(t)
	bed := newEC2Bed(t, "t3.small", false) // subnet 0 in us-east-1a (host a), 1 in us-east-1b (host b)
	subB := bed.hv.Subnets[1]
	ctd := testenv.StartContainerd(t)
	reg := testenv.StartRegistry(t)
	image := testenv.PushBusybox(t, reg, "busybox", "latest")
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	t.Cleanup(cancel)
	s, _ := startScheduler(t, ctx, schedOptions(t))
	waitLeading(t, s)
	e := &schedEnv{t: t, ctx: ctx, addrs: []string{s.Addr()}, agents: map[string]*schedload.Agent{}}
	e.dialAPI()
	link := func(h *testenv.SimHost) string {
		return fmt.Sprintf("scheduler:\n  address: %q\n  instanceID: %s\n", e.addrs[0], h.InstanceID)
	}
	var agents []*agentEnv
	t.Cleanup(func() {
		if t.Failed() {
			for _, a := range agents {
				t.Logf("== agent log\n%s", tailLog(a.agent.Log()))
			}
		}
	})
	agents = append(agents, bed.startAgentWith(t, ctd, reg, image, bed.a, "titus-a", link(bed.a)))
	e.waitAgents(1)

	submit := func(n uint32) string {
		s := jobSpec(&schedv1.BatchJob{Size: n}) // no retries: any counted failure fails the job
		s.Task.Image = image
		s.Task.Command = []string{"sleep", "600"}
		s.Task.Resources = &agentv1.Resources{CpuMillicores: 50, MemoryMib: 32}
		s.Task.Network = &agentv1.NetworkRequest{SecurityGroupIds: []string{bed.sg1}, SubnetIds: []string{subB.ID}}
		return e.submit(s)
	}
	// attempts lists every attempt of a job's tasks: where, how it ended.
	attempts := func(id string) (onA []string, all []*schedv1.Task) {
		resp, err := e.api.ListTasks(e.ctx, &schedv1.ListTasksRequest{JobId: id, All: true})
		if err != nil {
			t.Fatal(err)
		}
		for _, tk := range resp.Tasks {
			if tk.AgentId == bed.a.InstanceID {
				onA = append(onA, fmt.Sprintf("%s %s %s", tk.Id, tk.State, tk.Reason))
			}
		}
		return onA, resp.Tasks
	}
	noFailures := func(id string) {
		if c := e.job(id).Counts; c.Failed+c.Lost+c.Retries > 0 {
			t.Fatalf("job %s: a task failure was counted: %v", id, c)
		}
	}

	j1 := submit(1)
	want := "subnet zone: none of subnets [" + subB.ID + "] is in the zone of 1 of the 1 hosts the job may use (us-east-1a;"
	e.eventually("the job queued for its subnet's zone", func() (bool, string) {
		noFailures(j1)
		r := e.job(j1).QueuedReason
		return strings.HasPrefix(r, want), r
	})
	// The refused attempt's record may reach its final state just after the
	// finding that queues the job: wait for it, and for no other attempt.
	var onA []string
	e.eventually("at most the one attempt on host a, refused "+string(task.ReasonSubnetNotInZone), func() (bool, string) {
		onA, _ = attempts(j1)
		ok := len(onA) == 0 || len(onA) == 1 && strings.HasSuffix(onA[0], string(task.ReasonSubnetNotInZone))
		return ok, fmt.Sprintf("attempts on host a: %v; want at most the one refused before a looked the subnet up", onA)
	})
	// Heartbeats and placement rounds later it still waits, never sent to a again.
	time.Sleep(3 * time.Second)
	noFailures(j1)
	if again, _ := attempts(j1); len(again) != len(onA) {
		t.Fatalf("sent to host a again: %v", again)
	}
	t.Logf("queued because: %s (attempts refused by a: %d)", e.job(j1).QueuedReason, len(onA))

	agents = append(agents, bed.startAgentWith(t, ctd, reg, image, bed.b, "titus-b", link(bed.b)))
	e.waitAgents(2)
	waitUntil(t, "the task runs on host b", 2*time.Minute, func() (bool, string) {
		noFailures(j1)
		n := e.running(j1)
		return n[bed.b.InstanceID] == 1, fmt.Sprintf("running %v, job %v", n, e.job(j1))
	})
	// More tasks of B go to b only: host a's finding keeps its zone out.
	j2 := submit(2)
	waitUntil(t, "two more tasks of B run on host b", 2*time.Minute, func() (bool, string) {
		noFailures(j2)
		n := e.running(j2)
		return n[bed.b.InstanceID] == 2, fmt.Sprintf("running %v, job %v", n, e.job(j2))
	})
	if onA, _ := attempts(j2); len(onA) > 0 {
		t.Errorf("tasks of subnet B sent to host a after it reported B outside its zone: %v", onA)
	}
	for _, id := range []string{j1, j2} {
		for _, tk := range e.liveTasks(id) {
			if ip, err := netip.ParseAddr(tk.Ip); err != nil || !subB.CIDR.Contains(ip) {
				t.Errorf("task %s has IP %q, want one of subnet B %s", tk.Id, tk.Ip, subB.CIDR)
			}
		}
		if _, err := e.api.KillJob(e.ctx, &schedv1.KillJobRequest{Id: id}); err != nil {
			t.Fatal(err)
		}
	}
}
