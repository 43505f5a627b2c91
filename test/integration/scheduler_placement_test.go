package integration

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
	"github.com/titus-agent/titus-agent/pkg/schedlink"
	"github.com/titus-agent/titus-agent/test/schedload"
)

// placementAgent is a simulated agent with host attributes and labels.
func (e *schedEnv) placementAgent(id, az, itype, kernel string, labels map[string]string) *schedload.Agent {
	a := schedload.NewAgent(schedlink.Config{
		Address: strings.Join(e.addrs, ","), InstanceID: id, InstanceType: itype, AZ: az, Labels: labels,
		Capacity:   schedlink.Capacity{CPUMillicores: 4000, MemoryMiB: 16384, DiskMiB: 10000, NetworkMbps: 1000, ENIs: 3, IPsPerENI: 10},
		Attributes: schedlink.Attributes{Kernel: kernel, AgentVersion: "1.2.0", CgroupMode: "v2"},
		MinBackoff: 50 * time.Millisecond, MaxBackoff: 300 * time.Millisecond,
	}, schedload.RunForever)
	a.Start(e.ctx)
	e.t.Cleanup(a.Stop)
	e.agents[id] = a
	return a
}

// runningOn counts the job's running tasks per agent once n run.
func (e *schedEnv) runningOn(id string, n int) map[string]int {
	e.t.Helper()
	var r map[string]int
	e.eventually(fmt.Sprintf("%d tasks of %s running", n, id), func() (bool, string) {
		r = e.running(id)
		total := 0
		for _, c := range r {
			total += c
		}
		return total == n, fmt.Sprint(r)
	})
	return r
}

// killAndDrain kills a job and waits until no agent runs a task.
func (e *schedEnv) killAndDrain(id string) {
	e.t.Helper()
	if _, err := e.api.KillJob(e.ctx, &schedv1.KillJobRequest{Id: id}); err != nil {
		e.t.Fatalf("kill job: %v", err)
	}
	e.eventually("agents idle", func() (bool, string) {
		for name, a := range e.agents {
			if n := len(a.Tasks.Running()); n > 0 {
				return false, fmt.Sprintf("%s runs %d", name, n)
			}
		}
		return true, ""
	})
}

func placed(kind any, p *schedv1.Placement) *schedv1.JobSpec {
	s := jobSpec(kind)
	s.Task.Command = []string{"sleep", "inf"}
	s.Placement = p
	return s
}

