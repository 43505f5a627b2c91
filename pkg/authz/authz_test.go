package authz

import (
	"errors"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
	"github.com/titus-agent/titus-agent/pkg/authn"
)

// TestEveryRPCHasARule: a new RPC of the scheduler service cannot be left
// open (Gate refuses a method with no rule, and this test fails first);
// no rule names an RPC that is gone.
func TestEveryRPCHasARule(t *testing.T) {
	sd := schedv1.Scheduler_ServiceDesc
	rpcs := map[string]bool{}
	for _, m := range sd.Methods {
		rpcs["/"+sd.ServiceName+"/"+m.MethodName] = true
	}
	for _, s := range sd.Streams {
		rpcs["/"+sd.ServiceName+"/"+s.StreamName] = true
	}
	for m := range rpcs {
		if _, ok := Methods[m]; !ok {
			t.Errorf("RPC %s has no rule in authz.Methods", m)
		}
	}
	for m := range Methods {
		if !rpcs[m] {
			t.Errorf("authz.Methods names %s, which the service does not have", m)
		}
	}
}

const policyYAML = `
admins: {principals: [root@example.com]}
operators: {groups: [sre]}
readers: {principals: [auditor@example.com]}
applications:
  billing:
    owners: {principals: [alice@example.com], groups: [team-billing]}
    iamRoles: [arn:aws:iam::123456789012:role/billing-task, "arn:aws:iam::123456789012:role/billing/*"]
    targetGroups: [arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/billing-web/0123456789abcdef, "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/billing-*"]
  search:
    owners: {principals: [bob@example.com]}
`

func testDecider(t *testing.T) *Decider {
	t.Helper()
	p, err := Parse([]byte(policyYAML))
	if err != nil {
		t.Fatal(err)
	}
	return New(p)
}

var (
	root     = authn.Principal{Name: "root@example.com", Method: authn.MethodCert}
	sre      = authn.Principal{Name: "carol@example.com", Groups: []string{"sre"}, Method: authn.MethodToken}
	auditor  = authn.Principal{Name: "auditor@example.com", Method: authn.MethodToken}
	alice    = authn.Principal{Name: "alice@example.com", Method: authn.MethodToken}
	billing2 = authn.Principal{Name: "dave@example.com", Groups: []string{"team-billing"}, Method: authn.MethodToken}
	bob      = authn.Principal{Name: "bob@example.com", Method: authn.MethodCert}
	stranger = authn.Principal{Name: "eve@example.com", Method: authn.MethodToken}
	anon     = authn.Principal{Name: authn.Anonymous, Method: authn.MethodNone}
	agent    = authn.Principal{Name: authn.DefaultAgentURIPrefix + "i-1", Method: authn.MethodCert, InstanceID: "i-1"}
	// An agent certificate whose URI happens to equal a user's name still acts only as an agent.
	agentNamedRoot = authn.Principal{Name: "root@example.com", Method: authn.MethodCert, InstanceID: "i-2"}
)

