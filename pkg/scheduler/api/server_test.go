package api

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
	"github.com/titus-agent/titus-agent/pkg/authn"
	"github.com/titus-agent/titus-agent/pkg/authz"
	"github.com/titus-agent/titus-agent/pkg/scheduler/core"
	"github.com/titus-agent/titus-agent/pkg/scheduler/store"
)

type leading struct{}

func (leading) IsLeader() bool     { return true }
func (leading) LeaderAddr() string { return "" }

const policy = `
admins: {principals: [root@example.com]}
readers: {principals: [auditor@example.com]}
applications:
  billing:
    owners: {principals: [alice@example.com]}
    targetGroups: [arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/billing-web/0123456789abcdef]
  search: {owners: {principals: [bob@example.com]}}
`

// newServer is the API over a loaded core on an embedded etcd, with the
// guard of policy (no interceptors: tests put the principal in the context).
func newServer(t *testing.T) *Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	c, err := core.New(core.Config{}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	e, err := store.StartEmbeddedEtcd(ctx, t.TempDir()+"/etcd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	cli, err := store.Dial(e.Endpoints)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	el, err := store.NewElection(ctx, cli, "/t/", 30*time.Second, 128)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { el.Close() })
	st, err := el.Campaign(ctx, "x")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Load(ctx, st, nil); err != nil {
		t.Fatal(err)
	}
	p, err := authz.Parse([]byte(policy))
	if err != nil {
		t.Fatal(err)
	}
	return New(c, leading{}, authz.NewGuard(authz.GuardConfig{Decider: authz.New(p)}), nil)
}

func as(name string) context.Context {
	return authn.NewContext(context.Background(), authn.Principal{Name: name, Method: authn.MethodToken})
}

func spec(app string) *schedv1.JobSpec {
	return &schedv1.JobSpec{OwnerEmail: "o@example.com", Application: app, Kind: &schedv1.JobSpec_Service{Service: &schedv1.ServiceJob{Max: 1}},
		Task: &agentv1.TaskSpec{Image: "registry.example/x:1", Command: []string{"x"}, Resources: &agentv1.Resources{CpuMillicores: 100, MemoryMib: 64},
			Env: map[string]string{"SECRET": "s3"}}}
}

// TestRedactionLeavesTheRecordAlone: a reader sees env names only, and
// its redacted copy never reaches the core's record (the owner still
// reads the value afterwards).
func TestRedactionLeavesTheRecordAlone(t *testing.T) {
	s := newServer(t)
	r, err := s.SubmitJob(as("alice@example.com"), &schedv1.SubmitJobRequest{Spec: spec("billing")})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, who := range []string{"auditor@example.com", "alice@example.com", "root@example.com"} {
		j, err := s.GetJob(as(who), &schedv1.GetJobRequest{Id: r.JobId})
		if err != nil {
			t.Fatalf("%s: %v", who, err)
		}
		got[who] = j.Spec.Task.Env["SECRET"]
	}
	want := map[string]string{"auditor@example.com": authz.Redacted, "alice@example.com": "s3", "root@example.com": "s3"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("env seen (-want +got):\n%s", diff)
	}
}

// TestListsShowOnlyWhatTheCallerMayRead: bob lists his jobs and tasks
// only, in pages that cover each once.
func TestListsShowOnlyWhatTheCallerMayRead(t *testing.T) {
	s := newServer(t)
	mine := map[string]bool{}
	for i := range 5 {
		app, who := "billing", "alice@example.com"
		if i%2 == 0 {
			app, who = "search", "bob@example.com"
		}
		r, err := s.SubmitJob(as(who), &schedv1.SubmitJobRequest{Spec: spec(app)})
		if err != nil {
			t.Fatal(err)
		}
		if app == "search" {
			mine[r.JobId] = true
		}
	}
	seen := map[string]bool{}
	for token, pages := "", 0; ; pages++ {
		l, err := s.ListJobs(as("bob@example.com"), &schedv1.ListJobsRequest{PageSize: 2, PageToken: token})
		if err != nil || pages > 5 {
			t.Fatalf("page %d: %v", pages, err)
		}
		for _, j := range l.Jobs {
			seen[j.Id] = true
		}
		if token = l.NextPageToken; token == "" {
			break
		}
	}
	if diff := cmp.Diff(mine, seen); diff != "" {
		t.Errorf("bob's pages (-want +got):\n%s", diff)
	}
	var other string
	for _, j := range s.core.Jobs(false) {
		if !mine[j.ID] {
			other = j.ID
		}
	}
	for name, err := range map[string]error{
		"kill": func() error {
			_, err := s.KillJob(as("bob@example.com"), &schedv1.KillJobRequest{Id: other})
			return err
		}(),
		"scale": func() error {
			_, err := s.ScaleJob(as("bob@example.com"), &schedv1.ScaleJobRequest{Id: other, Desired: 1, Max: 1})
			return err
		}(),
		"tasks": func() error {
			_, err := s.ListTasks(as("bob@example.com"), &schedv1.ListTasksRequest{JobId: other})
			return err
		}(),
		"kill task": func() error {
			_, err := s.KillTask(as("bob@example.com"), &schedv1.KillTaskRequest{Id: other + ".0.0"})
			return err
		}(),
		"no principal": func() error { _, err := s.GetJob(context.Background(), &schedv1.GetJobRequest{Id: other}); return err }(),
	} {
		// Bob may not read alice's job: it does not exist, for him.
		if status.Code(err) != codes.NotFound {
			t.Errorf("bob's %s of alice's job: %v, want NotFound", name, err)
		}
	}
	if j, _ := s.core.Job(other); j.Spec.Service.Desired != 0 || j.State.Terminal() {
		t.Errorf("alice's job changed: %+v", j)
	}
}

func TestSpecDoor(t *testing.T) {
	s := newServer(t)
	big := spec("billing")
	for _, k := range []string{"A", "B", "C"} {
		big.Task.Env[k] = string(make([]byte, 30<<10))
	}
	_, err := s.SubmitJob(as("alice@example.com"), &schedv1.SubmitJobRequest{Spec: big})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("90 KiB spec: %v, want InvalidArgument", err)
	}
	if jobs := s.core.Jobs(true); len(jobs) != 0 {
		t.Errorf("a refused spec made %d jobs", len(jobs))
	}
}

