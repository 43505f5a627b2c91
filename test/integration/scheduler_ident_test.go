package integration

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
	"github.com/titus-agent/titus-agent/pkg/agent/schedlink"
	"github.com/titus-agent/titus-agent/test/schedload"
	"github.com/titus-agent/titus-agent/test/testenv"
)

// registerAs opens a raw agent stream claiming instance id, with dial
// options, and returns the scheduler's answer to the registration.
func registerAs(t *testing.T, addr, id string, dial ...grpc.DialOption) error {
	t.Helper()
	if len(dial) == 0 {
		dial = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	}
	cc, err := grpc.NewClient(addr, dial...)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	stream, err := schedv1.NewSchedulerClient(cc).Connect(ctx)
	if err != nil {
		return err
	}
	if err := stream.Send(&schedv1.AgentMessage{Msg: &schedv1.AgentMessage_Register{Register: &schedv1.Register{
		InstanceId: id, Az: "az-a", Capacity: &schedv1.Capacity{CpuMillicores: 1 << 20, MemoryMib: 1 << 30}}}}); err != nil {
		return err
	}
	m, err := stream.Recv()
	if err != nil {
		return err
	}
	if m.GetRegistered() == nil {
		return fmt.Errorf("first message %v is not an acknowledgement", m)
	}
	return nil
}

// TestSchedulerRefusesImpostorAgent is the attack: while an agent runs a
// service job, a fake agent (and then a whole second agent, as a cloned
// AMI with a fixed instance id would be) connects with the same instance
// id and huge capacity. It is refused with AlreadyExists naming the live
// session; the real agent keeps its session and its tasks stay RUNNING,
// never LOST, never relaunched (before, the scheduler flapped between the
// two and the task was killed, LOST and relaunched in a hot loop).
func TestSchedulerRefusesImpostorAgent(t *testing.T) {
	begin(t)
	e, _ := newSchedEnv(t, schedOptions(t))
	real := e.agent("host-1", "az-a", 8000, schedload.RunForever)
	e.waitAgents(1)
	id := e.submit(jobSpec(&schedv1.ServiceJob{Desired: 2, Max: 2}))
	e.eventually("2 running on the real agent", func() (bool, string) {
		return e.running(id)["host-1"] == 2 && len(real.Tasks.Running()) == 2, fmt.Sprint(e.running(id))
	})
	before := slices.Sorted(slices.Values(real.Tasks.Running()))

	err := registerAs(t, e.addrs[0], "host-1")
	if status.Code(err) != codes.AlreadyExists || !strings.Contains(err.Error(), "instance host-1 already has a live session from 127.0.0.1:") {
		t.Fatalf("impostor registration: %v; want AlreadyExists naming the live session", err)
	}

	clone := schedload.NewAgent(schedlink.Config{Address: e.addrs[0], InstanceID: "host-1", AZ: "az-b",
		Capacity:   schedlink.Capacity{CPUMillicores: 1 << 20, MemoryMiB: 1 << 30},
		MinBackoff: 50 * time.Millisecond, MaxBackoff: 100 * time.Millisecond}, schedload.RunForever)
	clone.Start(e.ctx)
	t.Cleanup(clone.Stop)
	time.Sleep(3 * schedTTL) // the clone retries about every 100 ms meanwhile

	j := e.job(id)
	if j.Counts.Lost != 0 || j.Counts.Killed != 0 || j.Counts.Running != 2 {
		t.Fatalf("job counts with an impostor around: %v; want 2 running, none lost or killed", j.Counts)
	}
	if after := slices.Sorted(slices.Values(real.Tasks.Running())); !slices.Equal(before, after) {
		t.Fatalf("real agent's tasks changed: before %v, after %v", before, after)
	}
	if got := clone.Tasks.Running(); len(got) != 0 {
		t.Fatalf("the clone received tasks: %v", got)
	}
	resp, err := e.api.ListAgents(e.ctx, &schedv1.ListAgentsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Agents) != 1 || !resp.Agents[0].Connected || resp.Agents[0].Az != "az-a" || resp.Agents[0].Lost {
		t.Fatalf("agents = %v; want host-1 from az-a, connected", resp.Agents)
	}
}

