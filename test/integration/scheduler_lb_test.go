package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	elbv2 "github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2"
	"github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2/types"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	"github.com/titus-agent/titus-agent/pkg/scheduler/lb"
	"github.com/titus-agent/titus-agent/pkg/vpc"
	"github.com/titus-agent/titus-agent/test/testenv"
)

// lbBed is moto with one ip target group, a titus-scheduler process
// pointed at it, and one real agent (containerd, local network) running
// busybox httpd tasks.
type lbBed struct {
	t     *testing.T
	elb   *elbv2.Client
	tg    string
	sched *schedProc
	agent *agentEnv
	proc  *testenv.Process
	image string
	// proxy, when the bed has one, stands between the scheduler and moto.
	proxy *testenv.FaultProxy
	reg   *testenv.Registry
}

func newLBBed(t *testing.T) *lbBed { return newLBBedProxied(t, false) }

// newLBBedProxied is newLBBed, with the scheduler's ELBv2 calls through a
// fault proxy when proxied.
func newLBBedProxied(t *testing.T, proxied bool) *lbBed {
	t.Helper()
	ctx := context.Background()
	moto := testenv.StartMoto(t)
	ec2c, err := vpc.NewEC2Client(ctx, vpc.EC2Config{Region: "us-east-1", Endpoint: moto.Endpoint, AccessKeyID: "testing", SecretAccessKey: "testing"})
	if err != nil {
		t.Fatal(err)
	}
	v, err := ec2c.CreateVpc(ctx, &ec2.CreateVpcInput{CidrBlock: aws.String("198.19.0.0/16")})
	if err != nil {
		t.Fatalf("create vpc: %v", err)
	}
	c, err := lb.NewClient(ctx, lb.Config{Region: "us-east-1", Endpoint: moto.Endpoint, AccessKeyID: "testing", SecretAccessKey: "testing"})
	if err != nil {
		t.Fatal(err)
	}
	out, err := c.CreateTargetGroup(ctx, &elbv2.CreateTargetGroupInput{Name: aws.String("web"), TargetType: types.TargetTypeEnumIp,
		Protocol: types.ProtocolEnumHttp, Port: aws.Int32(8080), VpcId: v.Vpc.VpcId})
	if err != nil {
		t.Fatalf("create target group: %v", err)
	}
	b := &lbBed{t: t, elb: c, tg: aws.ToString(out.TargetGroups[0].TargetGroupArn)}
	if _, err := c.ModifyTargetGroupAttributes(ctx, &elbv2.ModifyTargetGroupAttributesInput{TargetGroupArn: aws.String(b.tg),
		Attributes: []types.TargetGroupAttribute{{Key: aws.String("deregistration_delay.timeout_seconds"), Value: aws.String("5")}}}); err != nil {
		t.Fatalf("set deregistration delay: %v", err)
	}
	b.sched = &schedProc{t: t, addr: testenv.Addr(testenv.FreePort(t)), dir: t.TempDir()}
	endpoint := moto.Endpoint
	if proxied {
		b.proxy = testenv.StartFaultProxy(t, moto.Endpoint)
		endpoint = b.proxy.URL
	}
	b.start(endpoint, "scheduler-1")
	reg := testenv.StartRegistry(t)
	b.reg = reg
	b.image = testenv.PushBusybox(t, reg, "busybox", "latest")
	b.agent = startLinkedAgent(t, testenv.StartContainerd(t), reg, b.sched, "host-lb", "us-east-1a", "group=blue")
	waitUntil(t, "agent registered", 30*time.Second, func() (bool, string) {
		out, _ := b.sched.cli("agent", "ls")
		return strings.Count(out, "connected") == 1, out
	})
	return b
}

