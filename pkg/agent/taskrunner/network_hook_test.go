package taskrunner

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/titus-agent/titus-agent/pkg/task"
	"github.com/titus-agent/titus-agent/pkg/vpc"
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

// TestNetworkHookNoCapacity: a host out of IPs or ENIs refuses the task
// with a reason of its own, so the scheduler places it again at once; any
// other setup failure stays NetworkSetupFailed.
func TestNetworkHookNoCapacity(t *testing.T) {
	tests := []struct {
		err  error
		want task.Reason
	}{
		{fmt.Errorf("allocate address: %w: instance i-1 has no room", vpc.ErrNoCapacity), task.ReasonNoNetworkCapacity},
		{fmt.Errorf("grow pool: create ENI: no free device index: %w", vpc.ErrNoCapacity), task.ReasonNoNetworkCapacity},
		{errors.New("grow pool: RequestLimitExceeded"), task.ReasonNetworkSetupFailed},
		{fmt.Errorf("%w: %w: none of subnets [subnet-0b] is in az-1", vpc.ErrInvalidNetworkRequest, vpc.ErrSubnetNotInZone), task.ReasonSubnetNotInZone},
		{fmt.Errorf("%w: no security groups and no default", vpc.ErrInvalidNetworkRequest), task.ReasonNetworkSetupFailed},
	}
	for _, tt := range tests {
		h := &NetworkHook{Network: &fakeNetwork{rec: &recorder{}, err: tt.err}}
		err := h.Prestart(context.Background(), &PrestartRequest{Spec: &task.Spec{ID: "t1"}, Resources: &Resources{}}, &PrestartResponse{})
		var he *HookError
		if !errors.As(err, &he) || he.Reason != tt.want {
			t.Errorf("Prestart with %v: err = %v, want reason %s", tt.err, err, tt.want)
		}
	}
}
