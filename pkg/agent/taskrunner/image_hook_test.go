package taskrunner

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/titus-agent/titus-agent/pkg/runtime"
	"github.com/titus-agent/titus-agent/pkg/task"
)

type fakePuller struct {
	pulled []string
	err    error
}

func (f *fakePuller) Pull(ctx context.Context, ref string) (runtime.Image, error) {
	f.pulled = append(f.pulled, ref)
	return runtime.Image{Name: ref, Digest: testDigest}, f.err
}

// testDigest is what the fakes resolve every image to.
var testDigest = "sha256:" + strings.Repeat("ab", 32)

func TestImageHook(t *testing.T) {
	tests := []struct {
		name   string
		err    error
		reason task.Reason
	}{
		{"pulled", nil, ""},
		{"not found", fmt.Errorf("pull: %w", runtime.ErrImageNotFound), task.ReasonImageNotFound},
		{"registry down", errors.New("connection refused"), task.ReasonImagePullFailed},
		{"plain http refused", fmt.Errorf("pull: %w", runtime.ErrRegistryNotAllowed), task.ReasonImagePullFailed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := &fakePuller{err: tt.err}
			h := &ImageHook{Puller: p}
			spec := &task.Spec{ID: "t", Image: "reg/img:1"}
			resp := &PrestartResponse{}
			err := h.Prestart(context.Background(), &PrestartRequest{Spec: spec, Resources: &Resources{}}, resp)
			var he *HookError
			switch {
			case tt.reason == "" && err != nil:
				t.Fatalf("unexpected error %v", err)
			case tt.reason != "" && (!errors.As(err, &he) || he.Reason != tt.reason):
				t.Fatalf("err = %v, want reason %s", err, tt.reason)
			case tt.reason == "" && (resp.Image == nil || resp.Image.Name != "reg/img:1" || resp.Image.Digest != testDigest):
				t.Fatalf("resp.Image = %+v", resp.Image)
			}
			if len(p.pulled) != 1 || p.pulled[0] != "reg/img:1" {
				t.Fatalf("pulled %v", p.pulled)
			}
		})
	}
}

// flakyPuller is unreachable (as containerd is while it restarts) a few times.
type flakyPuller struct{ failures int }

func (f *flakyPuller) Pull(ctx context.Context, ref string) (runtime.Image, error) {
	if f.failures > 0 {
		f.failures--
		return runtime.Image{}, status.Error(codes.Unavailable, "connection refused")
	}
	return runtime.Image{Name: ref}, nil
}

func TestImageHookWaitsOutARestartingRuntime(t *testing.T) {
	p := &flakyPuller{failures: 3}
	h := &ImageHook{Puller: p}
	resp := &PrestartResponse{}
	if err := h.Prestart(context.Background(), &PrestartRequest{Spec: &task.Spec{ID: "t", Image: "img"}, Resources: &Resources{}}, resp); err != nil {
		t.Fatalf("transient unavailability failed the launch: %v", err)
	}
	if p.failures != 0 || resp.Image == nil || resp.Image.Name != "img" {
		t.Fatalf("failures left %d, image %+v", p.failures, resp.Image)
	}
}

// A resumed launch pulls the digest its record holds, not the tag again
// (which may point elsewhere by now).
func TestImageHookResumesWithTheRecordedDigest(t *testing.T) {
	p := &fakePuller{}
	h := &ImageHook{Puller: p}
	rec := &runtime.Image{Name: "reg.example:5000/app:v1", Digest: testDigest}
	resp := &PrestartResponse{}
	err := h.Prestart(context.Background(), &PrestartRequest{Spec: &task.Spec{ID: "t", Image: "reg.example:5000/app:v1"}, Resources: &Resources{Image: rec}}, resp)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"reg.example:5000/app@" + testDigest}
	if diff := cmp.Diff(want, p.pulled); diff != "" {
		t.Errorf("pulled (-want +got):\n%s", diff)
	}
	if resp.Image == nil || resp.Image.Digest != testDigest {
		t.Errorf("resp.Image = %+v", resp.Image)
	}
}
