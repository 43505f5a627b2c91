package taskrunner

import (
	"context"
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/titus-agent/titus-agent/pkg/task"
)

type fakeNetwork struct {
	rec *recorder
	err error
}

func (f *fakeNetwork) Setup(ctx context.Context, id string, req task.NetworkRequest) (*task.NetworkAttachment, error) {
	f.rec.add("setup " + id)
	return &task.NetworkAttachment{NetNSPath: "/run/ns/" + id, IPv4: "198.18.0.9"}, f.err
}

func (f *fakeNetwork) Teardown(ctx context.Context, id string) error {
	f.rec.add("teardown " + id)
	return nil
}

func TestNetworkHook(t *testing.T) {
	rec := &recorder{}
	h := &NetworkHook{Network: &fakeNetwork{rec: rec}}
	spec := &task.Spec{ID: "t1"}
	resp := &PrestartResponse{}
	if err := h.Prestart(context.Background(), &PrestartRequest{Spec: spec, Resources: &Resources{}}, resp); err != nil {
		t.Fatal(err)
	}
	if resp.Network == nil || resp.Network.IPv4 != "198.18.0.9" {
		t.Fatalf("attachment = %+v", resp.Network)
	}
	// Teardown is safe twice.
	for i := 0; i < 2; i++ {
		if err := h.Stop(context.Background(), &StopRequest{Spec: spec, Resources: &Resources{}}); err != nil {
			t.Fatal(err)
		}
	}
	if diff := cmp.Diff([]string{"setup t1", "teardown t1", "teardown t1"}, rec.get()); diff != "" {
		t.Fatalf("ops (-want +got):\n%s", diff)
	}

	// A failed setup still hands back what exists, so teardown finds it.
	h = &NetworkHook{Network: &fakeNetwork{rec: rec, err: errors.New("no capacity")}}
	resp = &PrestartResponse{}
	err := h.Prestart(context.Background(), &PrestartRequest{Spec: spec, Resources: &Resources{}}, resp)
	var he *HookError
	if !errors.As(err, &he) || he.Reason != task.ReasonNetworkSetupFailed || resp.Network == nil {
		t.Fatalf("err = %v, resp = %+v", err, resp.Network)
	}
}
