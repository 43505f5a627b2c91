package api

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
	"github.com/titus-agent/titus-agent/pkg/authz"
)

// TestUpdateOnlyByTheOwner: bob (another application's owner) can
// neither update alice's job, nor pause, resume or undo its rollout, nor
// move it to his own application by an update; alice and an admin can
// update it, and the job's revision counts each new template.
func TestUpdateOnlyByTheOwner(t *testing.T) {
	s := newServer(t)
	r, err := s.SubmitJob(as("alice@example.com"), &schedv1.SubmitJobRequest{Spec: spec("billing")})
	if err != nil {
		t.Fatal(err)
	}
	id := r.GetJobId()
	v2 := spec("billing")
	v2.Task.Image = "registry.example/x:2"
	if _, err := s.UpdateJob(as("alice@example.com"), &schedv1.UpdateJobRequest{Id: id, Spec: v2}); err != nil {
		t.Fatalf("owner's update: %v", err)
	}

	evil := spec("search")
	evil.Task.Image = "registry.example/evil:1"
	noApp := spec("")
	noApp.Task.Image = "registry.example/evil:2"
	for name, err := range map[string]error{
		"update": func() error {
			_, err := s.UpdateJob(as("bob@example.com"), &schedv1.UpdateJobRequest{Id: id, Spec: noApp})
			return err
		}(),
		"update into his application": func() error {
			_, err := s.UpdateJob(as("bob@example.com"), &schedv1.UpdateJobRequest{Id: id, Spec: evil})
			return err
		}(),
		"undo": func() error {
			_, err := s.RolloutJob(as("bob@example.com"), &schedv1.RolloutJobRequest{Id: id, Action: schedv1.RolloutJobRequest_ACTION_UNDO})
			return err
		}(),
		"pause": func() error {
			_, err := s.RolloutJob(as("bob@example.com"), &schedv1.RolloutJobRequest{Id: id, Action: schedv1.RolloutJobRequest_ACTION_PAUSE})
			return err
		}(),
		"reader's update": func() error {
			_, err := s.UpdateJob(as("auditor@example.com"), &schedv1.UpdateJobRequest{Id: id, Spec: noApp})
			return err
		}(),
	} {
		// A reader may read the job: refused. Bob may not: it does not exist, for him.
		want := codes.NotFound
		if strings.HasPrefix(name, "reader") {
			want = codes.PermissionDenied
		}
		if status.Code(err) != want {
			t.Errorf("%s of alice's job by another principal: %v, want %s", name, err, want)
		}
	}
	j, _ := s.core.Job(id)
	if j.Revision != 2 || j.Spec.Task.Image != "registry.example/x:2" || j.Spec.Application != "billing" {
		t.Fatalf("alice's job changed: revision %d image %s application %s", j.Revision, j.Spec.Task.Image, j.Spec.Application)
	}

	// Alice herself cannot move the job to an application she does not own,
	// nor to one she does by an update (identity fields are fixed).
	if _, err := s.UpdateJob(as("alice@example.com"), &schedv1.UpdateJobRequest{Id: id, Spec: evil}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("alice's update into search: %v, want PermissionDenied", err)
	}
	if _, err := s.UpdateJob(as("root@example.com"), &schedv1.UpdateJobRequest{Id: id, Spec: evil}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("admin's update changing the application: %v, want InvalidArgument", err)
	}
	if _, err := s.RolloutJob(as("root@example.com"), &schedv1.RolloutJobRequest{Id: id, Action: schedv1.RolloutJobRequest_ACTION_UNDO}); err != nil {
		t.Fatalf("admin's undo: %v", err)
	}
	if j, _ := s.core.Job(id); j.Revision != 1 || j.Spec.Task.Image != "registry.example/x:1" {
		t.Fatalf("after undo: revision %d image %s, want 1 and x:1", j.Revision, j.Spec.Task.Image)
	}
}

