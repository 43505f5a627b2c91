package taskrunner

import (
	"context"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/titus-agent/titus-agent/pkg/task"
)

type fakePrefetcher struct{ calls []string }

func (f *fakePrefetcher) Prefetch(ctx context.Context, spec *task.Spec) {
	f.calls = append(f.calls, "prefetch "+spec.ID+" "+spec.IAMRoleARN)
}
func (f *fakePrefetcher) Forget(id string) { f.calls = append(f.calls, "forget "+id) }

func TestCredentialsHook(t *testing.T) {
	for _, tc := range []struct {
		name string
		role string
		want []string
	}{
		{"a role is prefetched", "arn:aws:iam::123456789012:role/app", []string{"prefetch t1 arn:aws:iam::123456789012:role/app", "forget t1", "forget t1"}},
		{"no role, nothing fetched", "", []string{"forget t1", "forget t1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakePrefetcher{}
			h := &CredentialsHook{Prefetcher: f}
			spec := &task.Spec{ID: "t1", IAMRoleARN: tc.role}
			var resp PrestartResponse
			if err := h.Prestart(context.Background(), &PrestartRequest{Spec: spec, Resources: &Resources{}}, &resp); err != nil {
				t.Fatal(err)
			}
			if !resp.empty() {
				t.Errorf("the hook created resources: %+v", resp)
			}
			for range 2 { // idempotent
				if err := h.Stop(context.Background(), &StopRequest{Spec: spec, Resources: &Resources{}}); err != nil {
					t.Fatal(err)
				}
			}
			if diff := cmp.Diff(tc.want, f.calls); diff != "" {
				t.Errorf("calls (-want +got):\n%s", diff)
			}
		})
	}
}
