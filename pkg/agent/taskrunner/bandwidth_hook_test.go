package taskrunner

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/titus-agent/titus-agent/pkg/task"
)

type fakeShaper struct {
	calls []string
	err   error
}

func (f *fakeShaper) Limit(_ context.Context, ns, hostVeth string, mbps int64) error {
	f.calls = append(f.calls, fmt.Sprintf("limit %s %q %d", ns, hostVeth, mbps))
	return f.err
}

func (f *fakeShaper) Clear(_ context.Context, ns, hostVeth string) error {
	f.calls = append(f.calls, fmt.Sprintf("clear %s %q", ns, hostVeth))
	return nil
}

func TestBandwidthHook(t *testing.T) {
	net := &task.NetworkAttachment{NetNSPath: "/run/netns/t1"}
	for _, tc := range []struct {
		name    string
		mbps    int64
		net     *task.NetworkAttachment
		err     error
		want    []string
		wantErr bool
	}{
		{name: "limited", mbps: 100, net: net, want: []string{`limit /run/netns/t1 "" 100`, `clear /run/netns/t1 ""`}},
		{name: "no limit asked", mbps: 0, net: net},
		{name: "no network", mbps: 100},
		{name: "tc fails", mbps: 100, net: net, err: errors.New("netlink"), wantErr: true,
			want: []string{`limit /run/netns/t1 "" 100`, `clear /run/netns/t1 ""`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeShaper{err: tc.err}
			h := &BandwidthHook{Shaper: f}
			spec := &task.Spec{ID: "t1", Resources: task.Resources{NetworkMbps: tc.mbps}}
			res := &Resources{Network: tc.net}
			err := h.Prestart(context.Background(), &PrestartRequest{Spec: spec, Resources: res}, &PrestartResponse{})
			if (err != nil) != tc.wantErr {
				t.Fatalf("Prestart err = %v, wantErr %v", err, tc.wantErr)
			}
			var he *HookError
			if err != nil && (!errors.As(err, &he) || he.Reason != task.ReasonNetworkSetupFailed) {
				t.Errorf("err = %#v, want a HookError with %s", err, task.ReasonNetworkSetupFailed)
			}
			if err := h.Stop(context.Background(), &StopRequest{Spec: spec, Resources: res}); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, f.calls, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("calls (-want +got):\n%s", diff)
			}
		})
	}
}