func TestAllow(t *testing.T) {
	d := testDecider(t)
	type q struct {
		p   authn.Principal
		a   Action
		app string
	}
	allowed := []q{
		{root, JobKill, "billing"}, {root, AgentDrain, ""}, {root, AuditRead, ""},
		{sre, JobRead, "billing"}, {sre, AgentDrain, ""}, {sre, AuditRead, ""},
		{auditor, JobRead, "search"}, {auditor, TaskRead, "billing"}, {auditor, AgentRead, ""},
		{alice, JobSubmit, "billing"}, {alice, JobKill, "billing"}, {alice, JobScale, "billing"}, {alice, TaskKill, "billing"}, {alice, JobRead, "billing"},
		{billing2, JobKill, "billing"},
		{bob, JobKill, "search"},
	}
	refused := []q{
		{sre, JobKill, "billing"}, {sre, JobSubmit, "billing"},
		{auditor, JobKill, "search"}, {auditor, AgentDrain, ""}, {auditor, AuditRead, ""},
		{alice, JobKill, "search"}, {alice, JobRead, "search"}, {alice, JobSubmit, "search"}, {alice, AgentDrain, ""}, {alice, AgentRead, ""},
		{alice, JobKill, ""}, {alice, JobSubmit, "unlisted"},
		{bob, JobKill, "billing"}, {bob, TaskKill, "billing"},
		{stranger, JobRead, "billing"}, {stranger, JobSubmit, "new-app"},
		{anon, JobRead, "billing"}, {anon, JobSubmit, "billing"},
		{agent, JobRead, "billing"}, {agentNamedRoot, JobKill, "billing"},
	}
	for _, c := range allowed {
		if err := d.Allow(c.p, c.a, c.app); err != nil {
			t.Errorf("Allow(%s, %s, %q) = %v, want allowed", c.p, c.a, c.app, err)
		}
	}
	for _, c := range refused {
		if err := d.Allow(c.p, c.a, c.app); !errors.Is(err, errdefs.ErrPermissionDenied) {
			t.Errorf("Allow(%s, %s, %q) = %v, want permission denied", c.p, c.a, c.app, err)
		}
	}
	for _, c := range append(allowed, refused...) {
		if c.p.IsAgent() {
			continue
		}
		if err := Open().Allow(c.p, c.a, c.app); err != nil {
			t.Errorf("Open().Allow(%s, %s, %q) = %v", c.p, c.a, c.app, err)
		}
	}
}

func TestGate(t *testing.T) {
	d := testDecider(t)
	tests := []struct {
		p      authn.Principal
		method string
		ok     bool
	}{
		{alice, schedv1.Scheduler_KillJob_FullMethodName, true}, // the handler checks the job's application
		{alice, schedv1.Scheduler_ListJobs_FullMethodName, true},
		{alice, schedv1.Scheduler_DrainAgent_FullMethodName, false},
		{alice, schedv1.Scheduler_ListAgents_FullMethodName, false},
		{alice, schedv1.Scheduler_Connect_FullMethodName, false},
		{stranger, schedv1.Scheduler_ListJobs_FullMethodName, false},
		{anon, schedv1.Scheduler_SubmitJob_FullMethodName, false},
		{sre, schedv1.Scheduler_DrainAgent_FullMethodName, true},
		{sre, schedv1.Scheduler_KillJob_FullMethodName, false},
		{agent, schedv1.Scheduler_Connect_FullMethodName, true},
		{agent, schedv1.Scheduler_ListJobs_FullMethodName, false},
		{root, schedv1.Scheduler_Connect_FullMethodName, false},
		{root, "/titus.scheduler.v1.Scheduler/Backdoor", false},
	}
	for _, tc := range tests {
		_, err := d.Gate(tc.p, tc.method)
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, errdefs.ErrPermissionDenied)) {
			t.Errorf("Gate(%s, %s) = %v, want ok=%v", tc.p, tc.method, err, tc.ok)
		}
	}
	// Open: everything but agents calling user RPCs and unknown methods.
	if _, err := Open().Gate(anon, schedv1.Scheduler_Connect_FullMethodName); err != nil {
		t.Errorf("open Connect: %v", err)
	}
	if _, err := Open().Gate(agent, schedv1.Scheduler_KillJob_FullMethodName); err == nil {
		t.Error("open: an agent certificate may kill jobs")
	}
	if _, err := Open().Gate(anon, "/titus.scheduler.v1.Scheduler/Backdoor"); err == nil {
		t.Error("open: a method without a rule is allowed")
	}
}

