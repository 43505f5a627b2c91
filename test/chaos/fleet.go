package chaos

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
	"github.com/titus-agent/titus-agent/pkg/scheduler/core"
	"github.com/titus-agent/titus-agent/test/testenv"
)

// Timings of the fleet. The agent TTL and the leader lease are the
// product's defaults (the replicas are started without --agent-ttl and
// --election-ttl): a shorter TTL than the product's would lose the tasks
// of an agent that is only restarting (a kill -9, the hold, the restart
// and the reconnect take longer than 6 s, which the soak once used), a
// loss no production host sees. Ended jobs are kept for a short while
// only, so that their pruning is seen within the run.
const (
	agentTTL     = core.DefaultAgentTTL
	jobRetention = 30 * time.Second
	etcdPrefix   = "/titus/"
	namespace    = "titus-chaos"
	roleName     = "app-chaos"
	roleARN      = "arn:aws:iam::123456789012:role/" + roleName
)

// fleet is everything the soak starts.
type fleet struct {
	t   *testing.T
	cli string // the titus-scheduler binary

	etcd      []*etcdMember
	endpoints []string
	replicas  []*replica
	hosts     []*host

	moto    *testenv.Moto
	ec2     *testenv.FaultProxy
	sts     *testenv.FaultProxy
	imds    *testenv.IMDSMock
	reg     *testenv.Registry
	hv      *testenv.Hypervisor
	image   string
	sg      string
	userCLI string // --addr for the CLI: every replica
}

type etcdMember struct {
	name, dir, client string
	args              []string
	proc              *testenv.Process
	gen               int
}

type replica struct {
	addr, dir string
	args      []string
	proc      *testenv.Process
	gen       int
}

type host struct {
	mu    sync.Mutex // held while the agent is killed and restarted
	state string     // the agent's state directory: a tmpfs of its own
	sim   *testenv.SimHost
	ctd   *testenv.Containerd
	agent *testenv.Agent
	gates []*gate
}

func startFleet(t *testing.T, nHosts int, azs []string) *fleet {
	f := &fleet{t: t, cli: testenv.SchedulerBinary(t)}
	testenv.AgentBinary(t)
	f.startEtcd()
	for range 3 {
		f.startReplica()
	}
	f.moto = testenv.StartMoto(t)
	f.ec2 = testenv.StartFaultProxy(t, f.moto.Endpoint)
	f.sts = testenv.StartFaultProxy(t, f.moto.Endpoint)
	f.imds = testenv.StartIMDSMock(t)
	f.reg = testenv.StartRegistry(t)
	f.image = testenv.PushBusybox(t, f.reg, "busybox", "latest")
	f.hv = testenv.StartHypervisor(t, f.moto.Endpoint, testenv.HypervisorOptions{AZs: azs})
	out, err := f.hv.EC2.CreateSecurityGroup(context.Background(), &ec2.CreateSecurityGroupInput{
		GroupName: aws.String("chaos-tasks"), Description: aws.String("chaos soak"), VpcId: aws.String(f.hv.VPCID)})
	if err != nil {
		t.Fatalf("create SG: %v", err)
	}
	f.sg = aws.ToString(out.GroupId)
	t.Cleanup(func() {
		for _, err := range f.hv.Errors() {
			t.Errorf("hypervisor: %v", err)
		}
	})
	var addrs []string
	for _, r := range f.replicas {
		addrs = append(addrs, r.addr)
	}
	f.userCLI = strings.Join(addrs, ",")
	f.waitLeader(90 * time.Second)
	for i := range nHosts {
		f.startHost(azs[i%len(azs)])
	}
	return f
}

// startEtcd runs a three-member etcd cluster on loopback.
func (f *fleet) startEtcd() {
	t := f.t
	var peers []string
	for i := range 3 {
		m := &etcdMember{name: fmt.Sprintf("e%d", i), dir: t.TempDir(), client: testenv.Addr(testenv.FreePort(t))}
		peer := testenv.Addr(testenv.FreePort(t))
		peers = append(peers, m.name+"=http://"+peer)
		m.args = []string{"--name", m.name, "--data-dir", filepath.Join(m.dir, "data"),
			"--listen-client-urls", "http://" + m.client, "--advertise-client-urls", "http://" + m.client,
			"--listen-peer-urls", "http://" + peer, "--initial-advertise-peer-urls", "http://" + peer,
			"--initial-cluster-token", "chaos", "--log-level", "error",
			// Placement batches are large transactions: see store.StartEmbeddedEtcd.
			"--warning-apply-duration", "1m"}
		f.etcd = append(f.etcd, m)
		f.endpoints = append(f.endpoints, "http://"+m.client)
	}
	for _, m := range f.etcd {
		m.args = append(m.args, "--initial-cluster", strings.Join(peers, ","))
		m.start(t)
	}
	for _, m := range f.etcd {
		testenv.WaitTCP(t, m.client, m.proc, 60*time.Second)
	}
}

func (m *etcdMember) start(t *testing.T) {
	m.gen++
	cmd := exec.Command(testenv.LookPath(t, "etcd"), m.args...)
	m.proc = testenv.StartProcess(t, m.dir, fmt.Sprintf("etcd-%d", m.gen), cmd)
}

