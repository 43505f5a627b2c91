package integration

import (
	"context"
	"crypto/x509"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
	"github.com/titus-agent/titus-agent/pkg/authn"
	"github.com/titus-agent/titus-agent/pkg/authn/authntest"
	"github.com/titus-agent/titus-agent/pkg/authz"
	"github.com/titus-agent/titus-agent/pkg/schedlink"
	"github.com/titus-agent/titus-agent/pkg/tlsconfig"
	"github.com/titus-agent/titus-agent/test/schedload"
	"github.com/titus-agent/titus-agent/test/testenv"
)

const authzPolicy = `
admins: {principals: [root@example.com]}
operators: {groups: [sre]}
applications:
  billing:
    owners: {principals: [alice@example.com]}
    iamRoles: [arn:aws:iam::123456789012:role/billing-task]
  search:
    owners: {principals: [bob@example.com]}
    iamRoles: [arn:aws:iam::123456789012:role/search-task]
    images: [127.0.0.1:5000/busybox, 127.0.0.1:5000/search/*]
`

// authzEnv is a titus-scheduler process with a policy and bearer tokens,
// on an etcd the test reads directly.
type authzEnv struct {
	t     *testing.T
	ctx   context.Context
	sched *schedProc
	etcd  *clientv3.Client
	api   schedv1.SchedulerClient
	iss   *authntest.Issuer
}

