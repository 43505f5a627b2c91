package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/distribution/reference"
	"golang.org/x/sys/unix"

	"github.com/titus-agent/titus-agent/pkg/ecrauth"
	"github.com/titus-agent/titus-agent/pkg/imagegc"
	"github.com/titus-agent/titus-agent/pkg/metrics"
	"github.com/titus-agent/titus-agent/pkg/runtime"
)

// validate checks the images keys and names each wrong one.
func (c ImagesConfig) validate() []error {
	var errs []error
	g := c.GC
	hi, err := imagegc.ParseWatermark(g.HighWatermark)
	if err != nil {
		errs = append(errs, fmt.Errorf("images.gc.highWatermark: %w", err))
	}
	lo, err2 := imagegc.ParseWatermark(g.LowWatermark)
	if err2 != nil {
		errs = append(errs, fmt.Errorf("images.gc.lowWatermark: %w", err2))
	}
	if err == nil && err2 == nil {
		switch {
		case (hi.Bytes > 0) != (lo.Bytes > 0):
			errs = append(errs, errors.New("images.gc: highWatermark and lowWatermark must both be sizes or both percentages"))
		case hi.Bytes > 0 && lo.Bytes > hi.Bytes, hi.Bytes == 0 && lo.Percent > hi.Percent:
			errs = append(errs, fmt.Errorf("images.gc.lowWatermark: %s is above highWatermark %s", g.LowWatermark, g.HighWatermark))
		}
	}
	if _, err := parseDuration("images.gc.minAge", g.MinAge, 0); err != nil {
		errs = append(errs, err)
	}
	if _, err := parseDuration("images.gc.interval", g.Interval, time.Second); err != nil {
		errs = append(errs, err)
	}
	if c.MaxConcurrentDownloads < 0 || c.MaxConcurrentDownloads > 64 {
		errs = append(errs, fmt.Errorf("images.maxConcurrentDownloads: %d is not between 0 (default) and 64", c.MaxConcurrentDownloads))
	}
	if _, err := parseDuration("images.prePullWait", c.PrePullWait, 0); err != nil {
		errs = append(errs, err)
	}
	for key, refs := range map[string][]string{"images.pinned": c.Pinned, "images.prePull": c.PrePull} {
		for _, r := range refs {
			if _, err := reference.ParseDockerRef(r); err != nil {
				errs = append(errs, fmt.Errorf("%s: %q: %w", key, r, err))
			}
		}
	}
	return errs
}

