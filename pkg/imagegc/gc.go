// Package imagegc keeps the agent's image store within bounds: when the
// containerd content store plus snapshots of the agent's namespace pass a
// high watermark, images go, least recently used first, until usage is
// below a low watermark. An image held by a task on this host (from its
// acceptance until its teardown is done), the image of any container of
// the namespace (a quarantined task's, left running for an operator to
// debug, or one an operator made), one a pull is resolving right now, a
// pinned one, or one younger than the minimum age never goes. The
// same rules guard the operator's `titus-agent image rm|prune`.
//
// The check that an image is unused and its deletion happen under the
// runtime's pull lock (runtime.RemoveImage), so a launch that starts
// pulling an image the collector has just chosen either keeps it or pulls
// it again; it never gets an image deleted under it.
package imagegc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"github.com/distribution/reference"

	"github.com/titus-agent/titus-agent/pkg/metrics"
	"github.com/titus-agent/titus-agent/pkg/runtime"
)

// Errors callers branch on (errdefs classes: FailedPrecondition).
var (
	ErrInUse  = errdefs.ErrFailedPrecondition.WithMessage("image is in use")
	ErrPinned = errdefs.ErrFailedPrecondition.WithMessage("image is pinned")
	ErrYoung  = errdefs.ErrFailedPrecondition.WithMessage("image is younger than the minimum age")
)

// Store is the part of the runtime the collector uses.
type Store interface {
	ListImages(ctx context.Context) ([]runtime.ImageInfo, error)
	RemoveImage(ctx context.Context, name string, keep func(runtime.ImageInfo) error) error
	StoreUsage(ctx context.Context) (int64, error)
	TouchImages(ctx context.Context, at time.Time, names ...string) error
	// ContainerImages lists every container of the namespace and its
	// image, whether or not a task of the agent's owns it.
	ContainerImages(ctx context.Context) ([]runtime.ContainerImage, error)
}

// Holder is a task of this host and the image it holds: the reference its
// spec names and, once pulled, what it resolved to.
type Holder struct {
	TaskID string
	Ref    string // spec image
	Name   string // resolved name, "" before the pull
	Digest string // resolved target digest, "" before the pull
}

// Config configures a GC.
type Config struct {
	High, Low Watermark
	// FSSize returns the size of the filesystem holding the store (for
	// percentage watermarks).
	FSSize func() (int64, error)
	MinAge time.Duration
	// Interval between usage checks in Run.
	Interval time.Duration
	Pinned   []string
	// InUse lists the tasks holding images; called under the pull lock
	// before every removal, it must not pull.
	InUse   func() []Holder
	Now     func() time.Time
	Log     *slog.Logger
	Metrics *metrics.Images // nil: none
}

// GC is the image collector.
type GC struct {
	cfg    Config
	store  Store
	pinned matcher
}

// New makes a collector; the pinned references must parse.
func New(store Store, cfg Config) (*GC, error) {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.InUse == nil {
		return nil, errors.New("imagegc: InUse is required")
	}
	if cfg.Interval <= 0 {
		cfg.Interval = time.Minute
	}
	pinned, err := newMatcher(cfg.Pinned)
	if err != nil {
		return nil, fmt.Errorf("pinned images: %w", err)
	}
	return &GC{cfg: cfg, store: store, pinned: pinned}, nil
}

// matcher matches images by normalized name, or by digest for references
// by digest.
type matcher struct{ names, digests map[string]bool }

func newMatcher(refs []string) (matcher, error) {
	m := matcher{names: map[string]bool{}, digests: map[string]bool{}}
	for _, r := range refs {
		if err := m.add(r); err != nil {
			return m, err
		}
	}
	return m, nil
}

func (m matcher) add(ref string) error {
	named, err := reference.ParseDockerRef(ref)
	if err != nil {
		return fmt.Errorf("%q: %w", ref, err)
	}
	m.names[named.String()] = true
	if c, ok := named.(reference.Canonical); ok {
		m.digests[c.Digest().String()] = true
	}
	return nil
}

func (m matcher) match(img runtime.ImageInfo) bool {
	return m.names[img.Name] || m.digests[img.Digest]
}

// holders returns the tasks holding img, sorted.
func holders(hs []Holder, img runtime.ImageInfo) []string {
	var ids []string
	for _, h := range hs {
		if heldBy(h, img) {
			ids = append(ids, h.TaskID)
		}
	}
	slices.Sort(ids)
	return slices.Compact(ids)
}

func heldBy(h Holder, img runtime.ImageInfo) bool {
	if (h.Name != "" && h.Name == img.Name) || (h.Digest != "" && h.Digest == img.Digest) {
		return true
	}
	named, err := reference.ParseDockerRef(h.Ref)
	if err != nil {
		// A spec we cannot read holds whatever has its text in it: never
		// remove on doubt.
		return strings.Contains(img.Name, h.Ref)
	}
	if named.String() == img.Name {
		return true
	}
	c, ok := named.(reference.Canonical)
	return ok && c.Digest().String() == img.Digest
}

