package integration

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
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
	"github.com/titus-agent/titus-agent/pkg/authn"
	"github.com/titus-agent/titus-agent/pkg/schedlink"
	"github.com/titus-agent/titus-agent/pkg/tlsconfig"
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
		_, rerr := stream.Recv() // io.EOF on Send: the status comes with Recv
		return rerr
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

// testCA is a CA that writes PEM files to a test's directory.
type testCA struct {
	t    *testing.T
	dir  string
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	file string
	n    int64
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	ca := &testCA{t: t, dir: t.TempDir(), key: newKey(t)}
	now := time.Now()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &ca.key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	ca.cert, _ = x509.ParseCertificate(der)
	ca.file = ca.write(name+"-ca.pem", "CERTIFICATE", der)
	return ca
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func (ca *testCA) write(name, typ string, der []byte) string {
	p := filepath.Join(ca.dir, name)
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		ca.t.Fatal(err)
	}
	return p
}

// issue writes a leaf certificate and its key; uri, if set, is its URI SAN.
func (ca *testCA) issue(cn, uri string, usage x509.ExtKeyUsage, ips ...net.IP) (cert, key string) {
	ca.n++
	k := newKey(ca.t)
	now := time.Now()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(ca.n + 1), Subject: pkix.Name{CommonName: cn}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage}, IPAddresses: ips}
	if uri != "" {
		u, err := url.Parse(uri)
		if err != nil {
			ca.t.Fatal(err)
		}
		tmpl.URIs = []*url.URL{u}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &k.PublicKey, ca.key)
	if err != nil {
		ca.t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		ca.t.Fatal(err)
	}
	name := fmt.Sprintf("%s-%d", strings.ReplaceAll(cn, "/", "_"), ca.n)
	return ca.write(name+".pem", "CERTIFICATE", der), ca.write(name+"-key.pem", "PRIVATE KEY", kder)
}

// dial is the client credentials of a certificate issued by ca (or none).
func dialWith(t *testing.T, serverCA, cert, key string) grpc.DialOption {
	t.Helper()
	d, err := tlsconfig.Files{CAFile: serverCA, CertFile: cert, KeyFile: key}.DialOption()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestSchedulerAgentCertIdentity: with mutual TLS and a separate agent CA,
// an agent registers only as the instance id its certificate names. The
// attacks: a user certificate registering as an agent, the agent
// certificate of i-A registering as i-B, a user-CA certificate forging
// the agent URI SAN of i-A, and no client certificate at all; each is
// refused, and only i-A (with its own certificate) registers and runs
// tasks.
func TestSchedulerAgentCertIdentity(t *testing.T) {
	begin(t)
	users, agents := newTestCA(t, "users"), newTestCA(t, "agents")
	srvCert, srvKey := users.issue("scheduler", "", x509.ExtKeyUsageServerAuth, net.IPv4(127, 0, 0, 1))
	tc, err := tlsconfig.Files{CertFile: srvCert, KeyFile: srvKey, CAFile: users.file}.Server()
	if err != nil {
		t.Fatal(err)
	}
	if err := tlsconfig.AddClientCA(tc, agents.file); err != nil {
		t.Fatal(err)
	}
	o := schedOptions(t)
	o.TLS = tc
	if o.Authn, err = authn.New(authn.Config{AgentCAFile: agents.file}, nil); err != nil {
		t.Fatal(err)
	}
	s, _ := startScheduler(t, t.Context(), o)
	waitLeading(t, s)
	addr := s.Addr()

	userCert, userKey := users.issue("alice@example.com", "", x509.ExtKeyUsageClientAuth)
	aCert, aKey := agents.issue("i-A", authn.DefaultAgentURIPrefix+"i-A", x509.ExtKeyUsageClientAuth)
	forgedCert, forgedKey := users.issue("forger", authn.DefaultAgentURIPrefix+"i-A", x509.ExtKeyUsageClientAuth)
	user, agentA, forged := dialWith(t, users.file, userCert, userKey), dialWith(t, users.file, aCert, aKey), dialWith(t, users.file, forgedCert, forgedKey)

	for _, tc := range []struct {
		name string
		dial grpc.DialOption
		as   string
		code codes.Code
		msg  string
	}{
		{"user certificate as an agent", user, "i-A", codes.PermissionDenied, "may not register as an agent"},
		{"agent i-A as i-B", agentA, "i-B", codes.PermissionDenied, `the certificate identifies instance "i-A"; it may not register as "i-B"`},
		{"user-CA certificate forging i-A's URI SAN", forged, "i-A", codes.Unauthenticated, "not issued by the agent CA"},
		{"no client certificate", dialWith(t, users.file, "", ""), "i-A", codes.Unavailable, ""},
	} {
		err := registerAs(t, addr, tc.as, tc.dial)
		if tc.code == codes.Unavailable {
			if err == nil {
				t.Errorf("%s: registered", tc.name)
			}
			continue
		}
		if status.Code(err) != tc.code || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%s: %v; want %s containing %q", tc.name, err, tc.code, tc.msg)
		}
	}

	e := &schedEnv{t: t, ctx: t.Context(), addrs: []string{addr}, agents: map[string]*schedload.Agent{}}
	cc, err := grpc.NewClient(addr, user)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	e.api = schedv1.NewSchedulerClient(cc)
	real := schedload.NewAgent(schedlink.Config{Address: addr, InstanceID: "i-A", AZ: "az-a", DialOptions: []grpc.DialOption{agentA},
		Capacity:   schedlink.Capacity{CPUMillicores: 4000, MemoryMiB: 8192},
		MinBackoff: 50 * time.Millisecond, MaxBackoff: 300 * time.Millisecond}, finishAfter(100*time.Millisecond))
	real.Start(e.ctx)
	t.Cleanup(real.Stop)
	e.waitAgents(1)
	id := e.submit(jobSpec(&schedv1.BatchJob{Size: 2}))
	e.eventually("job finished on i-A", func() (bool, string) {
		j := e.job(id)
		return j.State == schedv1.JobState_JOB_STATE_FINISHED, j.String()
	})
	resp, err := e.api.ListAgents(e.ctx, &schedv1.ListAgentsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Agents) != 1 || resp.Agents[0].Id != "i-A" {
		t.Fatalf("registered agents = %v, want only i-A", resp.Agents)
	}
}