func (m *etcdMember) kill9() {
	_ = m.proc.Cmd.Process.Kill()
	_ = m.proc.Cmd.Wait()
}

func (f *fleet) startReplica() {
	t := f.t
	r := &replica{addr: testenv.Addr(testenv.FreePort(t)), dir: t.TempDir()}
	r.args = []string{"serve", "--etcd-endpoints", strings.Join(f.endpoints, ","), "--listen", r.addr, "--metrics-listen", "",
		"--finished-job-retention", jobRetention.String()}
	r.start(t, f.cli)
	f.replicas = append(f.replicas, r)
}

func (r *replica) start(t *testing.T, bin string) {
	r.gen++
	r.proc = testenv.StartProcess(t, r.dir, fmt.Sprintf("scheduler-%d", r.gen), exec.Command(bin, r.args...))
	testenv.WaitTCP(t, r.addr, r.proc, 60*time.Second)
}

func (r *replica) kill9() {
	_ = syscall.Kill(r.proc.Cmd.Process.Pid, syscall.SIGKILL)
	_ = r.proc.Cmd.Wait()
}

// startHost adds a simulated EC2 host in az with its own containerd and
// an agent that reaches the schedulers through gates, over the host's
// primary link.
func (f *fleet) startHost(az string) {
	t := f.t
	h := &host{sim: f.hv.AddHost(t, az, "t3.medium"), ctd: testenv.StartContainerdWith(t, testenv.ContainerdOptions{LogLevel: "info"})}
	var addrs []string
	for _, r := range f.replicas {
		g, err := newGate(f.hv, h.sim, r.addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(g.close)
		h.gates = append(h.gates, g)
		addrs = append(addrs, g.addr())
	}
	cfg := h.sim.AgentConfig(testenv.SimAgentNetwork{
		Endpoint: f.ec2.URL, SecurityGroups: []string{f.sg}, WarmIPs: 2, MinWarmIPs: 1,
		ReleaseAfter: 2 * time.Second, ReuseCooldown: time.Second, DNS: []string{"198.18.0.2"},
	}) + fmt.Sprintf(`containerd:
  namespace: %s
scheduler:
  address: %q
  instanceID: %s
metadata:
  enabled: true
  upstream: %s
  stsEndpoint: %s
  region: us-east-1
  accessKeyID: testing
  secretAccessKey: testing
  credentialDuration: 15m
logLevel: info
`, namespace, strings.Join(addrs, ","), h.sim.InstanceID, f.imds.Endpoint, f.sts.URL)
	// The state directory is a tmpfs of its own (just over the 512 MiB
	// free the agent's health check wants), so the disk-full fault fills
	// it without touching the machine's disk. Its cleanup is registered
	// before the agent's, so it runs after the agent is stopped.
	state, err := os.MkdirTemp("/tmp", "tcstate")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { testenv.RemoveDir(state) })
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=640m", "titus-chaos-state", state).CombinedOutput(); err != nil {
		t.Fatalf("mount the state tmpfs: %v %s", err, out)
	}
	h.state = state
	h.agent = testenv.StartAgent(t, testenv.AgentOptions{Containerd: h.ctd.Address, PlainHTTP: []string{f.reg.Host}, Config: cfg,
		Extra: []string{"--state-dir", state}})
	f.hosts = append(f.hosts, h)
}

// partition cuts a host off from every scheduler replica (its primary
// link down in its netns; its agent's connections cross it through the
// gates), or heals it.
func (f *fleet) partition(h *host, cut bool) error {
	return f.hv.SetPrimaryLink(h.sim, !cut)
}

// leader is the replica that leads now (nil if none answers as leader).
func (f *fleet) leader() *replica {
	for _, r := range f.replicas {
		if r.proc.Cmd.ProcessState != nil {
			continue
		}
		cc, err := grpc.NewClient(r.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		_, err = schedv1.NewSchedulerClient(cc).ListAgents(ctx, &schedv1.ListAgentsRequest{})
		cancel()
		cc.Close()
		if err == nil {
			return r
		}
	}
	return nil
}

func (f *fleet) waitLeader(timeout time.Duration) *replica {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if r := f.leader(); r != nil {
			return r
		}
		time.Sleep(200 * time.Millisecond)
	}
	f.t.Fatalf("no scheduler replica leads after %s", timeout)
	return nil
}

// api calls fn on the leader (observation, not the user's traffic: it
// retries until ctx ends).
func (f *fleet) api(ctx context.Context, fn func(context.Context, schedv1.SchedulerClient) error) error {
	var err error
	for {
		for _, r := range f.replicas {
			cc, cerr := grpc.NewClient(r.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if cerr != nil {
				return cerr
			}
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err = fn(cctx, schedv1.NewSchedulerClient(cc))
			cancel()
			cc.Close()
			if err == nil || (status.Code(err) != codes.Unavailable && status.Code(err) != codes.DeadlineExceeded) {
				return err
			}
		}
		select {
		case <-ctx.Done():
			return errors.Join(err, ctx.Err())
		case <-time.After(300 * time.Millisecond):
		}
	}
}
