package core

import (
	"testing"
	"time"

	"github.com/titus-agent/titus-agent/pkg/scheduler/model"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// TestHeartbeatChangesKeepWhatWasSaid: a changes-only heartbeat lists the
// tasks whose status changed; what the agent said of the others holds. A
// task listed with its IP is in the agent's ENI report until it is listed
// otherwise; a full heartbeat that does not list a task says the report
// does not hold its IP.
func TestHeartbeatChangesKeepWhatWasSaid(t *testing.T) {
	ts := newTestScheduler(t, Config{})
	sess := newSession()
	u := &model.NetworkUsage{AttachableENIs: 1, DefaultSubnetID: "subnet-0d", DefaultSecurityGroups: "sg-d"}
	ts.mu.Lock()
	sess.agent = ts.register(model.Registration{InstanceID: "a", AZ: "az-1", Network: u,
		Capacity: model.Capacity{Resources: model.Resources{CPU: 8000, Mem: 65536}, ENIs: 2, IPsPerENI: 4}}, sess, time.Now())
	ts.mu.Unlock()
	s := testSpec(&model.BatchJob{Size: 2}, 100)
	s.Task.Network.SecurityGroupIDs = []string{"sg-1"}
	ts.submit(s)
	placed := ts.place()
	if len(placed) != 2 {
		t.Fatalf("placed %v", placed)
	}
	unreported := func() int {
		ts.mu.RLock()
		defer ts.mu.RUnlock()
		n := 0
		for _, c := range ts.agents["a"].net.unreported {
			n += c
		}
		return n
	}
	used := &model.NetworkUsage{DefaultSubnetID: "subnet-0d", DefaultSecurityGroups: "sg-d",
		SGSets: []model.SGSetENIs{{SecurityGroups: "sg-1", SubnetID: "subnet-0d", ENIs: 1, UsedIPs: 2, FreeIPs: 2}}}
	ts.HeartbeatChanges(sess, true, []model.TaskStatus{
		{TaskID: placed[0], State: task.Running, IP: "198.18.0.10"}, {TaskID: placed[1], State: task.Running, IP: "198.18.0.11"}}, used)
	if n := unreported(); n != 0 {
		t.Fatalf("after both listed with their IPs: %d unreported", n)
	}
	ts.HeartbeatChanges(sess, true, nil, used)
	if n := unreported(); n != 0 {
		t.Errorf("a changes-only heartbeat listing nothing: %d unreported, want 0 (both still hold the IPs they were listed with)", n)
	}
	ts.Heartbeat(sess, true, nil, used)
	if n := unreported(); n != 2 {
		t.Errorf("a full heartbeat listing neither: %d unreported, want 2", n)
	}
}

// TestUnhealthyReplacedWithoutBeingListed: a task that turned Unhealthy is
// listed once by changes-only heartbeats; the scheduler still replaces it
// once the job's policy has passed, on a heartbeat that does not list it.
func TestUnhealthyReplacedWithoutBeingListed(t *testing.T) {
	ts := newTestScheduler(t, Config{})
	sess := ts.connect("a1", 4000)
	ts.submit(testSpec(&model.ServiceJob{Min: 1, Desired: 1, Max: 1, UnhealthyReplaceAfterSeconds: 30,
		Retry: &model.RetryPolicy{Kind: model.RetryDelayed, DelayMs: 60_000}}, 100))
	placed := ts.place()
	if len(placed) != 1 {
		t.Fatalf("placed %v", placed)
	}
	tid := placed[0]
	ts.HeartbeatChanges(sess, true, []model.TaskStatus{{TaskID: tid, State: task.Running,
		Health: &task.Health{Status: task.HealthUnhealthy, Since: time.Now(), Output: "503"}}}, nil)
	drainKills(sess)
	ts.HeartbeatChanges(sess, true, nil, nil)
	if k := drainKills(sess); len(k) != 0 {
		t.Fatalf("killed within the policy: %+v", k)
	}
	ts.mu.Lock()
	ts.tasks[tid].unhealthySince = time.Now().Add(-31 * time.Second)
	ts.mu.Unlock()
	ts.HeartbeatChanges(sess, true, nil, nil)
	k := drainKills(sess)
	if len(k) != 1 || k[0].Kill[0] != tid || k[0].KillReason != task.ReasonHealthCheckFailed {
		t.Fatalf("kills %+v, want one of %s for HealthCheckFailed on a heartbeat that does not list it", k, tid)
	}
	// Healthy again before the policy: no longer watched.
	ts.mu.RLock()
	n := len(ts.agents["a1"].unhealthy)
	ts.mu.RUnlock()
	if n != 0 {
		t.Errorf("%d tasks still watched after the kill was asked for", n)
	}
}

// TestStatusNotAppliedAsksForEveryTask: a status the scheduler could not
// apply (its task's placement still being written) would not be repeated
// by changes-only heartbeats: the scheduler asks the agent for every task.
func TestStatusNotAppliedAsksForEveryTask(t *testing.T) {
	ts := newTestScheduler(t, Config{})
	sess := ts.connect("a1", 4000)
	ts.submit(testSpec(&model.BatchJob{Size: 1}, 100))
	placed := ts.place()
	if len(placed) != 1 {
		t.Fatalf("placed %v", placed)
	}
	drain := func() (all int) {
		for {
			select {
			case m := <-sess.out:
				if m.SendAllTasks {
					all++
				}
			default:
				return all
			}
		}
	}
	drain()
	ts.HeartbeatChanges(sess, true, nil, nil)
	if n := drain(); n != 0 {
		t.Fatalf("asked for every task %d times with nothing dropped", n)
	}
	ts.mu.Lock()
	ts.tasks[placed[0]].committing = true
	ts.mu.Unlock()
	ts.HeartbeatChanges(sess, true, []model.TaskStatus{{TaskID: placed[0], State: task.Finished}}, nil)
	if n := drain(); n != 1 {
		t.Fatalf("asked for every task %d times after dropping a status, want 1", n)
	}
	ts.mu.Lock()
	ts.tasks[placed[0]].committing = false
	ts.mu.Unlock()
	ts.Heartbeat(sess, true, []model.TaskStatus{{TaskID: placed[0], State: task.Finished}}, nil)
	if err := ts.Flush(ts.ctx); err != nil {
		t.Fatal(err)
	}
	if got, err := ts.Task(ts.ctx, placed[0]); err != nil || got.State != task.Finished {
		t.Fatalf("task %v (%v), want Finished from the full heartbeat", got, err)
	}
}