// TestSchedulerCorruptRecordsDoNotStopLeadership is the poisoned store:
// a job record and an agent record in etcd are replaced by garbage while
// no scheduler runs. A replica still becomes leader (before, Load failed
// on the first undecodable key and every replica exited), keeps the
// readable job running untouched, does not kill the task of the job it
// cannot read, and copies both bad records under the quarantine prefix
// without deleting them.
func TestSchedulerCorruptRecordsDoNotStopLeadership(t *testing.T) {
	begin(t)
	ctx, etcd := externalEtcd(t)
	o := schedOptions(t)
	o.DataDir, o.Endpoints, o.Prefix = "", etcd.Endpoints, "/titus/"
	first, stopFirst := startScheduler(t, ctx, o)
	waitLeading(t, first)
	o2 := o
	o2.Listen = testenv.Addr(testenv.FreePort(t)) // known now, so the agent dials it once it leads
	e := &schedEnv{t: t, ctx: ctx, addrs: []string{first.Addr()}, agents: map[string]*schedload.Agent{}}
	e.dialAPI()
	e.addrs = []string{first.Addr(), o2.Listen}
	a := e.agent("a", "az-a", 8000, schedload.RunForever)
	e.waitAgents(1)
	good := e.submit(jobSpec(&schedv1.ServiceJob{Desired: 2, Max: 2}))
	bad := e.submit(jobSpec(&schedv1.ServiceJob{Desired: 1, Max: 1}))
	e.eventually("3 running", func() (bool, string) {
		return e.running(good)["a"] == 2 && e.running(bad)["a"] == 1, fmt.Sprint(e.running(good), e.running(bad))
	})
	stopFirst()
	before := slices.Sorted(slices.Values(a.Tasks.Running()))

	cli, err := clientv3.New(clientv3.Config{Endpoints: etcd.Endpoints})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	garbage := "\xff\xff\xff not a protobuf"
	for _, k := range []string{o.Prefix + "jobs/" + bad, o.Prefix + "agents/ghost"} {
		if _, err := cli.Put(ctx, k, garbage); err != nil {
			t.Fatal(err)
		}
	}

	second, _ := startScheduler(t, ctx, o2)
	waitLeading(t, second)
	e.addrs = []string{second.Addr()}
	e.dialAPI()
	e.waitAgents(1)
	time.Sleep(2 * schedTTL) // the agent reports the unreadable job's task meanwhile
	if j := e.job(good); j.Counts.Running != 2 || j.Counts.Lost != 0 || j.Counts.Killed != 0 {
		t.Fatalf("readable job after takeover: %v", j.Counts)
	}
	if after := slices.Sorted(slices.Values(a.Tasks.Running())); !slices.Equal(before, after) {
		t.Fatalf("agent's running tasks changed: before %v, after %v (a task of the unreadable job was killed?)", before, after)
	}
	if _, err := e.api.GetJob(ctx, &schedv1.GetJobRequest{Id: bad}); status.Code(err) != codes.NotFound {
		t.Errorf("get of the unreadable job: %v, want NotFound", err)
	}
	if n := second.Stats().QuarantinedRecords; n != 2 {
		t.Errorf("quarantined records = %d, want 2", n)
	}
	q, err := cli.Get(ctx, o.Prefix+"quarantine/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, kv := range q.Kvs {
		keys = append(keys, string(kv.Key))
		if string(kv.Value) != garbage {
			t.Errorf("quarantine copy %s = %q, want the original bytes", kv.Key, kv.Value)
		}
	}
	if len(keys) != 2 || !strings.HasPrefix(keys[0], o.Prefix+"quarantine/agents/ghost@") || !strings.HasPrefix(keys[1], o.Prefix+"quarantine/jobs/"+bad+"@") {
		t.Errorf("quarantine keys = %v", keys)
	}
	if r, err := cli.Get(ctx, o.Prefix+"jobs/"+bad); err != nil || len(r.Kvs) != 1 || string(r.Kvs[0].Value) != garbage {
		t.Errorf("the original bad record must stay as it was: %v %v", r, err)
	}
}