// TestSchedulerPlacementConstraints: hard constraints send tasks only to
// matching hosts and queue with the reason when none matches, soft ones
// prefer without excluding, maxPerHost queues what does not fit, zone
// balance and instance families hold, and bad constraints are refused at
// submit with the field named.
func TestSchedulerPlacementConstraints(t *testing.T) {
	begin(t)
	e, _ := newSchedEnv(t, schedOptions(t))
	e.placementAgent("gold-a", "az-a", "m5.large", "6.1.0-13-cloud-amd64", map[string]string{"tier": "gold"})
	e.placementAgent("gold-b", "az-b", "c6i.large", "6.1.0-13-cloud-amd64", map[string]string{"tier": "gold"})
	e.placementAgent("silver-b", "az-b", "m5.large", "5.10.0-26-cloud-amd64", map[string]string{"tier": "silver"})
	e.waitAgents(3)

	t.Run("hard constraint places only on matching hosts", func(t *testing.T) {
		id := e.submit(placed(&schedv1.BatchJob{Size: 6}, &schedv1.Placement{Constraints: []string{"label.tier = gold"}}))
		r := e.runningOn(id, 6)
		if r["silver-b"] != 0 {
			t.Errorf("tasks on silver-b, which is not gold: %v", r)
		}
		e.killAndDrain(id)
	})
	t.Run("no host matches: queued, and the reason names the constraint", func(t *testing.T) {
		id := e.submit(placed(&schedv1.BatchJob{Size: 2}, &schedv1.Placement{Constraints: []string{"kernel >= 5", "gpu.model in [H100]"}}))
		want := "no host with gpu.model in [H100]: 3 of 3 hosts lack the attribute"
		e.eventually("queued with the reason", func() (bool, string) {
			j := e.job(id)
			return j.QueuedReason == want && j.Counts.Pending == 2, fmt.Sprintf("%q pending %d", j.QueuedReason, j.Counts.Pending)
		})
		if r := e.running(id); len(r) != 0 {
			t.Fatalf("tasks running: %v", r)
		}
		e.killAndDrain(id)
	})
	t.Run("soft constraint prefers without excluding", func(t *testing.T) {
		// silver-b has room for 4 tasks: it takes them, the rest go elsewhere.
		id := e.submit(placed(&schedv1.BatchJob{Size: 6}, &schedv1.Placement{
			Preferences: []*schedv1.Preference{{Constraint: "label.tier = silver", Weight: 10}}}))
		r := e.runningOn(id, 6)
		if r["silver-b"] != 4 {
			t.Errorf("silver-b runs %d, want 4 (preferred, then full): %v", r["silver-b"], r)
		}
		e.killAndDrain(id)
	})
	t.Run("maxPerHost 1 with more tasks than hosts queues the rest", func(t *testing.T) {
		id := e.submit(placed(&schedv1.BatchJob{Size: 5}, &schedv1.Placement{MaxPerHost: 1}))
		r := e.runningOn(id, 3)
		for h, n := range r {
			if n != 1 {
				t.Errorf("%s runs %d of the job's tasks, want 1", h, n)
			}
		}
		want := "maxPerHost 1: 3 of the 3 hosts the job may use already run 1 of its tasks"
		e.eventually("queued with the reason", func() (bool, string) {
			j := e.job(id)
			return j.QueuedReason == want && j.Counts.Pending == 2, fmt.Sprintf("%q pending %d", j.QueuedReason, j.Counts.Pending)
		})
		e.killAndDrain(id)
	})
	t.Run("zone balance hard and instance families", func(t *testing.T) {
		id := e.submit(placed(&schedv1.ServiceJob{Min: 0, Desired: 4, Max: 4}, &schedv1.Placement{
			Constraints: []string{"label.tier = gold"}, ZoneBalance: schedv1.ZoneBalance_ZONE_BALANCE_HARD}))
		if r := e.runningOn(id, 4); r["gold-a"] != 2 || r["gold-b"] != 2 {
			t.Errorf("want 2 per zone on the gold hosts: %v", r)
		}
		e.killAndDrain(id)
		id = e.submit(placed(&schedv1.BatchJob{Size: 2}, &schedv1.Placement{InstanceFamilies: []string{"c6i"}}))
		if r := e.runningOn(id, 2); r["gold-b"] != 2 {
			t.Errorf("want both on the c6i host: %v", r)
		}
		e.killAndDrain(id)
	})
	t.Run("bad constraints are refused at submit", func(t *testing.T) {
		for _, tc := range []struct {
			p     *schedv1.Placement
			field string
		}{
			{&schedv1.Placement{Constraints: []string{"zone ~ az-a"}}, "placement.constraints[0]"},
			// Constraints read host attributes only, never another tenant's jobs.
			{&schedv1.Placement{Constraints: []string{"zone = az-a", "job.application = other"}}, "placement.constraints[1]"},
			{&schedv1.Placement{Constraints: []string{"ami =~ [a-z]{500}[0-9]{500}"}}, "placement.constraints[0]"},
			{&schedv1.Placement{Preferences: []*schedv1.Preference{{Constraint: "zone = a", Weight: 500}}}, "placement.preferences[0].weight"},
			{&schedv1.Placement{InstanceFamilies: []string{"m5.large"}}, "placement.instance_families[0]"},
			{&schedv1.Placement{UniqueHost: true, MaxPerHost: 2}, "placement.unique_host"},
		} {
			_, err := e.api.SubmitJob(e.ctx, &schedv1.SubmitJobRequest{Spec: placed(&schedv1.BatchJob{Size: 1}, tc.p)})
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tc.field) {
				t.Errorf("submit %v: %v, want InvalidArgument naming %s", tc.p, err, tc.field)
			}
		}
	})
	// The agents' attributes are what placement used.
	resp, err := e.api.ListAgents(e.ctx, &schedv1.ListAgentsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range resp.Agents {
		if a.GetAttributes().GetKernel() == "" || a.GetAttributes().GetCgroupMode() != "v2" {
			t.Errorf("agent %s attributes %v", a.Id, a.GetAttributes())
		}
	}
}
