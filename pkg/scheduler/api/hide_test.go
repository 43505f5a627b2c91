package api

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
)

// TestRefusalTellsNothingOfTheJob (attack): bob, owner of search, holds
// the id of alice's billing job. For every RPC that takes a job or task
// id, through the guard's interceptors as a client sees it, he gets
// exactly the answer (code and message, the id aside) he gets for a job
// that does not exist: NotFound, never a refusal naming billing. So does
// dave, whom the policy gives no role (refused at the door, whatever the
// id). The audit trail still records bob's calls on alice's job as the
// refusals they are; alice's job is untouched.
func TestRefusalTellsNothingOfTheJob(t *testing.T) {
	s := newServer(t)
	trail := &memTrail{}
	s.trail = trail
	var logBuf bytes.Buffer
	var logMu sync.Mutex
	api, bearer := serveGuarded(t, s, slog.New(slog.NewJSONHandler(lockedBuf{&logBuf, &logMu}, nil)))
	r, err := s.SubmitJob(as("alice@example.com"), &schedv1.SubmitJobRequest{Spec: spec("billing")})
	if err != nil {
		t.Fatal(err)
	}
	alices, missing := r.JobId, "01a23c16-0000-7000-8000-00000000dead"
	noApp := spec("")
	noApp.Task.Image = "registry.example/evil:1"

	rpcs := []struct {
		name string
		call func(ctx context.Context, job string) error
	}{
		{"GetJob", func(ctx context.Context, job string) error {
			_, err := api.GetJob(ctx, &schedv1.GetJobRequest{Id: job})
			return err
		}},
		{"KillJob", func(ctx context.Context, job string) error {
			_, err := api.KillJob(ctx, &schedv1.KillJobRequest{Id: job})
			return err
		}},
		{"ScaleJob", func(ctx context.Context, job string) error {
			_, err := api.ScaleJob(ctx, &schedv1.ScaleJobRequest{Id: job, Desired: 1, Max: 1})
			return err
		}},
		{"UpdateJob", func(ctx context.Context, job string) error {
			_, err := api.UpdateJob(ctx, &schedv1.UpdateJobRequest{Id: job, Spec: noApp})
			return err
		}},
		{"RolloutJob", func(ctx context.Context, job string) error {
			_, err := api.RolloutJob(ctx, &schedv1.RolloutJobRequest{Id: job, Action: schedv1.RolloutJobRequest_ACTION_UNDO})
			return err
		}},
		{"ListTasks --job", func(ctx context.Context, job string) error {
			_, err := api.ListTasks(ctx, &schedv1.ListTasksRequest{JobId: job})
			return err
		}},
		{"ListTasks --job --all", func(ctx context.Context, job string) error {
			_, err := api.ListTasks(ctx, &schedv1.ListTasksRequest{JobId: job, All: true})
			return err
		}},
		{"GetTask", func(ctx context.Context, job string) error {
			_, err := api.GetTask(ctx, &schedv1.GetTaskRequest{Id: job + ".0.0"})
			return err
		}},
		{"KillTask", func(ctx context.Context, job string) error {
			_, err := api.KillTask(ctx, &schedv1.KillTaskRequest{Id: job + ".0.0"})
			return err
		}},
		{"ExecTask", func(ctx context.Context, job string) error {
			return execOver(api, ctx, job+".0.0", "cat", "/proc/self/environ")
		}},
		{"TaskLogs", func(ctx context.Context, job string) error {
			st, err := api.TaskLogs(ctx, &schedv1.TaskLogsRequest{Id: job + ".0.0"})
			if err != nil {
				return err
			}
			for {
				if _, err := st.Recv(); err != nil {
					return err
				}
			}
		}},
		{"ListAudit --job", func(ctx context.Context, job string) error {
			_, err := api.ListAudit(ctx, &schedv1.ListAuditRequest{JobId: job})
			return err
		}},
	}
	answer := func(err error, job string) string {
		s := status.Convert(err)
		return s.Code().String() + ": " + strings.ReplaceAll(s.Message(), job, "<id>")
	}
	for _, who := range []string{"bob@example.com", "dave@example.com"} {
		for _, rpc := range rpcs {
			t.Run(who+"/"+rpc.name, func(t *testing.T) {
				got := answer(rpc.call(bearer(who), alices), alices)
				want := answer(rpc.call(bearer(who), missing), missing)
				if got != want {
					t.Errorf("on alice's job:\n  %s\nwant, as on a job that does not exist:\n  %s", got, want)
				}
				if strings.Contains(got, "billing") {
					t.Errorf("the answer names alice's application: %s", got)
				}
				wantCode := codes.NotFound.String()
				if who == "dave@example.com" || rpc.name == "ListAudit --job" {
					wantCode = codes.PermissionDenied.String() // refused at the door, whatever the id
				}
				if !strings.HasPrefix(got, wantCode+":") {
					t.Errorf("answer %s, want %s", got, wantCode)
				}
			})
		}
	}

	j, err := s.core.Job(alices)
	if err != nil || j.State.Terminal() || j.Revision != 1 || j.Spec.Service.Desired != 0 {
		t.Fatalf("alice's job after bob's calls: %+v, %v", j, err)
	}
	// Unary refusals: logged (the guard has no store here) as what they were.
	logMu.Lock()
	logged := logBuf.String()
	logMu.Unlock()
	for _, line := range strings.Split(logged, "\n") {
		if strings.Contains(line, `"principal":"bob@example.com"`) && strings.Contains(line, `"method":"KillJob"`) && strings.Contains(line, alices) {
			if !strings.Contains(line, `"code":"PermissionDenied"`) || !strings.Contains(line, "answered NotFound") || !strings.Contains(line, `"application":"billing"`) {
				t.Errorf("bob's kill of alice's job is audited as %s", line)
			}
			goto streams
		}
	}
	t.Errorf("bob's kill of alice's job is not in the audit log:\n%s", logged)
streams:
	// Streams: recorded by their handlers, likewise.
	n := 0
	for _, rec := range trail.recs {
		if rec.Principal == "bob@example.com" && rec.JobID == alices {
			n++
			if rec.Code != "PermissionDenied" || rec.Application != "billing" || !strings.Contains(rec.Message, "answered NotFound") {
				t.Errorf("bob's %s of alice's task is audited as %+v", rec.Method, rec)
			}
		}
	}
	if n != 2 {
		t.Errorf("%d audit records of bob's exec and logs on alice's task, want 2", n)
	}
}

type lockedBuf struct {
	b  *bytes.Buffer
	mu *sync.Mutex
}

func (w lockedBuf) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}