// held lists the tasks holding images and every container of the
// namespace, as a holder of its image: a container the agent no longer
// manages (a quarantined task's) still needs its image for debugging.
func (g *GC) held(ctx context.Context) ([]Holder, error) {
	hs := g.cfg.InUse()
	cs, err := g.store.ContainerImages(ctx)
	if err != nil {
		return nil, err
	}
	for _, c := range cs {
		hs = append(hs, Holder{TaskID: c.ID, Ref: c.Image, Name: c.Image})
	}
	return hs, nil
}

// keep is the check RemoveImage makes under the pull lock: in use (by a
// task or a container), pinned, or (minAge > 0) young images stay; so does
// every image when the containers cannot be listed.
func (g *GC) keep(ctx context.Context, minAge time.Duration) func(runtime.ImageInfo) error {
	return func(img runtime.ImageInfo) error {
		hs, err := g.held(ctx)
		if err != nil {
			return fmt.Errorf("%s: kept, its users are unknown: %w", img.Name, err)
		}
		if ids := holders(hs, img); len(ids) > 0 {
			return fmt.Errorf("%s: %w by task %s", img.Name, ErrInUse, strings.Join(ids, ", "))
		}
		if g.pinned.match(img) {
			return fmt.Errorf("%s: %w (images.pinned)", img.Name, ErrPinned)
		}
		if minAge > 0 && g.cfg.Now().Sub(img.Created) < minAge {
			return fmt.Errorf("%s: %w (%s)", img.Name, ErrYoung, minAge)
		}
		return nil
	}
}

// Image is one image as `titus-agent image ls` shows it.
type Image struct {
	runtime.ImageInfo
	Pinned bool
	// UsedBy are the tasks holding it.
	UsedBy []string
}

// List returns the images, least recently used first.
func (g *GC) List(ctx context.Context) ([]Image, error) {
	imgs, err := g.store.ListImages(ctx)
	if err != nil {
		return nil, err
	}
	hs, err := g.held(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]Image, len(imgs))
	for i, img := range imgs {
		out[i] = Image{ImageInfo: img, Pinned: g.pinned.match(img), UsedBy: holders(hs, img)}
	}
	if m := g.cfg.Metrics; m != nil {
		m.Count.Set(float64(len(imgs)))
	}
	return out, nil
}

// Result is what one collection, prune or removal did.
type Result struct {
	Removed []string
	// Freed is the drop of store usage across the removals.
	Freed         int64
	Before, After int64 // store usage
	// High and Low are the watermarks in bytes (collections only).
	High, Low int64
}

// Remove removes the image named ref (normalized: busybox → docker.io/
// library/busybox:latest), refusing one in use (ErrInUse), pinned
// (ErrPinned) or being pulled (runtime.ErrImageBusy). The minimum age does
// not apply: the operator asked for this one.
func (g *GC) Remove(ctx context.Context, ref string) (Result, error) {
	named, err := reference.ParseDockerRef(ref)
	if err != nil {
		return Result{}, fmt.Errorf("image reference %q: %w", ref, err)
	}
	return g.remove(ctx, metrics.TriggerRm, []string{named.String()}, 0, -1)
}

// Prune removes every image no task holds and not pinned, pulled at least
// minAge ago, whatever the watermarks.
func (g *GC) Prune(ctx context.Context, minAge time.Duration) (Result, error) {
	names, err := g.candidates(ctx, minAge)
	if err != nil {
		return Result{}, err
	}
	res, err := g.remove(ctx, metrics.TriggerPrune, names, minAge, -1)
	return res, errorsExcept(err, ErrInUse, ErrPinned, ErrYoung, runtime.ErrImageBusy, runtime.ErrImageNotFound)
}

// Collect runs one collection: nothing while usage is at or below the high
// watermark, else the least recently used eligible images until usage is
// at or below the low watermark (or nothing eligible is left: logged).
func (g *GC) Collect(ctx context.Context) (Result, error) {
	var res Result
	fs := int64(0)
	if g.cfg.High.Bytes == 0 || g.cfg.Low.Bytes == 0 {
		var err error
		if fs, err = g.cfg.FSSize(); err != nil {
			return res, fmt.Errorf("image store filesystem: %w", err)
		}
	}
	res.High, res.Low = g.cfg.High.Resolve(fs), g.cfg.Low.Resolve(fs)
	if m := g.cfg.Metrics; m != nil {
		m.HighWatermarkBytes.Set(float64(res.High))
		m.LowWatermarkBytes.Set(float64(res.Low))
	}
	g.touchHeld(ctx)
	used, err := g.store.StoreUsage(ctx)
	if err != nil {
		return res, err
	}
	g.setUsage(used)
	res.Before, res.After = used, used
	if used <= res.High {
		return res, nil
	}
	names, err := g.candidates(ctx, g.cfg.MinAge)
	if err != nil {
		return res, err
	}
	r, err := g.remove(ctx, metrics.TriggerGC, names, g.cfg.MinAge, res.Low)
	r.High, r.Low = res.High, res.Low
	if r.After > res.Low {
		g.cfg.Log.Warn("image store above the low watermark after collection: the rest is in use, pinned or young",
			"usage", r.After, "low", res.Low, "high", res.High, "removed", len(r.Removed))
	}
	return r, errorsExcept(err, ErrInUse, ErrPinned, ErrYoung, runtime.ErrImageBusy, runtime.ErrImageNotFound)
}

