package authz

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
	"github.com/titus-agent/titus-agent/pkg/authn"
)

// Who may exec into a job's tasks (task.debug) and read their logs
// (task.logs): admins, operators, the application's owners and debuggers;
// never another tenant, a reader (logs may hold what env redaction hides),
// an agent or a principal without a role.
func TestTaskDebug(t *testing.T) {
	for _, m := range []struct {
		method string
		action Action
	}{{schedv1.Scheduler_ExecTask_FullMethodName, TaskDebug}, {schedv1.Scheduler_TaskLogs_FullMethodName, TaskLogs}} {
		t.Run(string(m.action), func(t *testing.T) { testDebugAction(t, m.method, m.action) })
	}
}

func testDebugAction(t *testing.T, method string, action Action) {
	p, err := Parse([]byte(policyYAML + `
  web:
    owners: {principals: [wendy@example.com]}
    debuggers: {principals: [carol@example.com], groups: [oncall-web]}
`))
	if err != nil {
		t.Fatal(err)
	}
	d := New(p)
	type row struct{ who, app, gate, allow string }
	var got []row
	for _, tc := range []struct {
		p   authn.Principal
		app string
	}{
		{authn.Principal{Name: "root@example.com"}, "billing"},
		{authn.Principal{Name: "op@example.com", Groups: []string{"sre"}}, "billing"},
		{authn.Principal{Name: "alice@example.com"}, "billing"},
		{authn.Principal{Name: "bob@example.com"}, "billing"},
		{authn.Principal{Name: "carol@example.com"}, "web"},
		{authn.Principal{Name: "carol@example.com"}, "billing"},
		{authn.Principal{Name: "pager@example.com", Groups: []string{"oncall-web"}}, "web"},
		{authn.Principal{Name: "auditor@example.com"}, "billing"},
		{authn.Principal{Name: "nobody@example.com"}, "billing"},
		{authn.Principal{InstanceID: "host-1", Name: "host-1"}, "billing"},
	} {
		r := row{who: tc.p.String(), app: tc.app, gate: "ok", allow: "ok"}
		if _, err := d.Gate(tc.p, method); err != nil {
			r.gate = "denied"
		}
		if err := d.Allow(tc.p, action, tc.app); err != nil {
			r.allow = "denied"
		}
		got = append(got, r)
	}
	want := []row{
		{"root@example.com", "billing", "ok", "ok"},
		{"op@example.com", "billing", "ok", "ok"},
		{"alice@example.com", "billing", "ok", "ok"},
		{"bob@example.com", "billing", "ok", "denied"},
		{"carol@example.com", "web", "ok", "ok"},
		{"carol@example.com", "billing", "ok", "denied"},
		{"pager@example.com", "web", "ok", "ok"},
		{"auditor@example.com", "billing", "denied", "denied"},
		{"nobody@example.com", "billing", "denied", "denied"},
		{"agent:host-1", "billing", "denied", "denied"},
	}
	if diff := cmp.Diff(want, got, cmp.AllowUnexported(row{})); diff != "" {
		t.Errorf("%s decisions (-want +got):\n%s", action, diff)
	}
	// A debugger debugs and reads, nothing else.
	carol := authn.Principal{Name: "carol@example.com"}
	if err := d.Allow(carol, TaskKill, "web"); err == nil {
		t.Error("a debugger may kill tasks")
	}
	if err := d.Allow(carol, TaskRead, "web"); err != nil {
		t.Errorf("a debugger may not read the tasks it debugs: %v", err)
	}
	if d.MayReadEnv(carol, "web") {
		t.Error("a debugger reads the job's env values")
	}
}
