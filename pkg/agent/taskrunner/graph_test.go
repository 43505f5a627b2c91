package taskrunner

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/titus-agent/titus-agent/pkg/runtime"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// gateHook starts (noted), waits until its gate opens, then ends (noted).
type gateHook struct {
	name string
	rec  *recorder
	gate chan struct{}
	err  error
	env  bool
}

func (h *gateHook) Name() string { return h.name }
func (h *gateHook) Prestart(ctx context.Context, req *PrestartRequest, resp *PrestartResponse) error {
	h.rec.add("start " + h.name)
	if h.gate != nil {
		<-h.gate
	}
	h.rec.add("end " + h.name)
	if h.env {
		resp.Env = map[string]string{h.name: "1"}
	}
	return h.err
}

// A hook that names its needs starts when they are done, not after the
// whole earlier stage: the disk (needs the image) is made while the
// network is still being set up; one without needs waits for every
// earlier stage; the container for everything.
func TestHooksStartWhenWhatTheyNeedIsDone(t *testing.T) {
	rec := &recorder{}
	network := &gateHook{name: "network", rec: rec, gate: make(chan struct{}), env: true}
	// disk ends, then lets the network end: only possible if the disk
	// did not wait for the network.
	disk := &diskThenOpen{gateHook: gateHook{name: "disk", rec: rec, env: true}, open: network.gate}
	hooks := [][]PrestartHook{
		{&gateHook{name: "image", rec: rec, env: true}, network},
		{disk, &gateHook{name: "metadata", rec: rec}, &gateHook{name: "barrier", rec: rec}},
		{&fakeHook{name: "container", rec: rec, pid: 42}},
	}
	w := &fakeWaiter{rec: &recorder{}, exit: make(chan runtime.ExitStatus, 1)}
	spec := task.Spec{ID: "t1"}
	spec.Normalize()
	r := New(Config{Stages: hooks, Needs: map[string][]string{"disk": {"image"}, "metadata": {"network"}, "container": {"image"}},
		Runtime: w, Store: &fakeStore{}, Logger: quiet}, &Record{Spec: spec})
	go r.Run(context.Background())
	waitState(t, r, task.Running)
	ops := rec.get()
	at := map[string]int{}
	for i, op := range ops {
		at[op] = i
	}
	for _, o := range []struct{ before, after string }{
		{"end image", "start disk"},
		{"end disk", "end network"},       // the disk did not wait for the network
		{"end network", "start metadata"}, // metadata needs the network
		{"end network", "start barrier"},  // no needs: every earlier stage
		{"end image", "start barrier"},
		{"end disk", "prestart container"}, // the last stage waits for everything
		{"end metadata", "prestart container"},
		{"end barrier", "prestart container"},
	} {
		b, okb := at[o.before]
		a, oka := at[o.after]
		if !okb || !oka || b > a {
			t.Errorf("%q should come before %q: %v", o.before, o.after, ops)
		}
	}
	if env := r.View(); len(env.Status.Transitions) == 0 {
		t.Fatal("no transitions")
	}
	w.exit <- runtime.ExitStatus{}
	waitDone(t, r)
}

type diskThenOpen struct {
	gateHook
	open chan struct{}
}

func (h *diskThenOpen) Prestart(ctx context.Context, req *PrestartRequest, resp *PrestartResponse) error {
	if req.Resources.Env["image"] != "1" {
		return fmt.Errorf("disk ran without the image's resources: %v", req.Resources.Env)
	}
	err := h.gateHook.Prestart(ctx, req, resp)
	close(h.open)
	return err
}