// start runs the scheduler over its data dir with the ELBv2 endpoint
// (static credentials from the environment: no IMDS lookup).
func (b *lbBed) start(endpoint, name string) {
	cmd := exec.Command(testenv.SchedulerBinary(b.t), "serve", "--data-dir", filepath.Join(b.sched.dir, "data"),
		"--listen", b.sched.addr, "--metrics-listen", "", "--election-ttl", "2s", "--agent-ttl", "10s",
		"--lb-region", "us-east-1", "--lb-endpoint", endpoint, "--lb-reconcile-interval", "1s", "--lb-max-deregistration-wait", "10s")
	cmd.Env = append(os.Environ(), "AWS_ACCESS_KEY_ID=testing", "AWS_SECRET_ACCESS_KEY=testing", "AWS_EC2_METADATA_DISABLED=true")
	b.proc = testenv.StartProcess(b.t, b.sched.dir, name, cmd)
	logPath := b.proc.LogPath
	b.t.Cleanup(func() {
		if !b.t.Failed() {
			return
		}
		// What the scheduler did with the targets, for the next engineer.
		data, _ := os.ReadFile(logPath)
		var lines []string
		for _, l := range strings.Split(string(data), "\n") {
			if strings.Contains(l, "target") || strings.Contains(l, "leader") || strings.Contains(l, "level=ERROR") || strings.Contains(l, "level=WARN") {
				lines = append(lines, l)
			}
		}
		b.t.Logf("%s log, target and leadership lines (last 60 of %d):\n%s", name, len(lines), strings.Join(lines[max(0, len(lines)-60):], "\n"))
	})
	testenv.WaitTCP(b.t, b.sched.addr, b.proc, 60*time.Second)
	waitUntil(b.t, name+" leads", 60*time.Second, func() (bool, string) {
		out, err := b.sched.cli("job", "ls")
		return err == nil, out
	})
}

// registered lists the group's targets that are not draining, sorted.
func (b *lbBed) registered() ([]string, error) { return b.registeredIn(b.tg) }

// registeredIn lists group arn's targets that are not draining, sorted.
func (b *lbBed) registeredIn(arn string) ([]string, error) {
	out, err := b.elb.DescribeTargetHealth(context.Background(), &elbv2.DescribeTargetHealthInput{TargetGroupArn: aws.String(arn)})
	if err != nil {
		return nil, err
	}
	var ips []string
	for _, d := range out.TargetHealthDescriptions {
		if d.TargetHealth != nil && d.TargetHealth.State == types.TargetHealthStateEnumDraining {
			continue
		}
		ips = append(ips, fmt.Sprintf("%s:%d", aws.ToString(d.Target.Id), aws.ToInt32(d.Target.Port)))
	}
	slices.Sort(ips)
	return ips, nil
}

// serving lists ip:8080 of the job's Running, Healthy tasks on the agent.
func (b *lbBed) serving(job string) []string {
	l, err := b.agent.client.ListTasks(b.agent.ctx(), &agentv1.ListTasksRequest{})
	if err != nil {
		return nil
	}
	var ips []string
	for _, tk := range l.GetTasks() {
		if strings.HasPrefix(tk.GetSpec().GetId(), job+".") && tk.GetState() == stRunning && tk.GetHealth().GetStatus() == agentv1.HealthStatus_HEALTH_STATUS_HEALTHY {
			ips = append(ips, tk.GetNetwork().GetIpv4()+":8080")
		}
	}
	slices.Sort(ips)
	return ips
}

// waitInSync waits until the group holds exactly the job's serving tasks, n of them.
func (b *lbBed) waitInSync(what, job string, n int) []string {
	b.t.Helper()
	var got []string
	waitUntil(b.t, what, 60*time.Second, func() (bool, string) {
		reg, err := b.registered()
		want := b.serving(job)
		got = reg
		return err == nil && len(want) == n && slices.Equal(reg, want), fmt.Sprintf("group %v, serving %v, err %v", reg, want, err)
	})
	return got
}

func (b *lbBed) jobFile(env string) string {
	return fmt.Sprintf(`name: web
ownerEmail: tests@example.com
application: it
service:
  min: 0
  desired: 2
  max: 4
  update: {maxSurge: "1", maxUnavailable: "0"}
  targetGroups: [{arn: %q, port: 8080}]
task:
  image: %s
  command: [sh, -c, "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www"]
  env: {REV: %q}
  killGracePeriodSeconds: 1
  resources: {cpuMillicores: 200, memoryMib: 64}
  healthCheck: {kind: http, port: 8080, path: /index.html, interval: 1s, timeout: 1s, healthyThreshold: 1, unhealthyThreshold: 2}
`, b.tg, b.image, env)
}

