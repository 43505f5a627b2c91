package taskrunner

import (
	"context"
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/titus-agent/titus-agent/pkg/task"
)

type fakeShipper struct {
	rec  *recorder
	fail error
}

func (f *fakeShipper) Track(spec *task.Spec) error {
	f.rec.add("track " + spec.ID)
	return f.fail
}

func (f *fakeShipper) Finish(id string) error {
	f.rec.add("finish " + id)
	return f.fail
}

func TestLogShipHook(t *testing.T) {
	rec := &recorder{}
	fs := &fakeShipper{rec: rec}
	h := &LogShipHook{Shipper: fs}
	spec := &task.Spec{ID: "t1"}
	ctx := context.Background()
	if err := h.Prestart(ctx, &PrestartRequest{Spec: spec, Resources: &Resources{}}, &PrestartResponse{}); err != nil {
		t.Fatal(err)
	}
	for range 2 { // idempotent teardown
		if err := h.Stop(ctx, &StopRequest{Spec: spec, Resources: &Resources{}}); err != nil {
			t.Fatal(err)
		}
	}
	if diff := cmp.Diff([]string{"track t1", "finish t1", "finish t1"}, rec.get()); diff != "" {
		t.Errorf("calls (-want +got):\n%s", diff)
	}
	fs.fail = errors.New("disk full")
	var he *HookError
	if err := h.Prestart(ctx, &PrestartRequest{Spec: spec, Resources: &Resources{}}, &PrestartResponse{}); !errors.As(err, &he) || he.Reason != task.ReasonPlatformError {
		t.Errorf("Prestart error = %v, want a platform HookError", err)
	}
	if err := h.Stop(ctx, &StopRequest{Spec: spec, Resources: &Resources{}}); err == nil {
		t.Error("Stop hid the shipper's error (teardown must retry)")
	}
}
