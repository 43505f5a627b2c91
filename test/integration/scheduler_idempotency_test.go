package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
)

// TestSubmitIdempotencyKeyAcrossTenants: against a scheduler process with
// a policy and bearer tokens. A submit sent twice with the same key (its
// first answer as good as lost) makes one job; the same key with another
// spec is refused. Tenant B sending A's key gets a job of its own (or, with
// A's spec, PermissionDenied), never A's job or its id, and A's retry
// still finds A's job. The CLI resends its key: two submits with one
// --idempotency-key print one job.
func TestSubmitIdempotencyKeyAcrossTenants(t *testing.T) {
	begin(t)
	e := newAuthzEnv(t)
	alice, bob := e.as("alice@example.com"), e.as("bob@example.com")
	const key = "deploy-2026-12-03-1"
	spec := tenantSpec("billing", "alice@example.com")

	first, err := e.api.SubmitJob(alice, &schedv1.SubmitJobRequest{Spec: spec, IdempotencyKey: key})
	if err != nil {
		t.Fatalf("alice submit: %v", err)
	}
	again, err := e.api.SubmitJob(alice, &schedv1.SubmitJobRequest{Spec: spec, IdempotencyKey: key})
	if err != nil || again.GetJobId() != first.GetJobId() {
		t.Fatalf("alice's retry: %v %v, want job %s", again, err, first.GetJobId())
	}
	if n := e.jobKeys(); n != 1 {
		t.Fatalf("%d job records after a submit and its retry, want 1", n)
	}
	changed := tenantSpec("billing", "alice@example.com")
	changed.Task.Env["MODE"] = "canary"
	_, err = e.api.SubmitJob(alice, &schedv1.SubmitJobRequest{Spec: changed, IdempotencyKey: key})
	wantCode(t, "alice's key with another spec", err, codes.AlreadyExists, "idempotency_key")

	// Tenant B replays A's key: with A's spec it is refused for the role
	// and application as any such submit is; with its own spec it gets its
	// own job. Neither answer names A's job.
	_, err = e.api.SubmitJob(bob, &schedv1.SubmitJobRequest{Spec: spec, IdempotencyKey: key})
	wantCode(t, "bob with alice's key and spec", err, codes.PermissionDenied, "")
	if strings.Contains(status.Convert(err).Message(), first.GetJobId()) {
		t.Errorf("bob's refusal names alice's job: %v", err)
	}
	own := tenantSpec("search", "bob@example.com")
	bobs, err := e.api.SubmitJob(bob, &schedv1.SubmitJobRequest{Spec: own, IdempotencyKey: key})
	if err != nil || bobs.GetJobId() == first.GetJobId() {
		t.Fatalf("bob's own submit with alice's key: %v %v, want a job of his own", bobs, err)
	}
	if got, err := e.api.GetJob(bob, &schedv1.GetJobRequest{Id: first.GetJobId()}); err == nil {
		t.Errorf("bob reads alice's job: %v", got)
	}
	if n := e.jobKeys(); n != 2 {
		t.Fatalf("%d job records, want alice's and bob's", n)
	}
	if again, err := e.api.SubmitJob(alice, &schedv1.SubmitJobRequest{Spec: tenantSpec("billing", "alice@example.com"), IdempotencyKey: key}); err != nil || again.GetJobId() != first.GetJobId() {
		t.Fatalf("alice's retry after bob's: %v %v, want job %s", again, err, first.GetJobId())
	}

	// The CLI: one key, two invocations, one job.
	b, err := protojson.Marshal(tenantSpec("billing", "alice@example.com"))
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(e.sched.dir, "job.json")
	if err := os.WriteFile(f, b, 0o644); err != nil {
		t.Fatal(err)
	}
	tok := e.token("alice@example.com")
	var ids []string
	for range 2 {
		out, err := e.sched.cli("--token", tok, "job", "submit", "-f", f, "--idempotency-key", "cli-key-1")
		if err != nil {
			t.Fatalf("cli submit: %v\n%s", err, out)
		}
		ids = append(ids, strings.TrimSpace(out))
	}
	if ids[0] != ids[1] || ids[0] == "" {
		t.Errorf("two CLI submits with one key printed %q", ids)
	}
	if n := e.jobKeys(); n != 3 {
		t.Errorf("%d job records, want 3", n)
	}
}