// TestUpdateRefusesBadInput: field-named errors at the door.
func TestUpdateRefusesBadInput(t *testing.T) {
	s := newServer(t)
	r, err := s.SubmitJob(as("alice@example.com"), &schedv1.SubmitJobRequest{Spec: spec("billing")})
	if err != nil {
		t.Fatal(err)
	}
	bad := spec("billing")
	bad.GetService().Update = &schedv1.UpdateStrategy{MaxSurge: "0", MaxUnavailable: "0%"}
	bad.GetService().DisruptionBudget = &schedv1.DisruptionBudget{MaxUnavailable: "120%"}
	_, err = s.UpdateJob(as("alice@example.com"), &schedv1.UpdateJobRequest{Id: r.GetJobId(), Spec: bad})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("update: %v, want InvalidArgument", err)
	}
	for _, f := range []string{"service.update", "service.disruption_budget.max_unavailable"} {
		if !strings.Contains(status.Convert(err).Message(), f) {
			t.Errorf("error %q does not name %s", status.Convert(err).Message(), f)
		}
	}
	batch := &schedv1.JobSpec{OwnerEmail: "o@example.com", Application: "billing", Kind: &schedv1.JobSpec_Batch{Batch: &schedv1.BatchJob{Size: 1}}, Task: spec("billing").Task}
	b, err := s.SubmitJob(as("alice@example.com"), &schedv1.SubmitJobRequest{Spec: batch})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.UpdateJob(as("alice@example.com"), &schedv1.UpdateJobRequest{Id: b.GetJobId(), Spec: batch}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("update of a batch job: %v, want InvalidArgument", err)
	}
	if _, err := s.RolloutJob(as("alice@example.com"), &schedv1.RolloutJobRequest{Id: r.GetJobId(), Action: schedv1.RolloutJobRequest_ACTION_RESUME}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("resume without a rollout: %v, want FailedPrecondition", err)
	}
}

// TestRolloutPreviousTemplateRedacted: after an update the job carries
// its previous template (rollout.previous_task, what an undo returns to)
// with its environment: a reader, or a debugger, who is not an owner sees
// the names only, as in the current template, and the core's record
// keeps its values (the owner reads them).
func TestRolloutPreviousTemplateRedacted(t *testing.T) {
	s := newServer(t)
	r, err := s.SubmitJob(as("alice@example.com"), &schedv1.SubmitJobRequest{Spec: spec("billing")})
	if err != nil {
		t.Fatal(err)
	}
	v2 := spec("billing")
	v2.Task.Image = "registry.example/x:2"
	v2.Task.Env = map[string]string{"SECRET": "s4"}
	if _, err := s.UpdateJob(as("alice@example.com"), &schedv1.UpdateJobRequest{Id: r.JobId, Spec: v2}); err != nil {
		t.Fatal(err)
	}
	seen := func(who string, j *schedv1.Job) string {
		if j.GetRollout().GetPreviousTask() == nil {
			t.Fatalf("%s: no previous template in %v", who, j)
		}
		return j.Spec.Task.Env["SECRET"] + " " + j.Rollout.PreviousTask.Env["SECRET"]
	}
	got := map[string]string{}
	for _, who := range []string{"auditor@example.com", "alice@example.com"} {
		j, err := s.GetJob(as(who), &schedv1.GetJobRequest{Id: r.JobId})
		if err != nil {
			t.Fatal(err)
		}
		got[who+" get"] = seen(who, j)
		l, err := s.ListJobs(as(who), &schedv1.ListJobsRequest{})
		if err != nil || len(l.Jobs) != 1 {
			t.Fatalf("%s lists %v, %v", who, l, err)
		}
		got[who+" list"] = seen(who, l.Jobs[0])
	}
	red := authz.Redacted + " " + authz.Redacted
	want := map[string]string{"auditor@example.com get": red, "auditor@example.com list": red, "alice@example.com get": "s4 s3", "alice@example.com list": "s4 s3"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("env seen (-want +got):\n%s", diff)
	}
}
