package wire

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// TestRecordsRoundTrip: a record as the API and the store have always
// written it converts to the model and back unchanged, so stored records
// still load and a job is shown as it was submitted.
func TestRecordsRoundTrip(t *testing.T) {
	at := timestamppb.New(time.Unix(1_700_000_000, 5))
	retry := &schedv1.RetryPolicy{Kind: schedv1.RetryPolicy_KIND_EXPONENTIAL, MaxRetries: 3, DelayMs: 10, MaxDelayMs: 90, ResetAfterSeconds: 7}
	jobs := []*schedv1.Job{
		{Id: "j1", State: schedv1.JobState_JOB_STATE_ACCEPTED, Created: at, Counts: &schedv1.JobCounts{Pending: 1, Retries: 2},
			Spec: &schedv1.JobSpec{Name: "n", OwnerEmail: "o@example.com", Application: "app", CapacityGroup: "default", Labels: map[string]string{"k": "v"},
				Kind: &schedv1.JobSpec_Batch{Batch: &schedv1.BatchJob{Size: 2, RuntimeLimitSeconds: 60, Retry: retry}},
				Task: &agentv1.TaskSpec{Image: "registry.example/x:1", Command: []string{"sh", "-c", "true"}, Env: map[string]string{"A": "1"},
					KillGracePeriodSeconds: 3, Resources: &agentv1.Resources{CpuMillicores: 500, MemoryMib: 64, Pids: 10},
					Network: &agentv1.NetworkRequest{SecurityGroupIds: []string{"sg-1"}}, IamRoleArn: "arn:aws:iam::123456789012:role/r"}}},
		{Id: "j2", State: schedv1.JobState_JOB_STATE_KILLED, Created: at, Finished: at, Counts: &schedv1.JobCounts{Killed: 1}, QueuedReason: "why",
			Spec: &schedv1.JobSpec{OwnerEmail: "o@example.com", Application: "app",
				Kind: &schedv1.JobSpec_Service{Service: &schedv1.ServiceJob{Min: 1, Desired: 2, Max: 3}},
				Task: &agentv1.TaskSpec{Image: "x"}}},
	}
	for _, j := range jobs {
		if diff := cmp.Diff(j, JobToProto(JobFromProto(j)), protocmp.Transform()); diff != "" {
			t.Errorf("job %s (-want +got):\n%s", j.Id, diff)
		}
	}
	task := &schedv1.Task{Id: "j1.0.1", JobId: "j1", Attempt: 1, AgentId: "a", Az: "az", State: agentv1.TaskState_TASK_STATE_FAILED,
		Reason: "Failed", Message: "m", ExitCode: 2, Failures: 1, Placed: at, Started: at, Ended: at}
	if diff := cmp.Diff(task, TaskToProto(TaskFromProto(task)), protocmp.Transform()); diff != "" {
		t.Errorf("task (-want +got):\n%s", diff)
	}
	agent := &schedv1.Agent{Id: "a", InstanceType: "m5", Az: "az", Labels: map[string]string{"k": "v"}, Drained: true,
		Capacity: &schedv1.Capacity{CpuMillicores: 1000, MemoryMib: 2048, DiskMib: 1, NetworkMbps: 2, Gpus: 1, Enis: 3, IpsPerEni: 10}}
	if diff := cmp.Diff(agent, AgentRecordToProto(AgentFromProto(agent)), protocmp.Transform()); diff != "" {
		t.Errorf("agent record (-want +got):\n%s", diff)
	}
}

// TestLaunchBatchesStayUnderTheLimit: a batch far larger than an agent's
// receive limit is split into messages that each fit, in order, none
// lost; a spec larger than the limit on its own travels alone.
func TestLaunchBatchesStayUnderTheLimit(t *testing.T) {
	const limit = 64 << 10
	blob := func(n int) map[string]string { return map[string]string{"BLOB": strings.Repeat("x", n)} }
	var specs []*task.Spec
	for i := range 200 {
		specs = append(specs, &task.Spec{ID: fmt.Sprintf("j.%d.1", i), Image: "busybox", Env: blob(i * 37 % 5000)})
	}
	specs = append(specs, &task.Spec{ID: "big.0.1", Image: "busybox", Env: blob(limit)}, &task.Spec{ID: "after.0.1", Image: "busybox"})

	batches := LaunchBatches(specs, limit)
	var got, want []string
	for _, s := range specs {
		want = append(want, s.ID)
	}
	for i, l := range batches {
		m := &schedv1.SchedulerMessage{Msg: &schedv1.SchedulerMessage_Launch{Launch: l}}
		n := proto.Size(m)
		alone := len(l.Tasks) == 1 && l.Tasks[0].Id == "big.0.1"
		if n > limit && !alone {
			t.Errorf("message %d: %d bytes with %d tasks, over the %d limit", i, n, len(l.Tasks), limit)
		}
		if i+1 < len(batches) && !alone && n+entrySize(batches[i+1].Tasks[0]) <= limit-envelope && batches[i+1].Tasks[0].Id != "big.0.1" {
			t.Errorf("message %d: %d bytes, the next task would have fit", i, n)
		}
		for _, p := range l.Tasks {
			got = append(got, p.Id)
		}
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("task ids across messages (-want +got):\n%s", diff)
	}
	if len(batches) < 8 {
		t.Errorf("%d messages; want the ~500 kB batch split into at least 8", len(batches))
	}
	if LaunchBatches(nil, limit) != nil {
		t.Error("no spec: want no message")
	}
}

// TestNetworkUsageSubnetListsBounded: an agent reporting more subnets than
// MaxReportedSubnets (a hostile one, to grow the scheduler's zone findings)
// has its lists cut there; a normal report passes whole.
func TestNetworkUsageSubnetListsBounded(t *testing.T) {
	many := make([]string, MaxReportedSubnets+500)
	for i := range many {
		many[i] = "subnet-" + strconv.Itoa(i)
	}
	u := NetworkUsageFromProto(&schedv1.NetworkUsage{ZoneSubnets: many, OtherZoneSubnets: many})
	if len(u.ZoneSubnets) != MaxReportedSubnets || len(u.OtherZoneSubnets) != MaxReportedSubnets {
		t.Errorf("kept %d and %d subnets, want %d each", len(u.ZoneSubnets), len(u.OtherZoneSubnets), MaxReportedSubnets)
	}
	few := &schedv1.NetworkUsage{ZoneSubnets: []string{"subnet-a"}, OtherZoneSubnets: []string{"subnet-b", "subnet-c"}}
	got := NetworkUsageFromProto(few)
	if diff := cmp.Diff([]string{"subnet-a"}, got.ZoneSubnets); diff != "" {
		t.Errorf("zone subnets (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"subnet-b", "subnet-c"}, got.OtherZoneSubnets); diff != "" {
		t.Errorf("other-zone subnets (-want +got):\n%s", diff)
	}
}
