package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
)

// TestSchedulerAuditSuccessFlood (attack): bob, owner of search, scales
// his own job 400 times (every call allowed) in a trail bounded to 40
// records, to push alice's records out. He holds at most 10
// (--audit-max-records-per-principal): each call of his is stored and
// evicts his own oldest, so every record of alice's survives, his last
// call is in the trail, and all his calls are in the structured log.
// (The control without the cap is TestPrincipalCapKeepsOthersRecords.)
func TestSchedulerAuditSuccessFlood(t *testing.T) {
	begin(t)
	e := newAuthzEnv(t, "--audit-max-records", "40", "--audit-max-records-per-principal", "10")
	alice, bob := e.as("alice@example.com"), e.as("bob@example.com")
	resp, err := e.api.SubmitJob(alice, &schedv1.SubmitJobRequest{Spec: tenantSpec("billing", "alice@example.com")})
	if err != nil {
		t.Fatal(err)
	}
	scale := func(who string, job string, n int, hi uint32) {
		ctx := e.as(who)
		for i := range n {
			if _, err := e.api.ScaleJob(ctx, &schedv1.ScaleJobRequest{Id: job, Desired: 0, Max: hi + uint32(i%2)}); err != nil {
				t.Fatalf("%s scales its own job: %v", who, err)
			}
		}
	}
	scale("alice@example.com", resp.JobId, 4, 2)
	own := tenantSpec("search", "bob@example.com")
	own.Task.IamRoleArn = "arn:aws:iam::123456789012:role/search-task"
	bresp, err := e.api.SubmitJob(bob, &schedv1.SubmitJobRequest{Spec: own})
	if err != nil {
		t.Fatal(err)
	}
	scale("bob@example.com", bresp.JobId, 400, 2)
	if _, err := e.api.ScaleJob(bob, &schedv1.ScaleJobRequest{Id: bresp.JobId, Desired: 0, Max: 7}); err != nil {
		t.Fatal(err)
	}
	var trail schedv1.ListAuditResponse
	if err := e.sched.cliJSON(&trail, "--token", e.token("root@example.com"), "audit", "ls"); err != nil {
		t.Fatal(err)
	}
	n := map[string]int{}
	for _, r := range trail.Records {
		n[r.Principal+" "+r.Method+" "+r.Code]++
	}
	if n["alice@example.com SubmitJob OK"] != 1 || n["alice@example.com ScaleJob OK"] != 4 {
		t.Errorf("alice's records after bob's 400 scales: %v; want her submit and 4 scales", n)
	}
	if got := n["bob@example.com ScaleJob OK"] + n["bob@example.com SubmitJob OK"]; got != 10 {
		t.Errorf("bob holds %d records, want his cap 10: %v", got, n)
	}
	if last := trail.Records[len(trail.Records)-1]; last.Principal != "bob@example.com" || last.JobId != bresp.JobId {
		t.Errorf("the trail's newest record is %+v, want bob's last scale", last)
	}
	log, err := os.ReadFile(filepath.Join(e.sched.dir, "scheduler.log"))
	if err != nil {
		t.Fatal(err)
	}
	logged := 0
	for _, l := range strings.Split(string(log), "\n") {
		if strings.Contains(l, "msg=audit ") && strings.Contains(l, "principal=bob@example.com method=ScaleJob") {
			logged++
		}
	}
	if logged != 401 {
		t.Errorf("%d of bob's scales in the structured log, want 401", logged)
	}
}
