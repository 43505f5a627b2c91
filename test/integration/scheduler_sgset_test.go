package integration

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
	"github.com/titus-agent/titus-agent/test/schedload"
	"github.com/titus-agent/titus-agent/test/testenv"
)

// TestSchedulerEC2SGSetExhaustion: real agents with the ec2 provider on
// simulated hosts (moto, one netns per host) advertise their instance
// type's ENI limits, and the scheduler never sends a task an agent must
// refuse for lack of an IP or an ENI. Three SG sets each want two ENIs'
// worth of tasks; the fleet has four ENIs: the third set waits, with the
// reason, until ENIs free up, and no task fails to get an address.
func TestSchedulerEC2SGSetExhaustion(t *testing.T) {
	begin(t)
	bed := newEC2Bed(t, "t3.small", false) // 3 ENIs × 4 IPv4: 2 task ENIs × 3 IPs
	out, err := bed.hv.EC2.CreateSecurityGroup(context.Background(), &ec2.CreateSecurityGroupInput{
		GroupName: aws.String("tasks-3"), Description: aws.String("test"), VpcId: aws.String(bed.hv.VPCID)})
	if err != nil {
		t.Fatal(err)
	}
	sg3 := aws.ToString(out.GroupId)
	ctd := testenv.StartContainerd(t)
	reg := testenv.StartRegistry(t)
	image := testenv.PushBusybox(t, reg, "busybox", "latest")
	// Real containers on simulated EC2 hosts on a busy machine: more time
	// than newSchedEnv's two minutes.
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	t.Cleanup(cancel)
	s, _ := startScheduler(t, ctx, schedOptions(t))
	waitLeading(t, s)
	e := &schedEnv{t: t, ctx: ctx, addrs: []string{s.Addr()}, agents: map[string]*schedload.Agent{}}
	e.dialAPI()
	link := func(h *testenv.SimHost) string {
		return fmt.Sprintf("scheduler:\n  address: %q\n  instanceID: %s\n  labels:\n    rack: r-%s\n", e.addrs[0], h.InstanceID, h.InstanceID)
	}
	agents := []*agentEnv{
		bed.startAgentWith(t, ctd, reg, image, bed.a, "titus-a", link(bed.a)),
		bed.startAgentWith(t, ctd, reg, image, bed.b, "titus-b", link(bed.b)),
	}
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, a := range agents {
			t.Logf("== agent log\n%s", tailLog(a.agent.Log()))
		}
	})
	e.waitAgents(2)

	// Truthful capacity: the instance type's ENI limits, its type and zone
	// from EC2, and the host's attributes and labels from its config.
	resp, err := e.api.ListAgents(e.ctx, &schedv1.ListAgentsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range resp.Agents {
		c, at := a.GetCapacity(), a.GetAttributes()
		if c.GetEnis() != 2 || c.GetIpsPerEni() != 3 || c.GetIpReuseCooldownMs() != 1000 || a.InstanceType != "t3.small" ||
			!strings.HasPrefix(a.Az, "us-east-1") || at.GetKernel() == "" || at.GetAmiId() == "" || at.GetCgroupMode() == "" ||
			at.GetAgentVersion() == "" || a.GetLabels()["rack"] != "r-"+a.Id {
			t.Fatalf("agent %s registered as %s in %s with %v, attributes %v, labels %v; want t3.small's 2 task ENIs of 3 IPs, cool-down 1s, its AMI, kernel, cgroup mode, agent version and label rack=r-%s",
				a.Id, a.InstanceType, a.Az, c, at, a.GetLabels(), a.Id)
		}
	}

	var jobs []string
	for _, sg := range []string{bed.sg1, bed.sg2, sg3} {
		s := jobSpec(&schedv1.BatchJob{Size: 6})
		s.Task.Image = image
		s.Task.Command = []string{"sleep", "2"}
		s.Task.Resources = &agentv1.Resources{CpuMillicores: 50, MemoryMib: 32}
		s.Task.Network = &agentv1.NetworkRequest{SecurityGroupIds: []string{sg}}
		jobs = append(jobs, e.submit(s))
	}
	sawNoIP := ""
	waitUntil(t, "every job finished", 6*time.Minute, func() (bool, string) {
		var states []string
		done := true
		for _, id := range jobs {
			j := e.job(id)
			if strings.HasPrefix(j.QueuedReason, "no free IP") {
				sawNoIP = j.QueuedReason
			}
			c := j.Counts
			if c.Failed+c.Lost+c.Retries > 0 {
				t.Fatalf("job %s: a task failed or was lost (the agent refused it?): %v", id, c)
			}
			done = done && j.State == schedv1.JobState_JOB_STATE_FINISHED
			states = append(states, fmt.Sprintf("%s %s %v %q", id, j.State, c, j.QueuedReason))
		}
		return done, strings.Join(states, "; ")
	})
	// Every attempt finished: the records of ended tasks are written
	// behind, so the last ones may land just after the job ends.
	e.eventually("every attempt recorded finished", func() (bool, string) {
		var bad []string
		for _, id := range jobs {
			tasks, err := e.api.ListTasks(e.ctx, &schedv1.ListTasksRequest{JobId: id, All: true})
			if err != nil {
				t.Fatal(err)
			}
			for _, tk := range tasks.Tasks {
				if tk.State != agentv1.TaskState_TASK_STATE_FINISHED {
					bad = append(bad, fmt.Sprintf("task %s attempt %d %s %s: %s", tk.Id, tk.Attempt, tk.State, tk.Reason, tk.Message))
				}
			}
		}
		return len(bad) == 0, strings.Join(bad, "; ")
	})
	if sawNoIP == "" {
		t.Errorf("no job was ever queued for lack of an IP: the fleet's four ENIs should not hold three sets of two")
	} else {
		t.Logf("queued because: %s", sawNoIP)
	}
}

