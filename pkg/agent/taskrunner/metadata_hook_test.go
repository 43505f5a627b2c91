package taskrunner

import (
	"context"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/titus-agent/titus-agent/pkg/task"
)

type fakeMetadata struct{ rec *recorder }

func (f *fakeMetadata) Start(ctx context.Context, spec *task.Spec, n *task.NetworkAttachment) ([]string, error) {
	f.rec.add("start " + spec.ID + " " + n.NetNSPath)
	return []string{"169.254.169.254:80"}, nil
}

func (f *fakeMetadata) Stop(ctx context.Context, id string) error {
	f.rec.add("stop " + id)
	return nil
}

func TestMetadataHook(t *testing.T) {
	rec := &recorder{}
	h := &MetadataHook{Server: &fakeMetadata{rec: rec}}
	spec := &task.Spec{ID: "t1"}
	ctx := context.Background()

	// No netns (network provider none): nothing to do.
	resp := &PrestartResponse{}
	if err := h.Prestart(ctx, &PrestartRequest{Spec: spec, Resources: &Resources{}}, resp); err != nil || resp.Metadata != nil {
		t.Fatalf("without a netns: %v %+v", err, resp.Metadata)
	}
	res := &Resources{Network: &task.NetworkAttachment{NetNSPath: "/ns/t1"}}
	if err := h.Prestart(ctx, &PrestartRequest{Spec: spec, Resources: res}, resp); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(&MetadataInfo{Addresses: []string{"169.254.169.254:80"}}, resp.Metadata); diff != "" {
		t.Fatalf("metadata (-want +got):\n%s", diff)
	}
	// After an agent restart the listener is opened again.
	if err := h.Restore(ctx, &StopRequest{Spec: spec, Resources: res}); err != nil {
		t.Fatal(err)
	}
	h.Stop(ctx, &StopRequest{Spec: spec, Resources: res})
	h.Stop(ctx, &StopRequest{Spec: spec, Resources: res})
	if diff := cmp.Diff([]string{"start t1 /ns/t1", "start t1 /ns/t1", "stop t1", "stop t1"}, rec.get()); diff != "" {
		t.Fatalf("ops (-want +got):\n%s", diff)
	}
}
