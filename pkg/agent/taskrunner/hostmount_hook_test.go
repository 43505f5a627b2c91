package taskrunner

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/titus-agent/titus-agent/pkg/isolation"
	"github.com/titus-agent/titus-agent/pkg/task"
)

type fakeStager struct {
	calls  []string
	mounts []specs.Mount
	err    error
}

func (f *fakeStager) Stage(id string, labels map[string]string) ([]specs.Mount, error) {
	f.calls = append(f.calls, fmt.Sprintf("stage %s %s", id, labels[isolation.LabelHostMounts]))
	return f.mounts, f.err
}

func (f *fakeStager) Release(id string) error {
	f.calls = append(f.calls, "release "+id)
	return nil
}

func TestHostMountHook(t *testing.T) {
	staged := []specs.Mount{{Destination: "/data", Type: "bind", Source: "/var/lib/titus-agent/hostmounts/t1/0", Options: []string{"rbind", "ro"}}}
	for _, tc := range []struct {
		name       string
		label      string
		err        error
		wantCalls  []string
		wantMounts []Mount
		wantReason task.Reason
	}{
		{name: "nothing asked", wantCalls: []string{"release t1"}},
		{name: "staged", label: "/srv:/data",
			wantCalls:  []string{"stage t1 /srv:/data", "release t1"},
			wantMounts: []Mount{{Destination: "/data", Type: "bind", Source: "/var/lib/titus-agent/hostmounts/t1/0", Options: []string{"rbind", "ro"}}}},
		{name: "not allowed", label: "/etc:/data", err: fmt.Errorf("host path /etc: %w", isolation.ErrNotAllowed),
			wantCalls: []string{"stage t1 /etc:/data", "release t1"}, wantReason: task.ReasonInvalidSpec},
		{name: "mount fails", label: "/srv:/data", err: errors.New("EPERM"),
			wantCalls: []string{"stage t1 /srv:/data", "release t1"}, wantReason: task.ReasonStartFailed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeStager{mounts: staged, err: tc.err}
			h := &HostMountHook{Stager: f}
			spec := &task.Spec{ID: "t1", Labels: map[string]string{}}
			if tc.label != "" {
				spec.Labels[isolation.LabelHostMounts] = tc.label
			}
			var resp PrestartResponse
			err := h.Prestart(context.Background(), &PrestartRequest{Spec: spec, Resources: &Resources{}}, &resp)
			var he *HookError
			switch {
			case tc.wantReason == "" && err != nil:
				t.Fatalf("Prestart: %v", err)
			case tc.wantReason != "" && (!errors.As(err, &he) || he.Reason != tc.wantReason):
				t.Fatalf("Prestart err = %v, want a HookError with %s", err, tc.wantReason)
			}
			if diff := cmp.Diff(tc.wantMounts, resp.Mounts); diff != "" {
				t.Errorf("mounts (-want +got):\n%s", diff)
			}
			if err := h.Stop(context.Background(), &StopRequest{Spec: spec}); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.wantCalls, f.calls); diff != "" {
				t.Errorf("calls (-want +got):\n%s", diff)
			}
		})
	}
}

// TestResourcesMergeMountsOnce: a hook run again on a resumed launch gives
// its mounts again; the record keeps one per destination.
func TestResourcesMergeMountsOnce(t *testing.T) {
	var r Resources
	m := Mount{Destination: "/data", Type: "bind", Source: "/s/t1/0"}
	r.merge(&PrestartResponse{Mounts: []Mount{m}})
	r.merge(&PrestartResponse{Mounts: []Mount{{Destination: "/other", Source: "/o"}}})
	r.merge(&PrestartResponse{Mounts: []Mount{m}})
	if diff := cmp.Diff([]Mount{{Destination: "/other", Source: "/o"}, m}, r.Mounts); diff != "" {
		t.Errorf("mounts (-want +got):\n%s", diff)
	}
}