// The attack: tenant B (search) puts its tasks into tenant A's (billing)
// target group, so A's load balancer sends A's users to B's tasks. The
// door refuses it, at submit and at update, and nothing is stored.
func TestTargetGroupOfAnotherTenantRefused(t *testing.T) {
	s := newServer(t)
	const billingTG = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/billing-web/0123456789abcdef"
	withTG := func(app string) *schedv1.JobSpec {
		sp := spec(app)
		sp.GetService().TargetGroups = []*schedv1.TargetGroup{{Arn: billingTG, Port: 8080}}
		return sp
	}
	_, err := s.SubmitJob(as("bob@example.com"), &schedv1.SubmitJobRequest{Spec: withTG("search")})
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("bob's job in billing's target group: %v, want PermissionDenied", err)
	}
	if jobs := s.core.Jobs(true); len(jobs) != 0 {
		t.Errorf("a refused spec made %d jobs", len(jobs))
	}
	resp, err := s.SubmitJob(as("bob@example.com"), &schedv1.SubmitJobRequest{Spec: spec("search")})
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.UpdateJob(as("bob@example.com"), &schedv1.UpdateJobRequest{Id: resp.GetJobId(), Spec: withTG("")})
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("bob's update into billing's target group: %v, want PermissionDenied", err)
	}
	if j, err := s.core.Job(resp.GetJobId()); err != nil || len(j.Spec.TargetGroups()) != 0 || j.Revision != 1 {
		t.Errorf("after the refused update: %+v %v, want no target group and no new revision", j, err)
	}
	// Alice may name it; this scheduler has no load balancer integration,
	// which the core says (past the door).
	_, err = s.SubmitJob(as("alice@example.com"), &schedv1.SubmitJobRequest{Spec: withTG("billing")})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("alice's job in her own target group: %v, want InvalidArgument (no integration)", err)
	}
}

// TestSubmitterIsTheCaller: the submitter recorded with a job (and passed
// to STS as a session tag) is who the scheduler authenticated, never what
// the request claims; with no credential (authentication off) it is empty.
func TestSubmitterIsTheCaller(t *testing.T) {
	s := newServer(t)
	sp := spec("billing")
	sp.Submitter = "mallory@example.com" // forged
	resp, err := s.SubmitJob(as("alice@example.com"), &schedv1.SubmitJobRequest{Spec: sp})
	if err != nil {
		t.Fatal(err)
	}
	j, err := s.core.Job(resp.GetJobId())
	if err != nil {
		t.Fatal(err)
	}
	if j.Spec.Submitter != "alice@example.com" {
		t.Errorf("submitter = %q, want the caller alice@example.com", j.Spec.Submitter)
	}
	anon := authn.NewContext(context.Background(), authn.Principal{Name: "anonymous", Method: authn.MethodNone})
	if got := submitter(anon); got != "" {
		t.Errorf("submitter with no credential = %q, want empty", got)
	}
}