// parseDuration reads a Go duration of at least min ("" is min).
func parseDuration(key, s string, min time.Duration) (time.Duration, error) {
	if s == "" {
		return min, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < min {
		return 0, fmt.Errorf("%s: %q: want a Go duration of at least %s", key, s, min)
	}
	return d, nil
}

func (e ECRConfig) validate() []error {
	if !e.Enabled {
		return nil
	}
	var errs []error
	if _, err := parseDuration("registries.ecr.refreshBefore", e.RefreshBefore, 0); err != nil {
		errs = append(errs, err)
	}
	if _, err := parseDuration("registries.ecr.refreshInterval", e.RefreshInterval, time.Second); err != nil {
		errs = append(errs, err)
	}
	cl := func(string) ecrauth.API { return nil }
	if _, err := ecrauth.New(ecrauth.Config{HostPattern: e.HostPattern, Region: e.Region, Client: cl}); err != nil {
		errs = append(errs, fmt.Errorf("registries.ecr.hostPattern: %w", err))
	}
	return errs
}

// newECR is the ECR credential source, nil when registries.ecr is off.
func newECR(ctx context.Context, e ECRConfig, m *metrics.Agent) (*ecrauth.Provider, error) {
	if !e.Enabled {
		return nil, nil
	}
	clients, err := ecrauth.Clients(ctx, ecrauth.AWSConfig{Endpoint: e.Endpoint, AccessKeyID: e.AccessKeyID,
		SecretAccessKey: e.SecretAccessKey, APIOptions: m.AWSAPIOptions()})
	if err != nil {
		return nil, fmt.Errorf("ECR client: %w", err)
	}
	before, _ := parseDuration("", e.RefreshBefore, 0)
	return ecrauth.New(ecrauth.Config{HostPattern: e.HostPattern, Region: e.Region, RefreshBefore: before, Client: clients})
}

// newImageGC builds the image collector (also behind image ls|rm|prune
// when images.gc.enabled is off).
func newImageGC(cfg ImagesConfig, rt *runtime.Runtime, inUse func() []imagegc.Holder, m *metrics.Images, log *slog.Logger) (*imagegc.GC, error) {
	hi, err := imagegc.ParseWatermark(cfg.GC.HighWatermark)
	if err != nil {
		return nil, err
	}
	lo, err := imagegc.ParseWatermark(cfg.GC.LowWatermark)
	if err != nil {
		return nil, err
	}
	minAge, _ := parseDuration("", cfg.GC.MinAge, 0)
	interval, err := parseDuration("images.gc.interval", cfg.GC.Interval, time.Second)
	if err != nil {
		return nil, err
	}
	root := storeRoot{path: cfg.GC.StorePath, ask: rt.StoreRoot}
	return imagegc.New(rt, imagegc.Config{
		High: hi, Low: lo, MinAge: minAge, Interval: interval, Pinned: cfg.Pinned,
		FSSize: func() (int64, error) {
			path, err := root.get()
			if err != nil {
				return 0, err
			}
			var st unix.Statfs_t
			if err := unix.Statfs(path, &st); err != nil {
				return 0, fmt.Errorf("statfs %s (images.gc.storePath): %w", path, err)
			}
			return int64(st.Blocks) * st.Bsize, nil
		},
		InUse: inUse, Log: log, Metrics: m,
	})
}

// storeRoot is the path whose filesystem percentage watermarks are of:
// images.gc.storePath, or else the root of containerd's content store as
// containerd reports it (asked until it answers, then kept).
type storeRoot struct {
	mu   sync.Mutex
	path string
	ask  func(context.Context) (string, error)
}

func (r *storeRoot) get() (string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.path != "" {
		return r.path, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p, err := r.ask(ctx)
	if err != nil {
		return "", fmt.Errorf("images.gc.storePath is not set and containerd's content store root is unknown: %w", err)
	}
	r.path = p
	return p, nil
}

// ECR tokens no pull used for ecrIdle are dropped by the background
// refresh (registries.ecr.refreshInterval) instead of fetched anew.
const ecrIdle = 24 * time.Hour

// ecrRefreshInterval is registries.ecr.refreshInterval (validated).
func ecrRefreshInterval(e ECRConfig) time.Duration {
	d, err := parseDuration("", e.RefreshInterval, time.Second)
	if err != nil || e.RefreshInterval == "" {
		return time.Minute
	}
	return d
}

// imagePuller is what pre-pulling needs of the runtime.
type imagePuller interface {
	Pull(ctx context.Context, ref string) (runtime.Image, error)
}

// prePull pulls refs one after the other in the background; the channel
// is closed when all are done. Failures are logged and counted, never
// fatal: a host whose registry is down still serves.
func prePull(ctx context.Context, p imagePuller, refs []string, m *metrics.Images, log *slog.Logger) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, ref := range refs {
			start := time.Now()
			img, err := p.Pull(ctx, ref)
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				m.PrePulls.WithLabelValues("error").Inc()
				log.Error("pre-pull image", "image", ref, "err", err)
				continue
			}
			m.PrePulls.WithLabelValues("ok").Inc()
			log.Info("pre-pulled image", "image", ref, "digest", img.Digest, "took", time.Since(start).Round(time.Millisecond))
		}
	}()
	return done
}

// waitPrePull waits for the pre-pulls up to wait; they go on after it.
func waitPrePull(ctx context.Context, done <-chan struct{}, wait time.Duration, log *slog.Logger) {
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-done:
	case <-ctx.Done():
	case <-t.C:
		log.Warn("pre-pulls not done; reporting ready, they go on", "waited", wait)
	}
}
