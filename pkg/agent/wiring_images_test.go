package agent

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/titus-agent/titus-agent/pkg/metrics"
	"github.com/titus-agent/titus-agent/pkg/runtime"
)

func TestImagesConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		mod  func(*Config)
		want string // substring of the error; "" = valid
	}{
		{"defaults", func(*Config) {}, ""},
		{"sizes", func(c *Config) { c.Images.GC.HighWatermark, c.Images.GC.LowWatermark = "2GiB", "1GiB" }, ""},
		{"mixed kinds", func(c *Config) { c.Images.GC.HighWatermark = "2GiB" }, "both be sizes or both percentages"},
		{"low above high", func(c *Config) { c.Images.GC.LowWatermark = "90%" }, "images.gc.lowWatermark"},
		{"bad watermark", func(c *Config) { c.Images.GC.HighWatermark = "lots" }, "images.gc.highWatermark"},
		{"bad min age", func(c *Config) { c.Images.GC.MinAge = "soon" }, "images.gc.minAge"},
		{"interval too short", func(c *Config) { c.Images.GC.Interval = "1ms" }, "images.gc.interval"},
		{"bad pinned", func(c *Config) { c.Images.Pinned = []string{"UPPER::bad"} }, "images.pinned"},
		{"bad prepull", func(c *Config) { c.Images.PrePull = []string{"a b"} }, "images.prePull"},
		{"bad ecr pattern", func(c *Config) { c.Registries.ECR.HostPattern = "(" }, "registries.ecr.hostPattern"},
		{"ecr pattern without region", func(c *Config) { c.Registries.ECR.HostPattern = `127\.0\.0\.1:5000` }, "registries.ecr.hostPattern"},
		{"ecr pattern with region key", func(c *Config) {
			c.Registries.ECR.HostPattern, c.Registries.ECR.Region = `127\.0\.0\.1:5000`, "us-east-1"
		}, ""},
		{"ecr off ignores its keys", func(c *Config) { c.Registries.ECR.Enabled, c.Registries.ECR.HostPattern = false, "(" }, ""},
		{"bad refresh", func(c *Config) { c.Registries.ECR.RefreshBefore = "-1h" }, "registries.ecr.refreshBefore"},
		{"refresh interval too short", func(c *Config) { c.Registries.ECR.RefreshInterval = "500ms" }, "registries.ecr.refreshInterval"},
		{"refresh interval", func(c *Config) { c.Registries.ECR.RefreshInterval = "5s" }, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultConfig()
			tt.mod(&c)
			var errs []error
			errs = append(errs, c.Images.validate()...)
			errs = append(errs, c.Registries.ECR.validate()...)
			err := errors.Join(errs...)
			if tt.want == "" && err != nil || tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
				t.Errorf("validate = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestECRRefreshInterval(t *testing.T) {
	for in, want := range map[string]time.Duration{"": time.Minute, "1m": time.Minute, "2s": 2 * time.Second, "10m": 10 * time.Minute} {
		if got := ecrRefreshInterval(ECRConfig{RefreshInterval: in}); got != want {
			t.Errorf("ecrRefreshInterval(%q) = %s, want %s", in, got, want)
		}
	}
	if got := DefaultConfig().Registries.ECR.RefreshInterval; got != "1m" {
		t.Errorf("default registries.ecr.refreshInterval = %q, want 1m", got)
	}
}

type fakePrePuller struct{ pulled []string }

func (f *fakePrePuller) Pull(_ context.Context, ref string) (runtime.Image, error) {
	f.pulled = append(f.pulled, ref)
	if strings.Contains(ref, "missing") {
		return runtime.Image{}, runtime.ErrImageNotFound
	}
	return runtime.Image{Name: ref}, nil
}

// TestPrePull: every image is tried, a failure neither stops the others
// nor the agent, and both outcomes are counted.
func TestPrePull(t *testing.T) {
	m := metrics.NewImages(prometheus.NewRegistry())
	p := &fakePrePuller{}
	<-prePull(context.Background(), p, []string{"r/a:1", "r/missing:1", "r/b:1"}, m, slog.New(slog.DiscardHandler))
	if strings.Join(p.pulled, " ") != "r/a:1 r/missing:1 r/b:1" {
		t.Errorf("pulled %v", p.pulled)
	}
	if ok, bad := testutil.ToFloat64(m.PrePulls.WithLabelValues("ok")), testutil.ToFloat64(m.PrePulls.WithLabelValues("error")); ok != 2 || bad != 1 {
		t.Errorf("prepulls ok=%v error=%v", ok, bad)
	}
}

func TestStoreRoot(t *testing.T) {
	asked := 0
	answer, fail := "/srv/containerd/io.containerd.content.v1.content", true
	ask := func(context.Context) (string, error) {
		asked++
		if fail {
			return "", errors.New("containerd is down")
		}
		return answer, nil
	}
	set := &storeRoot{path: "/var/lib/containerd", ask: ask}
	if p, err := set.get(); p != "/var/lib/containerd" || err != nil || asked != 0 {
		t.Errorf("configured: %q, %v, asked %d times", p, err, asked)
	}
	derived := &storeRoot{ask: ask}
	if _, err := derived.get(); err == nil || !strings.Contains(err.Error(), "images.gc.storePath") {
		t.Errorf("containerd down: %v, want an error naming images.gc.storePath", err)
	}
	fail = false
	for range 3 {
		if p, err := derived.get(); p != answer || err != nil {
			t.Errorf("derived: %q, %v", p, err)
		}
	}
	if asked != 2 {
		t.Errorf("containerd asked %d times, want 2 (once failing, once answering, then kept)", asked)
	}
	if d := DefaultConfig().Images.GC.StorePath; d != "" {
		t.Errorf("default images.gc.storePath = %q, want empty (derived from containerd)", d)
	}
}