// candidates are the images that may go now, least recently used first.
func (g *GC) candidates(ctx context.Context, minAge time.Duration) ([]string, error) {
	imgs, err := g.store.ListImages(ctx)
	if err != nil {
		return nil, err
	}
	if m := g.cfg.Metrics; m != nil {
		m.Count.Set(float64(len(imgs)))
	}
	if _, err := g.held(ctx); err != nil {
		return nil, fmt.Errorf("images kept, their users are unknown: %w", err)
	}
	keep := g.keep(ctx, minAge)
	var names []string
	for _, img := range imgs {
		if keep(img) == nil {
			names = append(names, img.Name)
		}
	}
	return names, nil
}

// remove removes names in order, each re-checked under the pull lock,
// until usage is at or below until (-1: all of them). Refusals are joined
// into the error; the rest go on.
func (g *GC) remove(ctx context.Context, trigger string, names []string, minAge time.Duration, until int64) (Result, error) {
	var res Result
	used, err := g.store.StoreUsage(ctx)
	if err != nil {
		return res, err
	}
	res.Before, res.After = used, used
	var errs []error
	keep := g.keep(ctx, minAge)
	for _, n := range names {
		if until >= 0 && res.After <= until {
			break
		}
		if err := g.store.RemoveImage(ctx, n, keep); err != nil {
			errs = append(errs, err)
			continue
		}
		after, err := g.store.StoreUsage(ctx)
		if err != nil {
			errs = append(errs, err)
			after = res.After
		}
		freed := max(res.After-after, 0)
		res.Removed = append(res.Removed, n)
		res.Freed += freed
		res.After = after
		g.cfg.Log.Info("removed image", "image", n, "trigger", trigger, "freed", freed, "usage", after)
		if m := g.cfg.Metrics; m != nil {
			m.Removed.WithLabelValues(trigger).Inc()
			m.RemovedBytes.WithLabelValues(trigger).Add(float64(freed))
		}
	}
	g.setUsage(res.After)
	return res, errors.Join(errs...)
}

// errorsExcept drops from a joined error the parts that are one of the
// expected refusals (a task took the image meanwhile, …).
func errorsExcept(err error, expected ...error) error {
	if err == nil {
		return nil
	}
	var parts []error
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		parts = j.Unwrap()
	} else {
		parts = []error{err}
	}
	var rest []error
	for _, p := range parts {
		if !slices.ContainsFunc(expected, func(e error) bool { return errors.Is(p, e) }) {
			rest = append(rest, p)
		}
	}
	return errors.Join(rest...)
}

// touchHeld marks the images tasks hold as used now, so that least
// recently used means the last time a task held it, not only pulled it.
func (g *GC) touchHeld(ctx context.Context) {
	var names []string
	for _, h := range g.cfg.InUse() {
		if h.Name != "" {
			names = append(names, h.Name)
		}
	}
	slices.Sort(names)
	if err := g.store.TouchImages(ctx, g.cfg.Now(), slices.Compact(names)...); err != nil {
		g.cfg.Log.Warn("mark images in use", "err", err)
	}
}

func (g *GC) setUsage(used int64) {
	if m := g.cfg.Metrics; m != nil {
		m.StoreBytes.Set(float64(used))
	}
}

// MinAge is the configured minimum age.
func (g *GC) MinAge() time.Duration { return g.cfg.MinAge }

// Usage is the store's usage now (and sets its gauge).
func (g *GC) Usage(ctx context.Context) (int64, error) {
	used, err := g.store.StoreUsage(ctx)
	if err == nil {
		g.setUsage(used)
	}
	return used, err
}

// Run collects every Interval until ctx ends. A failure is logged once
// until it changes or a collection succeeds (then that is logged), not at
// every interval.
func (g *GC) Run(ctx context.Context) {
	t := time.NewTicker(g.cfg.Interval)
	defer t.Stop()
	last := ""
	for {
		_, err := g.Collect(ctx)
		switch {
		case ctx.Err() != nil:
		case err != nil && err.Error() != last:
			last = err.Error()
			g.cfg.Log.Warn("image garbage collection; logged again only when the error changes", "err", err)
		case err == nil && last != "":
			last = ""
			g.cfg.Log.Info("image garbage collection works again")
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
