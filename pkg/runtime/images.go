package runtime

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/distribution/reference"
)

// LabelLastUsed is the image label holding when a task last used the image
// (RFC 3339): set by every Pull and by TouchImages. Garbage collection
// removes the least recently used first.
const LabelLastUsed = "titus.agent/last-used"

// ErrImageBusy is returned by RemoveImage when a pull of the image is under
// way on this host.
var ErrImageBusy = errors.New("image is being pulled")

// ImageInfo is one image of the namespace as garbage collection sees it.
type ImageInfo struct {
	Name    string
	Digest  string // target (manifest or index) digest
	Size    int64  // content plus unpacked snapshots, shared layers counted in each image
	Created time.Time
	// LastUsed is LabelLastUsed, or Created when the image has none.
	LastUsed time.Time
}

// pulls counts the pulls under way by normalized name and by digest, so
// that RemoveImage never removes an image a launch is resolving right now.
// mu is held by RemoveImage for its whole check-and-delete, and by a pull
// to register: a pull that registers after a removal's check waits for the
// delete and then fetches the image again.
type pulls struct {
	mu    sync.Mutex
	names map[string]int
}

func (p *pulls) begin(keys ...string) func() {
	p.mu.Lock()
	if p.names == nil {
		p.names = map[string]int{}
	}
	for _, k := range keys {
		p.names[k]++
	}
	p.mu.Unlock()
	return func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, k := range keys {
			if p.names[k]--; p.names[k] <= 0 {
				delete(p.names, k)
			}
		}
	}
}

// pullKeys are the keys a pull of named registers: its name, and its digest
// when it is a reference by digest.
func pullKeys(named reference.Named) []string {
	keys := []string{named.String()}
	if c, ok := named.(reference.Canonical); ok {
		keys = append(keys, c.Digest().String())
	}
	return keys
}

// ListImages returns the namespace's images, least recently used first.
func (r *Runtime) ListImages(ctx context.Context) ([]ImageInfo, error) {
	ctx = r.ctx(ctx)
	imgs, err := r.client.ImageService().List(ctx)
	if err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	out := make([]ImageInfo, 0, len(imgs))
	for _, m := range imgs {
		info := imageInfo(m)
		size, err := client.NewImage(r.client, m).Usage(ctx, client.WithSnapshotUsage())
		if err != nil && !errdefs.IsNotFound(err) {
			return nil, fmt.Errorf("image %s usage: %w", m.Name, err)
		}
		info.Size = size
		out = append(out, info)
	}
	sort.SliceStable(out, func(i, j int) bool {
		if !out[i].LastUsed.Equal(out[j].LastUsed) {
			return out[i].LastUsed.Before(out[j].LastUsed)
		}
		return out[i].Name < out[j].Name
	})
	return out, nil
}

func imageInfo(m images.Image) ImageInfo {
	info := ImageInfo{Name: m.Name, Digest: m.Target.Digest.String(), Created: m.CreatedAt, LastUsed: m.CreatedAt}
	if t, err := time.Parse(time.RFC3339Nano, m.Labels[LabelLastUsed]); err == nil {
		info.LastUsed = t
	}
	return info
}

// RemoveImage deletes the image named name and waits for containerd's
// garbage collection, unless a pull of it is under way (ErrImageBusy) or
// keep, called with the lock held that pulls register under, returns an
// error (then that error). Content and snapshots shared with other images
// or held by containers stay.
func (r *Runtime) RemoveImage(ctx context.Context, name string, keep func(ImageInfo) error) error {
	ctx = r.ctx(ctx)
	r.pulls.mu.Lock()
	defer r.pulls.mu.Unlock()
	defer r.images.forget(name)
	m, err := r.client.ImageService().Get(ctx, name)
	if err != nil {
		if errdefs.IsNotFound(err) {
			return fmt.Errorf("image %s: %w", name, ErrImageNotFound)
		}
		return fmt.Errorf("image %s: %w", name, err)
	}
	if r.pulls.names[m.Name] > 0 || r.pulls.names[m.Target.Digest.String()] > 0 {
		return fmt.Errorf("image %s: %w", name, ErrImageBusy)
	}
	if keep != nil {
		if err := keep(imageInfo(m)); err != nil {
			return err
		}
	}
	if err := r.client.ImageService().Delete(ctx, m.Name, images.SynchronousDelete()); err != nil {
		if errdefs.IsNotFound(err) {
			return fmt.Errorf("image %s: %w", name, ErrImageNotFound)
		}
		return fmt.Errorf("delete image %s: %w", name, err)
	}
	return nil
}

// TouchImages sets LabelLastUsed of the named images to at; names that are
// not (or no longer) present are skipped.
func (r *Runtime) TouchImages(ctx context.Context, at time.Time, names ...string) error {
	ctx = r.ctx(ctx)
	var errs []error
	for _, n := range names {
		if err := r.touch(ctx, n, at); err != nil && !errdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("image %s: %w", n, err))
		}
	}
	return errors.Join(errs...)
}

func (r *Runtime) touch(ctx context.Context, name string, at time.Time) error {
	_, err := r.client.ImageService().Update(ctx, images.Image{
		Name:   name,
		Labels: map[string]string{LabelLastUsed: at.UTC().Format(time.RFC3339Nano)},
	}, "labels."+LabelLastUsed)
	return err
}

// StoreUsage is the bytes the namespace holds in containerd's content store
// plus its snapshots (image layers and containers' writable layers).
func (r *Runtime) StoreUsage(ctx context.Context) (int64, error) {
	ctx = r.ctx(ctx)
	var total int64
	if err := r.client.ContentStore().Walk(ctx, func(i content.Info) error {
		total += i.Size
		return nil
	}); err != nil {
		return 0, fmt.Errorf("walk content: %w", err)
	}
	sn := r.client.SnapshotService(r.cfg.Snapshotter)
	if err := sn.Walk(ctx, func(ctx context.Context, i snapshots.Info) error {
		u, err := sn.Usage(ctx, i.Name)
		if err != nil {
			if errdefs.IsNotFound(err) {
				return nil // removed meanwhile
			}
			return err
		}
		total += u.Size
		return nil
	}); err != nil {
		return 0, fmt.Errorf("walk snapshots: %w", err)
	}
	return total, nil
}

// ContainerImage is a container of the namespace and the image it was
// made from.
type ContainerImage struct {
	ID, Image string
}

// ContainerImages lists every container of the namespace with its image:
// the agent's own (a quarantined task's left running included) and any an
// operator made. Their images must stay: a container's image is what an
// operator debugging it inspects, restarts or commits.
func (r *Runtime) ContainerImages(ctx context.Context) ([]ContainerImage, error) {
	ctx = r.ctx(ctx)
	cs, err := r.client.ContainerService().List(ctx)
	if err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	out := make([]ContainerImage, 0, len(cs))
	for _, c := range cs {
		if c.Image != "" {
			out = append(out, ContainerImage{ID: c.ID, Image: c.Image})
		}
	}
	return out, nil
}

// StoreRoot is the directory of containerd's content store (its local
// content plugin's root, as containerd reports it), whose filesystem
// percentage watermarks are of.
func (r *Runtime) StoreRoot(ctx context.Context) (string, error) {
	resp, err := r.client.IntrospectionService().Plugins(ctx)
	if err != nil {
		return "", fmt.Errorf("containerd plugins: %w", err)
	}
	for _, p := range resp.GetPlugins() {
		if root := p.GetExports()["root"]; p.GetType() == "io.containerd.content.v1" && root != "" && p.GetInitErr() == nil {
			return root, nil
		}
	}
	return "", errors.New("containerd reports no content store root")
}
