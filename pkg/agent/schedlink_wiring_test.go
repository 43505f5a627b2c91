package agent

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	"github.com/titus-agent/titus-agent/pkg/runtime"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// Attached to a scheduler, the agent refuses a launch on its socket with a
// clear error, before the manager (nil here) sees it.
func TestLaunchByHandRefusedWhenScheduled(t *testing.T) {
	s := &Server{Scheduler: "sched.example:7100"}
	_, err := s.LaunchTask(context.Background(), &agentv1.LaunchTaskRequest{Spec: &agentv1.TaskSpec{Id: "hand", OwnerEmail: "a@example.com", Image: "img"}})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "sched.example:7100") || !strings.Contains(err.Error(), "job submit") {
		t.Fatalf("launch by hand: %v, want FailedPrecondition naming the scheduler and what to do", err)
	}
}

// A task the scheduler did not launch, killed by it, ends KilledByScheduler
// (unknown to the scheduler), not KilledByUser; a job's task keeps
// KilledByUser.
func TestSchedulerKillReasons(t *testing.T) {
	store, err := OpenStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rt := &fakeRuntime{exits: map[string]chan runtime.ExitStatus{"hand": make(chan runtime.ExitStatus, 1), "job": make(chan runtime.ExitStatus, 1), "orphan": make(chan runtime.ExitStatus, 1)}}
	m := NewManager(ctx, ManagerConfig{Store: store, Runtime: rt, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	for _, tc := range []struct {
		id         string
		labels     map[string]string
		reason     task.Reason // as sent by the scheduler
		msg        string
		wantReason task.Reason
		wantMsg    string
	}{
		{"hand", nil, "", "", task.ReasonKilledByScheduler, "unknown to the scheduler: not launched by it; exit code 143"},
		{"job", map[string]string{task.LabelJobID: "j1"}, "", "", task.ReasonKilledByUser, "exit code 143"},
		// A job's task the scheduler no longer knows: its reason, not the user's.
		{"orphan", map[string]string{task.LabelJobID: "j0"}, task.ReasonKilledByScheduler, "unknown to the scheduler", task.ReasonKilledByScheduler, "unknown to the scheduler; exit code 143"},
	} {
		t.Run(tc.id, func(t *testing.T) {
			if _, err := m.Launch(ctx, &task.Spec{ID: tc.id, OwnerEmail: "a@example.com", Image: "img", Labels: tc.labels}); err != nil {
				t.Fatal(err)
			}
			waitFor(t, func() bool { v, _ := m.Get(tc.id); return v.Status.State == task.Running })
			if err := (schedTasks{m}).Kill(ctx, tc.id, tc.reason, tc.msg); err != nil {
				t.Fatal(err)
			}
			waitFor(t, func() bool { v, _ := m.Get(tc.id); return v.Status.State == task.Killing })
			rt.exits[tc.id] <- runtime.ExitStatus{Code: 143}
			waitFor(t, func() bool { v, _ := m.Get(tc.id); return v.Status.State == task.Killed })
			v, _ := m.Get(tc.id)
			if v.Status.Reason != tc.wantReason || v.Status.Message != tc.wantMsg {
				t.Errorf("%s = %s (%s), want %s (%s)", tc.id, v.Status.Reason, v.Status.Message, tc.wantReason, tc.wantMsg)
			}
		})
	}
	if err := (schedTasks{m}).Kill(ctx, "nobody", "", ""); err != nil {
		t.Errorf("kill of an unknown task: %v, want nil (nothing to do)", err)
	}
}
