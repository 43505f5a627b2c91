package runtime

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
)

func TestClassifyPullError(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want error
	}{
		{"not found", fmt.Errorf("resolve: %w", errdefs.ErrNotFound), ErrImageNotFound},
		{"manifest unknown", errors.New("unexpected status: 404: manifest unknown"), ErrImageNotFound},
		{"https to http registry", errors.New(`Get "https://127.0.0.1:5000/v2/": http: server gave HTTP response to HTTPS client`), ErrRegistryNotAllowed},
		{"other", errors.New("connection refused"), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := classifyPullError(tt.err)
			if !errors.Is(got, tt.err) {
				t.Errorf("original error lost: %v", got)
			}
			for _, sentinel := range []error{ErrImageNotFound, ErrRegistryNotAllowed} {
				if errors.Is(got, sentinel) != (sentinel == tt.want) {
					t.Errorf("errors.Is(%v, %v) = %v", got, sentinel, !(sentinel == tt.want))
				}
			}
		})
	}
}

func TestConfigDefaults(t *testing.T) {
	c := Config{Address: "/run/c.sock", LoggerBinary: "/usr/bin/titus-logger"}
	if err := c.setDefaults(); err != nil {
		t.Fatal(err)
	}
	if c.Namespace != "titus" || c.Snapshotter != "overlayfs" || c.LogMaxFiles != 5 || c.LogMaxSizeMiB != 50 {
		t.Errorf("defaults not applied: %+v", c)
	}
	if err := (&Config{}).setDefaults(); err == nil {
		t.Error("empty address accepted")
	}
}

func TestImagePinned(t *testing.T) {
	d := "sha256:" + strings.Repeat("ab", 32)
	for _, tc := range []struct {
		name    string
		img     Image
		want    string
		wantErr bool
	}{
		{"tag replaced by digest", Image{Name: "127.0.0.1:5000/test/busybox:v1", Digest: d}, "127.0.0.1:5000/test/busybox@" + d, false},
		{"docker hub name", Image{Name: "docker.io/library/busybox:latest", Digest: d}, "docker.io/library/busybox@" + d, false},
		{"already pinned", Image{Name: "reg.example/app@" + d, Digest: d}, "reg.example/app@" + d, false},
		{"not resolved", Image{Name: "reg.example/app:v1"}, "", true},
		{"bad digest", Image{Name: "reg.example/app:v1", Digest: "sha256:xyz"}, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.img.Pinned()
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Errorf("Pinned() = %q, %v; want %q (error %v)", got, err, tc.want, tc.wantErr)
			}
		})
	}
}

func TestStaleLastUsed(t *testing.T) {
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name  string
		label string
		want  bool
	}{
		{"no label", "", true},
		{"unreadable", "yesterday", true},
		{"fresh", now.Add(-10 * time.Second).Format(time.RFC3339Nano), false},
		{"a granularity old", now.Add(-lastUsedGranularity).Format(time.RFC3339Nano), true},
		{"from the future", now.Add(time.Hour).Format(time.RFC3339Nano), true},
	} {
		labels := map[string]string{}
		if tc.label != "" {
			labels[LabelLastUsed] = tc.label
		}
		if got := staleLastUsed(labels, now); got != tc.want {
			t.Errorf("%s: staleLastUsed(%q) = %v, want %v", tc.name, tc.label, got, tc.want)
		}
	}
}