func newAuthzEnv(t *testing.T, extra ...string) *authzEnv {
	t.Helper()
	ctx, etcd := externalEtcd(t)
	cli, err := clientv3.New(clientv3.Config{Endpoints: etcd.Endpoints})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	dir := t.TempDir()
	iss := authntest.NewIssuer(t, "https://idp.example.com")
	jwks, policy := filepath.Join(dir, "jwks.json"), filepath.Join(dir, "policy.yaml")
	authntest.WriteFile(t, jwks, iss.JWKS(t))
	authntest.WriteFile(t, policy, []byte(authzPolicy))
	s := &schedProc{t: t, addr: testenv.Addr(testenv.FreePort(t)), dir: dir}
	args := append([]string{"serve", "--etcd-endpoints", strings.Join(etcd.Endpoints, ","), "--listen", s.addr, "--metrics-listen", "",
		"--election-ttl", "2s", "--policy", policy, "--token-jwks", jwks, "--token-issuer", iss.URL, "--token-audience", "titus"}, extra...)
	p := testenv.StartProcess(t, dir, "scheduler", exec.Command(testenv.SchedulerBinary(t), args...))
	testenv.WaitTCP(t, s.addr, p, 60*time.Second)
	cc, err := grpc.NewClient(s.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	e := &authzEnv{t: t, ctx: ctx, sched: s, etcd: cli, api: schedv1.NewSchedulerClient(cc), iss: iss}
	waitUntil(t, "scheduler leading", 30*time.Second, func() (bool, string) {
		_, err := e.api.ListJobs(e.as("root@example.com"), &schedv1.ListJobsRequest{})
		return err == nil, status.Convert(err).Message()
	})
	return e
}

func (e *authzEnv) token(email string, groups ...string) string {
	claims := map[string]any{"email": email}
	if len(groups) > 0 {
		claims["groups"] = groups
	}
	return e.iss.Mint(e.t, authntest.Token{Audience: []string{"titus"}, Expiry: time.Now().Add(time.Hour), Claims: claims})
}

// as is a call context carrying email's bearer token.
func (e *authzEnv) as(email string, groups ...string) context.Context {
	return metadata.AppendToOutgoingContext(e.ctx, "authorization", "Bearer "+e.token(email, groups...))
}

func (e *authzEnv) jobKeys() int64 {
	e.t.Helper()
	resp, err := e.etcd.Get(e.ctx, "/titus/jobs/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		e.t.Fatalf("etcd count: %v", err)
	}
	return resp.Count
}

// tenantSpec is a service job at desired 0 (it needs no agent) of app.
func tenantSpec(app, owner string) *schedv1.JobSpec {
	s := jobSpec(&schedv1.ServiceJob{Min: 0, Desired: 0, Max: 2})
	s.Application, s.OwnerEmail = app, owner
	s.Task.Env = map[string]string{"DB_PASSWORD": "hunter2", "MODE": "prod"}
	return s
}

func wantCode(t *testing.T, what string, err error, code codes.Code, msg string) {
	t.Helper()
	if status.Code(err) != code || !strings.Contains(status.Convert(err).Message(), msg) {
		t.Errorf("%s: %v, want %s containing %q", what, err, code, msg)
	}
}

// TestSchedulerAuthzTenantAttacks: tenant B (bob, owner of search) goes
// after tenant A's (alice, billing) job: kill, scale, read, read its env,
// list it, kill its task, reuse A's IAM role, widen host access with
// titus.isolation labels; anonymous and forged callers get nothing.
// Every refused mutating call lands in the audit trail with its
// principal and result, which `audit ls` shows.
func TestSchedulerAuthzTenantAttacks(t *testing.T) {
	begin(t)
	e := newAuthzEnv(t)
	alice, bob, root, sre := e.as("alice@example.com"), e.as("bob@example.com"), e.as("root@example.com"), e.as("carol@example.com", "sre")

	resp, err := e.api.SubmitJob(alice, &schedv1.SubmitJobRequest{Spec: tenantSpec("billing", "alice@example.com")})
	if err != nil {
		t.Fatalf("alice submits billing's job: %v", err)
	}
	jobA := resp.JobId

	// Bob may not read alice's job: for him it does not exist (the answer
	// names neither its application nor that it exists).
	noJob := `job "` + jobA + `": no such job`
	_, err = e.api.KillJob(bob, &schedv1.KillJobRequest{Id: jobA})
	wantCode(t, "bob kills alice's job", err, codes.NotFound, noJob)
	_, err = e.api.ScaleJob(bob, &schedv1.ScaleJobRequest{Id: jobA, Min: 0, Desired: 2, Max: 2})
	wantCode(t, "bob scales alice's job", err, codes.NotFound, noJob)
	_, err = e.api.GetJob(bob, &schedv1.GetJobRequest{Id: jobA})
	wantCode(t, "bob reads alice's job", err, codes.NotFound, noJob)
	_, err = e.api.KillTask(bob, &schedv1.KillTaskRequest{Id: jobA + ".0.0"})
	wantCode(t, "bob kills a task of alice's job", err, codes.NotFound, `task "`+jobA+`.0.0"`)
	_, err = e.api.ListTasks(bob, &schedv1.ListTasksRequest{JobId: jobA})
	wantCode(t, "bob lists alice's tasks", err, codes.NotFound, noJob)
	if l, err := e.api.ListJobs(bob, &schedv1.ListJobsRequest{All: true}); err != nil || len(l.Jobs) != 0 {
		t.Errorf("bob's job list = %v, %v; want none of billing's", l.GetJobs(), err)
	}

	// Env: the owner and admins read values; an operator sees names only.
	for _, c := range []struct {
		who  string
		ctx  context.Context
		want string
	}{{"alice", alice, "hunter2"}, {"operator", sre, "<redacted>"}, {"root", root, "hunter2"}, {"alice again", alice, "hunter2"}} {
		j, err := e.api.GetJob(c.ctx, &schedv1.GetJobRequest{Id: jobA})
		if err != nil {
			t.Fatalf("%s reads the job: %v", c.who, err)
		}
		if got := j.Spec.Task.Env["DB_PASSWORD"]; got != c.want {
			t.Errorf("%s sees DB_PASSWORD=%q, want %q", c.who, got, c.want)
		}
		l, err := e.api.ListJobs(c.ctx, &schedv1.ListJobsRequest{})
		if err != nil || len(l.Jobs) != 1 || l.Jobs[0].Spec.Task.Env["DB_PASSWORD"] != c.want {
			t.Errorf("%s lists %v, %v; want one job with DB_PASSWORD=%q", c.who, l.GetJobs(), err, c.want)
		}
	}
	// ... nor in the previous template an update leaves on the job (what an
	// undo returns to): it was shown whole to every reader.
	v2 := tenantSpec("billing", "alice@example.com")
	v2.Task.Env["DB_PASSWORD"] = "hunter3"
	if _, err := e.api.UpdateJob(alice, &schedv1.UpdateJobRequest{Id: jobA, Spec: v2}); err != nil {
		t.Fatalf("alice updates her job: %v", err)
	}
	for who, c := range map[string]context.Context{"operator": sre, "alice": alice} {
		j, err := e.api.GetJob(c, &schedv1.GetJobRequest{Id: jobA})
		if err != nil {
			t.Fatal(err)
		}
		got := j.GetSpec().GetTask().GetEnv()["DB_PASSWORD"] + " " + j.GetRollout().GetPreviousTask().GetEnv()["DB_PASSWORD"]
		if want := map[string]string{"operator": "<redacted> <redacted>", "alice": "hunter3 hunter2"}[who]; got != want {
			t.Errorf("%s sees DB_PASSWORD current and previous %q, want %q", who, got, want)
		}
	}
	// Bob may not pause or undo alice's rollout either, and his undo
	// leaves her revision where it was.
	for _, a := range []schedv1.RolloutJobRequest_Action{schedv1.RolloutJobRequest_ACTION_PAUSE, schedv1.RolloutJobRequest_ACTION_UNDO} {
		_, err = e.api.RolloutJob(bob, &schedv1.RolloutJobRequest{Id: jobA, Action: a})
		wantCode(t, "bob "+a.String()+"s alice's rollout", err, codes.NotFound, noJob)
	}
	if j, err := e.api.GetJob(alice, &schedv1.GetJobRequest{Id: jobA}); err != nil || j.Revision != 2 || j.Spec.Task.Env["DB_PASSWORD"] != "hunter3" {
		t.Errorf("after bob's undo alice's job is at revision %d with %q (%v), want 2 with hunter3", j.GetRevision(), j.GetSpec().GetTask().GetEnv()["DB_PASSWORD"], err)
	}
	_, err = e.api.KillJob(sre, &schedv1.KillJobRequest{Id: jobA})
	wantCode(t, "an operator kills a job", err, codes.PermissionDenied, "job.kill")

	// Confused deputy: bob names billing's role in a search job.
	stolen := tenantSpec("search", "bob@example.com")
	stolen.Task.IamRoleArn = "arn:aws:iam::123456789012:role/billing-task"
	_, err = e.api.SubmitJob(bob, &schedv1.SubmitJobRequest{Spec: stolen})
	wantCode(t, "bob submits with billing's role", err, codes.PermissionDenied, `not in application "search"'s allowlist`)
	// ... or runs billing's image: hosts pull with their own registry
	// credentials and share their image cache.
	img := tenantSpec("search", "bob@example.com")
	img.Task.Image = "127.0.0.1:5000/billing/payments:1"
	_, err = e.api.SubmitJob(bob, &schedv1.SubmitJobRequest{Spec: img})
	wantCode(t, "bob runs billing's image", err, codes.PermissionDenied, "applications.search.images")
	// ... or submits into billing itself.
	_, err = e.api.SubmitJob(bob, &schedv1.SubmitJobRequest{Spec: tenantSpec("billing", "bob@example.com")})
	wantCode(t, "bob submits into billing", err, codes.PermissionDenied, `may not job.submit on application "billing"`)
	own := tenantSpec("search", "bob@example.com")
	own.Task.IamRoleArn = "arn:aws:iam::123456789012:role/search-task"
	if _, err := e.api.SubmitJob(bob, &schedv1.SubmitJobRequest{Spec: own}); err != nil {
		t.Errorf("bob submits with search's own role: %v", err)
	}

	// Host access: titus.isolation/* labels are admins' only, on the job or its task.
	for _, where := range []string{"job", "task"} {
		wide := tenantSpec("search", "bob@example.com")
		if where == "job" {
			wide.Labels = map[string]string{"titus.isolation/host-mounts": "/"}
		} else {
			wide.Task.Labels = map[string]string{"titus.isolation/host-mounts": "/"}
		}
		_, err = e.api.SubmitJob(bob, &schedv1.SubmitJobRequest{Spec: wide})
		wantCode(t, "bob sets titus.isolation/host-mounts on the "+where, err, codes.PermissionDenied, "reserved to admins")
	}
	adminWide := tenantSpec("search", "root@example.com")
	adminWide.Labels = map[string]string{"titus.isolation/host-mounts": "/data"}
	if _, err := e.api.SubmitJob(root, &schedv1.SubmitJobRequest{Spec: adminWide}); err != nil {
		t.Errorf("admin sets titus.isolation/host-mounts: %v", err)
	}

	// No credential, or a forged one.
	_, err = e.api.KillJob(e.ctx, &schedv1.KillJobRequest{Id: jobA})
	wantCode(t, "anonymous kill", err, codes.PermissionDenied, "anonymous")
	forged := authntest.NewIssuer(t, "https://idp.example.com").Mint(t, authntest.Token{Audience: []string{"titus"}, Expiry: time.Now().Add(time.Hour),
		Claims: map[string]any{"email": "alice@example.com"}})
	_, err = e.api.KillJob(metadata.AppendToOutgoingContext(e.ctx, "authorization", "Bearer "+forged), &schedv1.KillJobRequest{Id: jobA})
	wantCode(t, "kill with a token from another key", err, codes.Unauthenticated, "signature")

	if j, err := e.api.GetJob(alice, &schedv1.GetJobRequest{Id: jobA}); err != nil || j.State != schedv1.JobState_JOB_STATE_ACCEPTED || j.Spec.GetService().GetDesired() != 0 {
		t.Fatalf("alice's job after the attacks: %v, %v; want it live and unscaled", j, err)
	}
	if _, err := e.api.KillJob(alice, &schedv1.KillJobRequest{Id: jobA}); err != nil {
		t.Errorf("alice kills her own job: %v", err)
	}

	// The trail, through the CLI: root with --token, alice with TITUS_TOKEN (refused: not an operator).
	var trail schedv1.ListAuditResponse
	if err := e.sched.cliJSON(&trail, "--token", e.token("root@example.com"), "audit", "ls", "--job", jobA); err != nil {
		t.Fatalf("audit ls --job: %v", err)
	}
	var got []string
	for _, r := range trail.Records {
		got = append(got, r.Principal+" "+r.Method+" "+r.Code)
	}
	want := []string{"alice@example.com SubmitJob OK", "bob@example.com KillJob PermissionDenied", "bob@example.com ScaleJob PermissionDenied",
		"bob@example.com KillTask PermissionDenied", "alice@example.com UpdateJob OK",
		"bob@example.com RolloutJob PermissionDenied", "bob@example.com RolloutJob PermissionDenied",
		"carol@example.com KillJob PermissionDenied", "alice@example.com KillJob OK"} // anonymous's kill: logged, not stored
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("audit ls --job %s:\n%s\nwant:\n%s", jobA, strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if err := e.sched.cliJSON(&trail, "--token", e.token("root@example.com"), "audit", "ls", "--principal", "bob@example.com"); err != nil {
		t.Fatalf("audit ls --principal: %v", err)
	}
	refused := 0
	for _, r := range trail.Records {
		if r.Principal != "bob@example.com" {
			t.Errorf("audit ls --principal bob lists %v", r)
		}
		if r.Code == "PermissionDenied" {
			refused++
		}
	}
	if refused != 10 { // kill, scale, kill task, pause, undo, stolen role, billing's image, billing submit, two labels
		t.Errorf("audit ls --principal bob: %d refused calls, want 10:\n%v", refused, trail.Records)
	}
	cmd := exec.Command(testenv.SchedulerBinary(t), "--addr", e.sched.addr, "audit", "ls")
	cmd.Env = append(os.Environ(), "TITUS_TOKEN="+e.token("alice@example.com"))
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "PermissionDenied") || !strings.Contains(string(out), "alice@example.com") {
		t.Errorf("alice's audit ls (TITUS_TOKEN): %v\n%s\nwant PermissionDenied naming alice", err, out)
	}
}

// TestSchedulerAuthzExhaustion: an oversized spec is refused before etcd
// (no job key is written), labels past their limits are refused, and an
// application may not hold more live jobs than its cap, desired-0
// services included, while another application still may.
func TestSchedulerAuthzExhaustion(t *testing.T) {
	begin(t)
	e := newAuthzEnv(t, "--max-live-jobs-per-application", "3")
	alice, bob := e.as("alice@example.com"), e.as("bob@example.com")
	before := e.jobKeys()

	big := tenantSpec("billing", "alice@example.com")
	for i := range 3 { // 90 KiB: within the task's env limits, past the spec's
		big.Task.Env["BLOB"+string(rune('A'+i))] = strings.Repeat("x", 30<<10)
	}
	_, err := e.api.SubmitJob(alice, &schedv1.SubmitJobRequest{Spec: big})
	wantCode(t, "a 90 KiB spec", err, codes.InvalidArgument, "the limit is 65536")
	huge := tenantSpec("billing", "alice@example.com")
	huge.Task.Command = []string{strings.Repeat("y", 300<<10)}
	_, err = e.api.SubmitJob(alice, &schedv1.SubmitJobRequest{Spec: huge})
	wantCode(t, "a 300 KiB request", err, codes.ResourceExhausted, "exceeds the API's limit")
	labels := tenantSpec("billing", "alice@example.com")
	labels.Labels = map[string]string{"team": strings.Repeat("z", 2000)}
	_, err = e.api.SubmitJob(alice, &schedv1.SubmitJobRequest{Spec: labels})
	wantCode(t, "a 2000-byte label value", err, codes.InvalidArgument, "value must be at most 1024 bytes")
	if after := e.jobKeys(); after != before {
		t.Fatalf("refused submissions wrote %d job keys to etcd", after-before)
	}

	var ids []string
	for range 3 {
		resp, err := e.api.SubmitJob(alice, &schedv1.SubmitJobRequest{Spec: tenantSpec("billing", "alice@example.com")})
		if err != nil {
			t.Fatalf("alice's job %d: %v", len(ids)+1, err)
		}
		ids = append(ids, resp.JobId)
	}
	_, err = e.api.SubmitJob(alice, &schedv1.SubmitJobRequest{Spec: tenantSpec("billing", "alice@example.com")})
	wantCode(t, "alice's fourth live job", err, codes.ResourceExhausted, `application "billing" has 3 live jobs, limit 3`)
	if _, err := e.api.SubmitJob(bob, &schedv1.SubmitJobRequest{Spec: tenantSpec("search", "bob@example.com")}); err != nil {
		t.Errorf("bob's first job while billing is at its cap: %v", err)
	}
	if _, err := e.api.KillJob(alice, &schedv1.KillJobRequest{Id: ids[0]}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.api.SubmitJob(alice, &schedv1.SubmitJobRequest{Spec: tenantSpec("billing", "alice@example.com")}); err != nil {
		t.Errorf("alice's job after killing one: %v", err)
	}

	// Pages: two at a time, every job once.
	seen := map[string]bool{}
	for token, n := "", 0; ; n++ {
		l, err := e.api.ListJobs(alice, &schedv1.ListJobsRequest{All: true, PageSize: 2, PageToken: token})
		if err != nil || len(l.Jobs) > 2 || n > 10 {
			t.Fatalf("page %d: %v, %v", n, l, err)
		}
		for _, j := range l.Jobs {
			if seen[j.Id] {
				t.Fatalf("job %s on two pages", j.Id)
			}
			seen[j.Id] = true
		}
		if token = l.NextPageToken; token == "" {
			break
		}
	}
	if len(seen) != 4 {
		t.Errorf("pages listed %d of alice's jobs, want 4", len(seen))
	}
}

// TestSchedulerRefusesPlaintextOnTheNetwork: serve on every interface
// without TLS (or without a policy) exits at once naming --insecure; with
// --insecure it serves.
func TestSchedulerRefusesPlaintextOnTheNetwork(t *testing.T) {
	begin(t)
	port := testenv.FreePort(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, testenv.SchedulerBinary(t), "serve", "--listen", "0.0.0.0:"+strconv.Itoa(port), "--data-dir", t.TempDir(), "--metrics-listen", "").CombinedOutput()
	if err == nil || ctx.Err() != nil || !strings.Contains(string(out), "plaintext is refused") || !strings.Contains(string(out), "--insecure") {
		t.Fatalf("serve on 0.0.0.0 without TLS: %v\n%s\nwant a refusal naming --insecure", err, out)
	}
	dir := t.TempDir()
	port = testenv.FreePort(t)
	s := &schedProc{t: t, addr: testenv.Addr(port), dir: dir}
	p := testenv.StartProcess(t, dir, "scheduler-insecure", exec.Command(testenv.SchedulerBinary(t), "serve", "--listen", "0.0.0.0:"+strconv.Itoa(port),
		"--data-dir", filepath.Join(dir, "data"), "--metrics-listen", "", "--insecure"))
	testenv.WaitTCP(t, s.addr, p, 60*time.Second)
	waitUntil(t, "insecure scheduler answers", 30*time.Second, func() (bool, string) {
		out, err := s.cli("job", "ls")
		return err == nil, out
	})
	for _, want := range []string{"INSECURE: serving plaintext on a non-loopback address", "AUTHORIZATION IS OFF"} {
		if !strings.Contains(p.Log(), want) {
			t.Errorf("the insecure scheduler's log lacks %q:\n%s", want, p.Log())
		}
	}
}

// TestSchedulerAuthzFakeHost: under a policy with mutual TLS, a user's
// certificate (alice, a tenant) cannot open the agent stream to register a
// fake host and receive launch specs, nor can a caller without a
// certificate; an agent's certificate registers and runs alice's job.
func TestSchedulerAuthzFakeHost(t *testing.T) {
	begin(t)
	dir := t.TempDir()
	ca := authntest.NewCA(t, "titus test CA")
	authntest.WriteFile(t, filepath.Join(dir, "ca.pem"), ca.PEM)
	srv := ca.Issue(t, authntest.Leaf{CN: "scheduler", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Usage: x509.ExtKeyUsageServerAuth}, dir)
	alice := ca.Issue(t, authntest.Leaf{CN: "alice", Emails: []string{"alice@example.com"}}, dir)
	host := ca.Issue(t, authntest.Leaf{CN: "host-1", URIs: []string{authn.DefaultAgentURIPrefix + "host-1"}}, dir)
	server, err := tlsconfig.Files{CertFile: srv.CertFile, KeyFile: srv.KeyFile, CAFile: filepath.Join(dir, "ca.pem")}.Server()
	if err != nil {
		t.Fatal(err)
	}
	pol, err := authz.Parse([]byte(authzPolicy))
	if err != nil {
		t.Fatal(err)
	}
	o := schedOptions(t)
	o.TLS, o.Policy = server, pol
	s, _ := startScheduler(t, t.Context(), o)
	waitLeading(t, s)
	dial := func(c authntest.Issued) grpc.DialOption {
		d, err := tlsconfig.Files{CAFile: filepath.Join(dir, "ca.pem"), CertFile: c.CertFile, KeyFile: c.KeyFile}.DialOption()
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	cc, err := grpc.NewClient(s.Addr(), dial(alice))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	e := &schedEnv{t: t, ctx: t.Context(), addrs: []string{s.Addr()}, agents: map[string]*schedload.Agent{}, api: schedv1.NewSchedulerClient(cc)}
	start := func(id string, d grpc.DialOption) {
		a := schedload.NewAgent(schedlink.Config{Address: s.Addr(), InstanceID: id, AZ: "az-a", DialOptions: []grpc.DialOption{d},
			Capacity:   schedlink.Capacity{CPUMillicores: 400000, MemoryMiB: 1 << 20},
			MinBackoff: 50 * time.Millisecond, MaxBackoff: 300 * time.Millisecond}, finishAfter(100*time.Millisecond))
		a.Start(e.ctx)
		t.Cleanup(a.Stop)
	}
	noCert, err := tlsconfig.Files{CAFile: filepath.Join(dir, "ca.pem")}.DialOption()
	if err != nil {
		t.Fatal(err)
	}
	start("fake-host", dial(alice))
	start("anon-host", noCert)
	time.Sleep(time.Second) // the fake hosts try first
	start("host-1", dial(host))

	spec := jobSpec(&schedv1.BatchJob{Size: 1})
	spec.Application, spec.OwnerEmail = "billing", "alice@example.com"
	id := e.submit(spec)
	e.eventually("alice's job finished on host-1", func() (bool, string) {
		j := e.job(id)
		return j.State == schedv1.JobState_JOB_STATE_FINISHED, j.String()
	})
	var agents []string
	rc, err := grpc.NewClient(s.Addr(), dial(ca.Issue(t, authntest.Leaf{CN: "root", Emails: []string{"root@example.com"}}, dir)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rc.Close() })
	resp, err := schedv1.NewSchedulerClient(rc).ListAgents(e.ctx, &schedv1.ListAgentsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range resp.Agents {
		agents = append(agents, a.Id)
	}
	if strings.Join(agents, ",") != "host-1" {
		t.Fatalf("registered agents = %v, want only host-1 (the agent certificate)", agents)
	}
	if _, err := e.api.ListAgents(e.ctx, &schedv1.ListAgentsRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("alice lists agents: %v, want PermissionDenied", err)
	}
}