func TestCheckIAMRole(t *testing.T) {
	d := testDecider(t)
	tests := []struct {
		app, arn string
		ok       bool
	}{
		{"billing", "", true},
		{"billing", "arn:aws:iam::123456789012:role/billing-task", true},
		{"billing", "arn:aws:iam::123456789012:role/billing/batch", true},
		{"billing", "arn:aws:iam::123456789012:role/billing-task-admin", false},
		{"billing", "arn:aws:iam::123456789012:role/host-role", false},
		{"billing", "arn:aws:iam::999999999999:role/billing-task", false},
		{"search", "arn:aws:iam::123456789012:role/billing-task", false},
		{"unlisted", "arn:aws:iam::123456789012:role/billing-task", false},
	}
	for _, tc := range tests {
		err := d.CheckIAMRole(tc.app, tc.arn)
		if (err == nil) != tc.ok {
			t.Errorf("CheckIAMRole(%s, %s) = %v, want ok=%v", tc.app, tc.arn, err, tc.ok)
		}
	}
	if err := Open().CheckIAMRole("x", "arn:aws:iam::123456789012:role/anything"); err != nil {
		t.Errorf("open: %v", err)
	}
}

// A job may only put its tasks into its own application's target groups.
func TestCheckTargetGroup(t *testing.T) {
	d := testDecider(t)
	const pre = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/"
	for _, tc := range []struct {
		app, arn string
		ok       bool
	}{
		{"billing", pre + "billing-web/0123456789abcdef", true},
		{"billing", pre + "billing-api/0123456789abcdef", true},
		{"billing", pre + "search-web/0123456789abcdef", false},
		{"billing", "arn:aws:elasticloadbalancing:us-east-1:999999999999:targetgroup/billing-web/0123456789abcdef", false},
		{"search", pre + "billing-web/0123456789abcdef", false},
		{"unlisted", pre + "billing-web/0123456789abcdef", false},
	} {
		err := d.CheckTargetGroup(tc.app, tc.arn)
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, errdefs.ErrPermissionDenied)) {
			t.Errorf("CheckTargetGroup(%s, %s) = %v, want ok=%v", tc.app, tc.arn, err, tc.ok)
		}
	}
	if err := Open().CheckTargetGroup("x", pre+"any/0123456789abcdef"); err != nil {
		t.Errorf("open: %v", err)
	}
}

func TestReservedLabels(t *testing.T) {
	d := testDecider(t)
	wide := map[string]string{"titus.isolation/host-mounts": "/"}
	if err := d.CheckReservedLabels(alice, map[string]string{"team": "x"}, wide); err == nil || !strings.Contains(err.Error(), "titus.isolation/host-mounts") {
		t.Errorf("owner set a reserved label: %v", err)
	}
	if err := d.CheckReservedLabels(alice, map[string]string{"team": "x"}); err != nil {
		t.Errorf("ordinary labels: %v", err)
	}
	if err := d.CheckReservedLabels(root, wide); err != nil {
		t.Errorf("admin: %v", err)
	}
}

func TestMayReadEnv(t *testing.T) {
	d := testDecider(t)
	got := map[string]bool{}
	for _, p := range []authn.Principal{root, sre, auditor, alice, billing2, bob, stranger, agent} {
		got[p.String()] = d.MayReadEnv(p, "billing")
	}
	want := map[string]bool{"root@example.com": true, "carol@example.com": false, "auditor@example.com": false, "alice@example.com": true,
		"dave@example.com": true, "bob@example.com": false, "eve@example.com": false, "agent:i-1": false}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("MayReadEnv (-want +got):\n%s", diff)
	}
}

func TestParseRefuses(t *testing.T) {
	for name, doc := range map[string]string{
		"unknown key":      "admin: {principals: [x]}",
		"misspelt subject": "admins: {principal: [x]}",
		"not an ARN":       "applications: {a: {iamRoles: [billing-task]}}",
		"every role":       "applications: {a: {iamRoles: ['arn:aws:iam::123456789012:role/*']}}",
		"wildcard mid-ARN": "applications: {a: {iamRoles: ['arn:aws:iam::*:role/x']}}",
		"bad app name":     "applications: {'a b': {}}",
		"tg not an ARN":    "applications: {a: {targetGroups: [web]}}",
		"every tg":         "applications: {a: {targetGroups: ['arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/*']}}",
		"tg mid wildcard":  "applications: {a: {targetGroups: ['arn:aws:elasticloadbalancing:*:123456789012:targetgroup/x']}}",
	} {
		if _, err := Parse([]byte(doc)); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%s: Parse = %v, want invalid argument", name, err)
		}
	}
}

