package taskrunner

import (
	"context"
	"encoding/json"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/titus-agent/titus-agent/pkg/runtime"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// fakeImageRuntime is the runtime as the image, disk and container hooks
// see it; it records which image each call got. Its tag resolves to tagged.
type fakeImageRuntime struct {
	rec    *recorder
	tagged string // digest the tag points at now
}

func (f *fakeImageRuntime) Pull(_ context.Context, ref string) (runtime.Image, error) {
	f.rec.add("pull " + ref)
	if _, dgst, ok := strings.Cut(ref, "@"); ok {
		return runtime.Image{Name: ref, Digest: dgst}, nil
	}
	return runtime.Image{Name: ref, Digest: f.tagged}, nil
}

func (f *fakeImageRuntime) ImageView(_ context.Context, taskID string, img runtime.Image) ([]string, error) {
	f.rec.add("view " + taskID + " " + img.Digest)
	return []string{"/l/1"}, nil
}

func (f *fakeImageRuntime) RemoveView(_ context.Context, taskID string) error { return nil }

func (f *fakeImageRuntime) Create(_ context.Context, cs runtime.ContainerSpec) error {
	f.rec.add("create " + cs.ID + " " + cs.Image.Digest)
	return nil
}

func (f *fakeImageRuntime) StartAfter(_ context.Context, id string, ready func() error) (uint32, error) {
	if ready != nil {
		if err := ready(); err != nil {
			return 0, err
		}
	}
	return 42, nil
}

func (f *fakeImageRuntime) Kill(_ context.Context, id string, sig syscall.Signal) error { return nil }

func (f *fakeImageRuntime) Delete(_ context.Context, id string) error { return nil }

// The image is resolved once per launch, by the image hook; the disk and
// container hooks use that digest, and a resumed launch the recorded one
// even when the tag has moved since.
func TestImageResolvedOncePerLaunch(t *testing.T) {
	d1, d2 := "sha256:"+strings.Repeat("1", 64), "sha256:"+strings.Repeat("2", 64)
	recorded := &runtime.Image{Name: "reg.example:5000/app:v1", Digest: d1}
	for _, tc := range []struct {
		name    string
		prev    *Resources // nil: a new launch; else a launch cut short with these
		wantOps []string
	}{
		{
			name:    "new launch",
			wantOps: []string{"pull reg.example:5000/app:v1", "view t1 " + d1, "create t1 " + d1},
		},
		{
			name:    "resumed launch, tag moved meanwhile",
			prev:    &Resources{Image: recorded},
			wantOps: []string{"pull reg.example:5000/app@" + d1, "view t1 " + d1, "create t1 " + d1},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := &recorder{}
			rt := &fakeImageRuntime{rec: rec, tagged: d1}
			hooks := [][]PrestartHook{
				{&ImageHook{Puller: rt}},
				{&DiskHook{Disks: &fakeDisks{}, Images: rt}},
				{&ContainerHook{Runtime: rt}},
			}
			w := &fakeWaiter{rec: rec, exit: make(chan runtime.ExitStatus, 1)}
			w.exit <- runtime.ExitStatus{}
			spec := task.Spec{ID: "t1", Image: "reg.example:5000/app:v1", Resources: task.Resources{DiskMiB: 64}}
			spec.Normalize()
			st := &fakeStore{}
			var r *Runner
			if tc.prev == nil {
				r = New(Config{Stages: hooks, Runtime: w, Store: st, Logger: quiet}, &Record{Spec: spec})
				go r.Run(context.Background())
			} else {
				rt.tagged = d2 // the tag moved while the agent was away
				prev := &Record{Spec: spec, Resources: *tc.prev}
				prev.Status.Advance(task.Accepted, "", "", time.Now())
				prev.Status.Advance(task.Preparing, "", "", time.Now())
				r = New(Config{Stages: hooks, Runtime: w, Store: st, Logger: quiet}, prev)
				go r.Restore(context.Background(), nil)
			}
			waitDone(t, r)
			if diff := cmp.Diff(tc.wantOps, rec.get()); diff != "" {
				t.Errorf("runtime calls (-want +got):\n%s", diff)
			}
			if got := st.last.Resources.Image; got == nil || got.Digest != d1 {
				t.Errorf("recorded image %+v, want digest %s", got, d1)
			}
		})
	}
}

// A record written before images were recorded resolved (its resources
// held the reference as "image") still loads; its launch, if resumed,
// resolves the image again.
func TestRecordWithTheOldImageFieldLoads(t *testing.T) {
	var rec Record
	old := `{"spec":{"id":"t1","image":"reg/app:v1"},"resources":{"image":"reg/app:v1","container":true,"pid":42}}`
	if err := json.Unmarshal([]byte(old), &rec); err != nil {
		t.Fatalf("old record: %v", err)
	}
	if rec.Resources.Image != nil || !rec.Resources.Container || rec.Resources.Pid != 42 {
		t.Errorf("resources = %+v", rec.Resources)
	}
}
