package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
)

// TestSchedulerAuditRefusalFlood (attack): bob, an authenticated tenant,
// is refused 300 times on alice's job in a trail bounded to 40 records.
// His refusals are bounded per principal (5 stored one by one, the rest
// counted in one record of the window), so every record of alice's
// mutating calls, before and after the flood, is still in `audit ls`;
// each of bob's 300 calls is in the scheduler's structured log. Without
// the bound, 300 refusals push alice's records out of the 40.
func TestSchedulerAuditRefusalFlood(t *testing.T) {
	begin(t)
	e := newAuthzEnv(t, "--audit-max-records", "40", "--audit-refusal-burst", "5", "--audit-refusal-every", "1h", "--audit-refusal-window", "2s")
	alice, bob := e.as("alice@example.com"), e.as("bob@example.com")
	resp, err := e.api.SubmitJob(alice, &schedv1.SubmitJobRequest{Spec: tenantSpec("billing", "alice@example.com")})
	if err != nil {
		t.Fatal(err)
	}
	job := resp.JobId
	scale := func(n int) {
		for i := range n {
			if _, err := e.api.ScaleJob(alice, &schedv1.ScaleJobRequest{Id: job, Min: 0, Desired: 0, Max: uint32(2 + i%2)}); err != nil {
				t.Fatalf("alice scales her job: %v", err)
			}
		}
	}
	scale(4)
	for i := range 300 {
		var err error
		if i%2 == 0 {
			_, err = e.api.KillJob(bob, &schedv1.KillJobRequest{Id: job})
		} else {
			_, err = e.api.ScaleJob(bob, &schedv1.ScaleJobRequest{Id: job, Desired: 2, Max: 2})
		}
		if err == nil {
			t.Fatalf("bob's call %d on alice's job was allowed", i)
		}
	}
	scale(5)
	// The window (2 s) ends and its count is stored; the trail is pruned
	// after every tenth of its bound written.
	var recs []*schedv1.AuditRecord
	waitUntil(t, "bob's refusals counted in one record", 20*time.Second, func() (bool, string) {
		var trail schedv1.ListAuditResponse
		if err := e.sched.cliJSON(&trail, "--token", e.token("root@example.com"), "audit", "ls"); err != nil {
			return false, err.Error()
		}
		recs = trail.Records
		for _, r := range recs {
			if r.Count > 0 {
				return true, ""
			}
		}
		return false, "no aggregate yet"
	})
	n := map[string]int{}
	var agg *schedv1.AuditRecord
	for _, r := range recs {
		n[r.Principal+" "+r.Method+" "+r.Code]++
		if r.Count > 0 {
			agg = r
		}
	}
	if n["alice@example.com SubmitJob OK"] != 1 || n["alice@example.com ScaleJob OK"] != 9 {
		t.Errorf("alice's records after bob's flood: %v; want her submit and 9 scales", n)
	}
	bobs := 0
	for k, c := range n {
		if strings.HasPrefix(k, "bob@example.com ") {
			bobs += c
		}
	}
	if bobs != 6 || agg.Principal != "bob@example.com" || agg.Count != 295 || agg.JobId != job || agg.Method != "(refusals)" {
		t.Errorf("bob has %d records (want 5 and one count), the count: %+v; want 295 refusals on job %s", bobs, agg, job)
	}
	log, err := os.ReadFile(filepath.Join(e.sched.dir, "scheduler.log"))
	if err != nil {
		t.Fatal(err)
	}
	logged := 0
	for _, l := range strings.Split(string(log), "\n") {
		if strings.Contains(l, "msg=audit ") && strings.Contains(l, "principal=bob@example.com method=") && !strings.Contains(l, "(refusals)") {
			logged++
		}
	}
	if logged != 300 {
		t.Errorf("%d of bob's refusals in the structured log, want 300", logged)
	}
}