// startAgentWith is startAgent with more configuration.
func (bed *ec2Bed) startAgentWith(t *testing.T, ctd *testenv.Containerd, reg *testenv.Registry, image string, host *testenv.SimHost, namespace, extra string) *agentEnv {
	t.Helper()
	cfg := host.AgentConfig(testenv.SimAgentNetwork{
		Endpoint: bed.proxy.URL, SecurityGroups: []string{bed.sg1}, WarmIPs: 2, MinWarmIPs: 1,
		ReleaseAfter: 2 * time.Second, ReuseCooldown: time.Second, DNS: []string{"198.18.0.2"},
	}) + "containerd:\n  namespace: " + namespace + "\n" + extra
	e := &agentEnv{t: t, ctd: ctd, reg: reg, image: image}
	e.agent = testenv.StartAgent(t, testenv.AgentOptions{Containerd: ctd.Address, PlainHTTP: []string{reg.Host}, Config: cfg})
	e.dir, e.socket, e.client = e.agent.Dir, e.agent.Socket, e.agent.Client
	return e
}

// TestSchedulerEC2SubnetSets: the agent gives tasks of one security-group
// set but another subnet ENIs of their own, so placement counts a task's
// IP against its security groups and subnet: a host whose two task ENIs
// hold sg1 in subnet A1 (with IPs free) and sg2 is full for sg1 in subnet
// A2 of the same zone. Counted by security groups alone, the scheduler
// sent that task to the host, whose agent had to refuse it for want of an
// ENI. The task waits with the reason until sg2's ENI is idle, then runs
// with an address of A2.
func TestSchedulerEC2SubnetSets(t *testing.T) {
	begin(t)
	// Subnets A1 (us-east-1a), B1, A2 (us-east-1a again); host a is in A1.
	bed := newEC2BedIn(t, "t3.small", false, []string{"us-east-1a", "us-east-1b", "us-east-1a"}) // 2 task ENIs × 3 IPs
	a1, a2 := bed.hv.Subnets[0], bed.hv.Subnets[2]
	ctd := testenv.StartContainerd(t)
	reg := testenv.StartRegistry(t)
	image := testenv.PushBusybox(t, reg, "busybox", "latest")
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	t.Cleanup(cancel)
	s, _ := startScheduler(t, ctx, schedOptions(t))
	waitLeading(t, s)
	e := &schedEnv{t: t, ctx: ctx, addrs: []string{s.Addr()}, agents: map[string]*schedload.Agent{}}
	e.dialAPI()
	agent := bed.startAgentWith(t, ctd, reg, image, bed.a, "titus-a",
		fmt.Sprintf("scheduler:\n  address: %q\n  instanceID: %s\n", e.addrs[0], bed.a.InstanceID))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("== agent log\n%s", tailLog(agent.agent.Log()))
		}
	})
	e.waitAgents(1)

	submit := func(sg string, subnets ...string) string {
		s := jobSpec(&schedv1.BatchJob{Size: 1})
		s.Task.Image = image
		s.Task.Command = []string{"sleep", "600"}
		s.Task.Resources = &agentv1.Resources{CpuMillicores: 50, MemoryMib: 32}
		s.Task.Network = &agentv1.NetworkRequest{SecurityGroupIds: []string{sg}, SubnetIds: subnets}
		return e.submit(s)
	}
	noFailures := func(ids ...string) string {
		for _, id := range ids {
			if c := e.job(id).Counts; c.Failed+c.Lost+c.Retries > 0 {
				t.Fatalf("job %s: a task failed or was lost (the agent refused it?): %v", id, c)
			}
		}
		return ""
	}
	runs := func(id string) func() (bool, string) {
		return func() (bool, string) {
			noFailures(id)
			n := e.running(id)
			return n[bed.a.InstanceID] == 1, fmt.Sprintf("running %v, job %v", n, e.job(id))
		}
	}
	j1 := submit(bed.sg1, a1.ID)
	waitUntil(t, "sg1 in A1 runs", 2*time.Minute, runs(j1))
	j2 := submit(bed.sg2)
	waitUntil(t, "sg2 runs", time.Minute, runs(j2))

	j3 := submit(bed.sg1, a2.ID)
	e.eventually("sg1 in A2 queued for want of an ENI", func() (bool, string) {
		noFailures(j1, j2, j3)
		r := e.job(j3).QueuedReason
		return strings.HasPrefix(r, "no free IP: 1 of the 1 hosts") && strings.Contains(r, "in subnets ["+a2.ID+"]"), r
	})
	// Several heartbeats and placement rounds later it still waits, unrefused.
	time.Sleep(3 * time.Second)
	noFailures(j1, j2, j3)
	if n := len(e.liveTasks(j3)); n != 0 {
		t.Fatalf("sg1 in A2 placed (%d tasks) on a host with no ENI for it", n)
	}

	if _, err := e.api.KillJob(e.ctx, &schedv1.KillJobRequest{Id: j2}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "sg1 in A2 runs once sg2's ENI is idle", time.Minute, runs(j3))
	noFailures(j1, j3)
	for _, tk := range e.liveTasks(j3) {
		ip, err := netip.ParseAddr(tk.Ip)
		if err != nil || !a2.CIDR.Contains(ip) {
			t.Errorf("task %s has IP %q, want one of subnet A2 %s", tk.Id, tk.Ip, a2.CIDR)
		}
	}
	for _, id := range []string{j1, j3} {
		if _, err := e.api.KillJob(e.ctx, &schedv1.KillJobRequest{Id: id}); err != nil {
			t.Fatal(err)
		}
	}
}