// TestSchedulerLoadBalancer: a service job's tasks join a moto ip target
// group once Running and Healthy; a kill takes the task out of the group
// before the agent is asked to stop it; a rollout (surge 1, none
// unavailable) never has fewer than desired registered; a scheduler
// restarted over a drifted group (a leaked target, a lost one) puts it
// right; a job kill leaves the group empty.
func TestSchedulerLoadBalancer(t *testing.T) {
	begin(t)
	b := newLBBed(t)
	t0 := time.Now()
	phase := func(what string) { t.Logf("%5.1fs %s", time.Since(t0).Seconds(), what) }
	job := b.sched.submit(b.jobFile("1"))
	b.waitInSync("both tasks registered", job, 2)
	phase("registered")
	out, err := b.sched.cli("job", "get", job)
	if err != nil || strings.Count(out, "registered") != 2 {
		t.Errorf("job get shows no registrations: %v\n%s", err, out)
	}

	// Kill one task: the target leaves the group while the task still runs.
	l, err := b.agent.client.ListTasks(b.agent.ctx(), &agentv1.ListTasksRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var victim, victimIP string
	for _, tk := range l.GetTasks() {
		if strings.HasPrefix(tk.GetSpec().GetId(), job+".") && tk.GetState() == stRunning {
			victim, victimIP = tk.GetSpec().GetId(), tk.GetNetwork().GetIpv4()+":8080"
			break
		}
	}
	if out, err := b.sched.cli("task", "kill", victim); err != nil {
		t.Fatalf("task kill: %v\n%s", err, out)
	}
	var outAt, stopAt time.Time
	deadline := time.Now().Add(30 * time.Second)
	for (outAt.IsZero() || stopAt.IsZero()) && time.Now().Before(deadline) {
		now := time.Now()
		reg, err := b.registered()
		if err == nil && outAt.IsZero() && !slices.Contains(reg, victimIP) {
			outAt = now
		}
		if st := b.agent.get(victim).GetState(); stopAt.IsZero() && st != stRunning {
			stopAt = now
		}
		time.Sleep(10 * time.Millisecond)
	}
	if outAt.IsZero() || stopAt.IsZero() || !outAt.Before(stopAt) {
		t.Fatalf("deregistered at %v, task stopping at %v: want the deregistration first", outAt, stopAt)
	}
	t.Logf("deregistered %v before the task was stopped", stopAt.Sub(outAt))
	b.waitInSync("replacement registered", job, 2)

	phase("killed and replaced")
	// Roll out a new template: surge 1, none unavailable: never fewer than 2 registered.
	var mu sync.Mutex
	low, stop := 1<<30, make(chan struct{})
	var watch sync.WaitGroup
	watch.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			if reg, err := b.registered(); err == nil {
				mu.Lock()
				low = min(low, len(reg))
				mu.Unlock()
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
	f := filepath.Join(b.sched.dir, "v2.yaml")
	if err := os.WriteFile(f, []byte(b.jobFile("2")), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := b.sched.cli("job", "update", job, "-f", f); err != nil {
		t.Fatalf("job update: %v\n%s", err, out)
	}
	waitUntil(t, "rollout complete", 60*time.Second, func() (bool, string) {
		j := b.sched.jobJSON(job)
		r, _ := j["rollout"].(map[string]any)
		return r["state"] == "STATE_COMPLETE", fmt.Sprint(r)
	})
	b.waitInSync("new revision registered", job, 2)
	close(stop)
	watch.Wait()
	if low < 2 {
		t.Errorf("the group held %d targets during the rollout, want at least 2", low)
	}

	phase("rolled out")
	// Drift while no scheduler runs: a leaked target and a lost one.
	_ = syscall.Kill(b.proc.Cmd.Process.Pid, syscall.SIGKILL)
	_ = b.proc.Cmd.Wait()
	reg, _ := b.registered()
	ctx := context.Background()
	if _, err := b.elb.RegisterTargets(ctx, &elbv2.RegisterTargetsInput{TargetGroupArn: aws.String(b.tg),
		Targets: []types.TargetDescription{{Id: aws.String("198.18.99.99"), Port: aws.Int32(8080)}}}); err != nil {
		t.Fatal(err)
	}
	lost, _, _ := strings.Cut(reg[0], ":")
	if _, err := b.elb.DeregisterTargets(ctx, &elbv2.DeregisterTargetsInput{TargetGroupArn: aws.String(b.tg),
		Targets: []types.TargetDescription{{Id: aws.String(lost), Port: aws.Int32(8080)}}}); err != nil {
		t.Fatal(err)
	}
	b.start(strings.TrimSuffix(b.elbEndpoint(), "/"), "scheduler-2")
	b.waitInSync("drift repaired by the new leader", job, 2)

	phase("drift repaired")
	if out, err := b.sched.cli("job", "kill", job); err != nil {
		t.Fatalf("job kill: %v\n%s", err, out)
	}
	defer phase("job killed")
	waitUntil(t, "group empty, tasks gone", 60*time.Second, func() (bool, string) {
		reg, err := b.registered()
		return err == nil && len(reg) == 0 && len(running(b.agent)) == 0, fmt.Sprintf("group %v, running %v, err %v", reg, running(b.agent), err)
	})
	b.agent.assertNoLeftovers()
}

// elbEndpoint is moto's endpoint, as the client was built with.
func (b *lbBed) elbEndpoint() string { return aws.ToString(b.elb.Options().BaseEndpoint) }

// TestSchedulerLoadBalancerRefusesBadInput: the real scheduler, with
// moto's ELBv2, refuses at submit (and at update) with the field named:
// a well-formed ARN of a target group that does not exist, a port outside
// 1-65535, a health check with a 0 interval, a budget over 100%. Nothing
// is created, and a refused update leaves the job's revision alone.
func TestSchedulerLoadBalancerRefusesBadInput(t *testing.T) {
	begin(t)
	b := newLBBed(t)
	missing := "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/nope/0123456789abcdef"
	good := b.jobFile("1")
	budget := strings.Replace(good, "  update: {", "  disruptionBudget: {maxUnavailable: \"150%\"}\n  update: {", 1)
	cases := []struct{ name, file, field, rule string }{
		{"unknown target group", strings.Replace(good, b.tg, missing, 1), "service.target_groups[0].arn", "no target group " + missing},
		{"port outside", strings.Replace(good, ", port: 8080}]", ", port: 70000}]", 1), "service.target_groups[0].port", "between 1 and 65535"},
		{"0 interval", strings.Replace(good, "interval: 1s", "interval: 0s", 1), "task.health_check.interval", "must be between"},
		{"percent over 100", budget, "service.disruption_budget.max_unavailable", "at most 100%"},
	}
	for i, c := range cases {
		if c.file == good {
			t.Fatalf("%s: the job file was not changed", c.name)
		}
		f := filepath.Join(b.sched.dir, fmt.Sprintf("bad-%d.yaml", i))
		if err := os.WriteFile(f, []byte(c.file), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := b.sched.cli("job", "submit", "-f", f)
		if err == nil || !strings.Contains(out, c.field+": ") || !strings.Contains(out, c.rule) {
			t.Errorf("%s: submit: %v\n%s\nwant refused naming %s (%s)", c.name, err, out, c.field, c.rule)
		}
	}
	if out, _ := b.sched.cli("job", "ls"); strings.Contains(out, " it ") {
		t.Errorf("a refused job was created:\n%s", out)
	}
	job := b.sched.submit(good)
	f := filepath.Join(b.sched.dir, "bad-update.yaml")
	if err := os.WriteFile(f, []byte(strings.Replace(b.jobFile("2"), b.tg, missing, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := b.sched.cli("job", "update", job, "-f", f); err == nil || !strings.Contains(out, "service.target_groups[0].arn: no target group") {
		t.Errorf("update to an unknown group: %v\n%s", err, out)
	}
	if rev := b.sched.jobJSON(job)["revision"]; fmt.Sprint(rev) != "1" {
		t.Errorf("revision %v after a refused update, want 1", rev)
	}
	if out, err := b.sched.cli("job", "kill", job); err != nil {
		t.Fatalf("job kill: %v\n%s", err, out)
	}
	waitUntil(t, "group empty, tasks gone", 60*time.Second, func() (bool, string) {
		reg, err := b.registered()
		return err == nil && len(reg) == 0 && len(running(b.agent)) == 0, fmt.Sprintf("group %v, running %v, err %v", reg, running(b.agent), err)
	})
}