// A failed hook stops the launch: what needs it never runs, nor does a
// hook that waited for the failed stage, nor the container; what the
// failed launch made is torn down.
func TestAFailedHookStartsNothingThatWaits(t *testing.T) {
	rec := &recorder{}
	hooks := [][]PrestartHook{
		{&gateHook{name: "image", rec: rec, err: errors.New("pull: 404")}, &gateHook{name: "network", rec: rec, env: true}},
		{&gateHook{name: "disk", rec: rec}, &gateHook{name: "barrier", rec: rec}},
		{&fakeHook{name: "container", rec: rec, pid: 42}},
	}
	w := &fakeWaiter{rec: &recorder{}, exit: make(chan runtime.ExitStatus, 1)}
	spec := task.Spec{ID: "t1"}
	spec.Normalize()
	st := &journalStore{}
	r := New(Config{Stages: hooks, Needs: map[string][]string{"disk": {"image"}}, Runtime: w, Store: st, Logger: quiet}, &Record{Spec: spec})
	go r.Run(context.Background())
	waitDone(t, r)
	for _, op := range rec.get() {
		switch op {
		case "start disk", "start barrier", "prestart container":
			t.Errorf("%s after the image failed: %v", op, rec.get())
		}
	}
	if v := r.View(); v.Status.State != task.Failed {
		t.Fatalf("state %s, want Failed", v.Status.State)
	}
	// The network the failed launch made was recorded before teardown.
	st.mu.Lock()
	lines := fmt.Sprint(st.lines)
	st.mu.Unlock()
	if want := "Preparing env=[network]"; !strings.Contains(lines, want) {
		t.Errorf("writes %s lack %q", lines, want)
	}
}

// slowStartingStore holds the Starting write until released, and notes
// each write; it refuses Starting when told to (a full state disk).
type slowStartingStore struct {
	rec     *recorder
	release chan struct{}
	refuse  bool
}

func (s *slowStartingStore) Save(rec *Record) error {
	if rec.Status.State == task.Starting {
		<-s.release
		if s.refuse {
			return errors.New("no space left on device")
		}
	}
	s.rec.add("saved " + rec.Status.State.String())
	return nil
}

// The container is created while its record (Starting) is written, and
// its process starts only once the record is on disk; a record that
// cannot be written leaves the container created, never started, and
// fails the launch as the platform's fault.
func TestContainerCreatedWhileTheRecordIsWrittenStartedAfter(t *testing.T) {
	for _, refuse := range []bool{false, true} {
		t.Run(fmt.Sprintf("refused=%v", refuse), func(t *testing.T) {
			rec := &recorder{}
			st := &slowStartingStore{rec: rec, release: make(chan struct{}), refuse: refuse}
			rt := &fakeContainers{rec: rec}
			// The write is released once the container is created:
			// create did not wait for it.
			created := &releaseOnCreate{fakeContainers: rt, release: st.release}
			hooks := [][]PrestartHook{{&gateHook{name: "image", rec: rec, env: true}}, {&ContainerHook{Runtime: created}}}
			w := &fakeWaiter{rec: &recorder{}, exit: make(chan runtime.ExitStatus, 1)}
			spec := task.Spec{ID: "t1"}
			spec.Normalize()
			r := New(Config{Stages: hooks, Runtime: w, Store: st, Logger: quiet}, &Record{Spec: spec})
			go r.Run(context.Background())
			if refuse {
				waitDone(t, r)
				want := []string{"saved Preparing", "start image", "end image", "create t1", "not started t1"}
				if diff := cmp.Diff(want, rec.get()[:len(want)]); diff != "" {
					t.Errorf("order (-want +got):\n%s", diff)
				}
				if v := r.View().Status; v.State != task.Failed || v.Reason != task.ReasonPlatformError {
					t.Errorf("got %s/%s, want Failed/PlatformError", v.State, v.Reason)
				}
				return
			}
			waitState(t, r, task.Running)
			want := []string{"saved Preparing", "start image", "end image", "create t1", "saved Starting", "start t1", "saved Running"}
			if diff := cmp.Diff(want, rec.get()); diff != "" {
				t.Errorf("order (-want +got):\n%s", diff)
			}
			w.exit <- runtime.ExitStatus{}
			waitDone(t, r)
		})
	}
}

type releaseOnCreate struct {
	*fakeContainers
	release chan struct{}
}

func (f *releaseOnCreate) Create(ctx context.Context, cs runtime.ContainerSpec) error {
	err := f.fakeContainers.Create(ctx, cs)
	close(f.release)
	return err
}
