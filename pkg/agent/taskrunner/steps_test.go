package taskrunner

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/titus-agent/titus-agent/pkg/runtime"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// tickClock is a clock that moves 10ms each time it is read.
type tickClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *tickClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(10 * time.Millisecond)
	return c.now
}

// stepHook reports runtime steps within itself, as the container hook does.
type stepHook struct {
	fakeHook
	steps []task.Step
}

func (h *stepHook) Prestart(ctx context.Context, req *PrestartRequest, resp *PrestartResponse) error {
	resp.Steps = append(resp.Steps, h.steps...)
	return h.fakeHook.Prestart(ctx, req, resp)
}

type stepView struct {
	State string
	Steps []task.Step
}

func stepsOf(v task.View) []stepView {
	var out []stepView
	for _, tr := range v.Status.Transitions {
		out = append(out, stepView{tr.State.String(), tr.Steps})
	}
	return out
}

func TestTransitionsRecordLaunchSteps(t *testing.T) {
	t0 := time.Date(2026, 12, 3, 6, 0, 0, 0, time.UTC)
	ms := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Millisecond) }
	step := func(name string, start, took int, failed bool) task.Step {
		return task.Step{Name: name, Start: ms(start), Took: time.Duration(took) * time.Millisecond, Failed: failed}
	}
	// The container hook's runtime steps (their own clock: the runtime's).
	inner := []task.Step{step("container.create", 41, 2, false), step("task.create", 43, 3, false), step("task.start", 46, 1, false)}
	tests := []struct {
		name    string
		diskErr error
		want    []stepView
	}{{
		name: "launch",
		// Clock reads: 10 Preparing, 20+30 image, 40+50 disk, 60
		// Starting, 70+80 container, 90 Running.
		want: []stepView{
			{"Preparing", nil},
			{"Starting", []task.Step{step("image", 20, 10, false), step("disk", 40, 10, false)}},
			{"Running", append(inner, step("container", 70, 10, false))},
		},
	}, {
		name:    "a failed hook",
		diskErr: &HookError{Hook: "disk", Reason: task.ReasonDiskSetupFailed, Err: errors.New("no space")},
		want: []stepView{
			{"Preparing", nil},
			{"Failed", []task.Step{step("image", 20, 10, false), step("disk", 40, 10, true)}},
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := &recorder{}
			clock := &tickClock{now: t0}
			hooks := [][]PrestartHook{
				{&fakeHook{name: "image", rec: rec}},
				{&fakeHook{name: "disk", rec: rec, err: tt.diskErr}},
				{&stepHook{fakeHook: fakeHook{name: "container", rec: rec, pid: 42}, steps: inner}},
			}
			w := &fakeWaiter{rec: rec, exit: make(chan runtime.ExitStatus, 1)}
			var mu sync.Mutex
			observed := map[string]time.Duration{}
			spec := task.Spec{ID: "t1", Image: "busybox"}
			spec.Normalize()
			r := New(Config{Stages: hooks, Runtime: w, Store: &fakeStore{}, Logger: quiet, Now: clock.Now,
				Observe: func(name string, d time.Duration) { mu.Lock(); observed[name] = d; mu.Unlock() }}, &Record{Spec: spec})
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go r.Run(ctx)
			deadline := time.Now().Add(10 * time.Second)
			for {
				st := r.View().Status.State
				if st == task.Running || st.Terminal() {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("task stuck in %s", st)
				}
				time.Sleep(time.Millisecond)
			}
			if tt.diskErr == nil {
				cancel() // agent shutdown: the task is left running
			}
			waitDone(t, r)
			got := stepsOf(r.View())
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("transitions' steps (-want +got):\n%s", diff)
			}
			// Successful steps are observed (metrics); failed ones not.
			mu.Lock()
			defer mu.Unlock()
			for _, tr := range tt.want {
				for _, s := range tr.Steps {
					if _, ok := observed[s.Name]; ok == s.Failed {
						t.Errorf("step %s (failed %v) observed: %v", s.Name, s.Failed, ok)
					}
				}
			}
		})
	}
}
