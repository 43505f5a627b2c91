package agent

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/titus-agent/titus-agent/pkg/runtime"
)

// fakeOrphans records ReapOrphans calls and answers with a fixed result.
type fakeOrphans struct {
	calls int
	rep   runtime.Reaped
	err   error
}

func (f *fakeOrphans) ReapOrphans(context.Context) (runtime.Reaped, error) {
	f.calls++
	return f.rep, f.err
}

func TestOrphanReaper(t *testing.T) {
	for _, tc := range []struct {
		name    string
		rep     runtime.Reaped
		err     error
		wantErr bool
		wantLog []string
	}{
		{name: "nothing"},
		{name: "shims and mounts", rep: runtime.Reaped{Shims: []string{"t1"}, Mounts: []string{"/tmp/containerd-mount1"}},
			wantLog: []string{"killed shims containerd does not know", "unmounted stale temporary snapshot mounts"}},
		{name: "error after some", rep: runtime.Reaped{Shims: []string{"t1"}}, err: errors.New("boom"), wantErr: true,
			wantLog: []string{"killed shims containerd does not know"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var log strings.Builder
			f := &fakeOrphans{rep: tc.rep, err: tc.err}
			err := orphanReaper{rt: f, log: slog.New(slog.NewTextHandler(&log, nil))}.Reconcile(context.Background(), map[string]bool{"t1": true})
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error %v", err, tc.wantErr)
			}
			if f.calls != 1 {
				t.Fatalf("ReapOrphans called %d times, want 1", f.calls)
			}
			var got []string
			for _, l := range strings.Split(strings.TrimSpace(log.String()), "\n") {
				for _, w := range []string{"killed shims containerd does not know", "unmounted stale temporary snapshot mounts"} {
					if strings.Contains(l, w) {
						got = append(got, w)
					}
				}
			}
			if diff := cmp.Diff(tc.wantLog, got); diff != "" {
				t.Fatalf("logged (-want +got):\n%s", diff)
			}
		})
	}
}