func TestRedactEnv(t *testing.T) {
	j := &schedv1.Job{Spec: &schedv1.JobSpec{Task: &agentv1.TaskSpec{Env: map[string]string{"DB_PASSWORD": "hunter2", "MODE": "prod"}}}}
	orig := proto.Clone(j).(*schedv1.Job)
	c := proto.Clone(j).(*schedv1.Job)
	RedactEnv(c)
	if diff := cmp.Diff(map[string]string{"DB_PASSWORD": Redacted, "MODE": Redacted}, c.Spec.Task.Env); diff != "" {
		t.Errorf("redacted env (-want +got):\n%s", diff)
	}
	if !proto.Equal(j, orig) {
		t.Error("RedactEnv changed the original")
	}
}

// TestCheckImage (attack): with the hosts' own ECR credentials and their
// shared image cache, a tenant naming another application's image would
// run it. An application that lists images runs only those repositories,
// whatever tag, digest or spelling names them; one that lists none runs
// any.
func TestCheckImage(t *testing.T) {
	p, err := Parse([]byte(`
applications:
  billing:
    owners: {principals: [alice@example.com]}
    images: [123456789012.dkr.ecr.us-east-1.amazonaws.com/billing/*, docker.io/library/busybox]
  search:
    owners: {principals: [bob@example.com]}
    images: [123456789012.dkr.ecr.us-east-1.amazonaws.com/search/*]
  open:
    owners: {principals: [carol@example.com]}
`))
	if err != nil {
		t.Fatal(err)
	}
	d := New(p)
	ecr := "123456789012.dkr.ecr.us-east-1.amazonaws.com/"
	for _, c := range []struct {
		app, image string
		want       error // nil: allowed
	}{
		{"billing", ecr + "billing/web:1", nil},
		{"billing", ecr + "billing/db/migrate@sha256:" + strings.Repeat("a", 64), nil},
		{"billing", "busybox:1.36", nil},
		{"billing", "library/busybox", nil},
		{"billing", "docker.io/library/busybox:latest", nil},
		{"search", ecr + "billing/web:1", errdefs.ErrPermissionDenied},
		{"search", ecr + "billing-web:1", errdefs.ErrPermissionDenied},
		{"search", "busybox", errdefs.ErrPermissionDenied},
		{"billing", "busybox-evil", errdefs.ErrPermissionDenied},
		{"billing", ecr + "billingx/web", errdefs.ErrPermissionDenied},
		{"billing", "Not An Image", errdefs.ErrInvalidArgument},
		{"open", ecr + "billing/web:1", nil},
	} {
		err := d.CheckImage(c.app, c.image)
		if (c.want == nil) != (err == nil) || (c.want != nil && !errors.Is(err, c.want)) {
			t.Errorf("%s runs %s: %v, want %v", c.app, c.image, err, c.want)
		}
	}
	if err := Open().CheckImage("billing", "anything"); err != nil {
		t.Errorf("no policy: %v", err)
	}
	for _, bad := range []string{"*", "docker.io*", "busybox:1", "reg/a*b/*", "busybox@sha256:" + strings.Repeat("a", 64)} {
		if _, err := Parse([]byte("applications:\n  a:\n    images: [\"" + bad + "\"]\n")); err == nil || !strings.Contains(err.Error(), "applications.a.images[0]") {
			t.Errorf("images pattern %q: %v, want an error naming it", bad, err)
		}
	}
}
