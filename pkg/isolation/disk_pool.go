package isolation

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/titus-agent/titus-agent/pkg/refill"
)

// poolRetry is how long a pool waits to fill again after a failure.
const poolRetry = 5 * time.Second

// PoolStats is told how a pool of pre-made objects fares (the agent's
// metrics): every take, hit or miss, and the number ready.
type PoolStats interface {
	PoolTake(pool string, hit bool)
	PoolReady(pool string, n int)
}

// PoolDisk names the disk pool's takes in PoolStats; its ready counts are
// per size, "disk-<size>MiB".
const PoolDisk = "disk"

// DiskPoolSize is how many formatted images of one size to keep ready.
type DiskPoolSize struct {
	SizeMiB int64
	Count   int
}

// DiskPoolConfig configures LoopQuota.EnablePool.
type DiskPoolConfig struct {
	Sizes []DiskPoolSize
	Stats PoolStats
	Log   *slog.Logger
	// Launches, if set, makes the refill wait while launches are on their
	// critical path (refill.Gate).
	Launches *refill.Gate
}

// DiskPool keeps formatted ext4 images of common sizes ready for
// LoopQuota, each attached to its loop device and mounted: a task whose disk
// is one of those sizes gets a pooled image renamed to its own and the
// mount moved onto its mount point (MS_MOVE), instead of a freshly
// formatted image, attached and mounted on its critical path (the format,
// LOOP_CONFIGURE and the ext4 mount were the bulk of a loop disk's set-up).
// The pool refills in the background.
//
// A pooled image is only ever fresh: it is formatted for the pool, mounted
// only at its place in the pool (where no task's mount namespace sees it),
// leaves the pool once, into one task, and is deleted with that task's
// disk. The pool's images and mount points live in <dir>/pool, where the
// task reaper (List) never looks; LoopQuota's PurgePool, run at every agent
// start, unmounts, detaches and removes whatever an earlier agent process
// left there, and Close what the pool holds.
type DiskPool struct {
	q      *LoopQuota
	sizes  []DiskPoolSize
	stats  PoolStats
	log    *slog.Logger
	random func() (string, error)
	refill *refill.Loop

	mu     sync.Mutex
	ready  map[int64][]string // size → image paths
	closed bool
}

func (q *LoopQuota) poolDir() string { return filepath.Join(q.dir, "pool") }

// poolMount is where a pooled image is mounted while it waits.
func poolMount(img string) string { return strings.TrimSuffix(img, ".img") + ".mnt" }

// PurgePool unmounts, detaches and removes everything in the pool's
// directory and returns the names it removed: what an agent process killed
// with a full pool (or while filling it) left. The agent calls it at start
// whether or not the pool is enabled now.
func (q *LoopQuota) PurgePool(ctx context.Context) ([]string, error) {
	names, err := listDir(q.poolDir())
	if err != nil {
		return nil, fmt.Errorf("disk pool: %w", err)
	}
	var errs []error
	var removed []string
	// Mount points first, so that the images are free to detach.
	rank := func(n string) int {
		if strings.HasSuffix(n, ".mnt") {
			return 0
		}
		return 1
	}
	slices.SortStableFunc(names, func(a, b string) int { return cmp.Compare(rank(a), rank(b)) })
	for _, n := range names {
		if err := q.discard(ctx, filepath.Join(q.poolDir(), n)); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, n)
	}
	if len(errs) > 0 {
		return removed, fmt.Errorf("disk pool: %w", errors.Join(errs...))
	}
	return removed, nil
}

// discard removes one entry of the pool's directory: a mount point is
// unmounted, an image detached from its loop devices, then removed.
func (q *LoopQuota) discard(ctx context.Context, path string) error {
	switch {
	case strings.HasSuffix(path, ".mnt"):
		if err := unmount(ctx, q.sys, path); err != nil {
			return err
		}
	case strings.HasSuffix(path, ".img"):
		if err := q.detachLoops(ctx, path); err != nil {
			return err
		}
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// discardImage discards a pooled image and its mount point.
func (q *LoopQuota) discardImage(ctx context.Context, img string) error {
	return errors.Join(q.discard(ctx, poolMount(img)), q.discard(ctx, img))
}

// EnablePool gives Create a pool of formatted images. It removes what an
// earlier agent process's pool left (PurgePool); call Start to fill it and
// Close to release it.
func (q *LoopQuota) EnablePool(cfg DiskPoolConfig) (*DiskPool, error) {
	seen := map[int64]bool{}
	for _, s := range cfg.Sizes {
		if s.SizeMiB <= 0 || s.Count <= 0 {
			return nil, fmt.Errorf("disk pool: size %d MiB count %d: both must be positive", s.SizeMiB, s.Count)
		}
		if seen[s.SizeMiB] {
			return nil, fmt.Errorf("disk pool: size %d MiB given twice", s.SizeMiB)
		}
		seen[s.SizeMiB] = true
	}
	if len(cfg.Sizes) == 0 {
		return nil, errors.New("disk pool: no sizes")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	// What cannot be removed now is logged, not fatal: it is in no
	// task's way, and the next start tries again.
	left, err := q.PurgePool(context.Background())
	if len(left) > 0 {
		cfg.Log.Warn("removed pooled disk images an earlier agent process left", "removed", left)
	}
	if err != nil {
		cfg.Log.Error("disk pool: remove what an earlier agent process left", "err", err)
	}
	if err := os.MkdirAll(q.poolDir(), 0o700); err != nil {
		return nil, fmt.Errorf("disk pool: %w", err)
	}
	p := &DiskPool{q: q, sizes: slices.Clone(cfg.Sizes), stats: cfg.Stats, log: cfg.Log,
		random: randomHex, ready: map[int64][]string{}, refill: refill.New(poolRetry)}
	p.refill.YieldTo(cfg.Launches)
	q.pool = p
	for _, s := range p.sizes {
		p.report(s.SizeMiB)
	}
	return p, nil
}

func randomHex() (string, error) {
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

// Start fills the pool in the background until Close.
func (p *DiskPool) Start(ctx context.Context) { p.refill.Start(ctx, p.fill) }

// fill formats images, one at a time, until every size has its count;
// false if formatting one failed.
func (p *DiskPool) fill(ctx context.Context) bool {
	for ctx.Err() == nil {
		if p.short() == 0 {
			return true
		}
		p.refill.Yield(ctx)
		size := p.short()
		if size == 0 || ctx.Err() != nil {
			return true
		}
		r, err := p.random()
		if err != nil {
			p.log.Warn("disk pool: name an image", "err", err)
			return false
		}
		path := filepath.Join(p.q.poolDir(), fmt.Sprintf("%d-%s.img", size, r))
		if err := p.make(ctx, path, size); err != nil {
			p.log.Warn("disk pool: make a disk", "sizeMiB", size, "err", err)
			if derr := p.q.discardImage(context.WithoutCancel(ctx), path); derr != nil {
				p.log.Warn("disk pool: remove a half-made disk", "err", derr)
			}
			return false
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			_ = p.q.discardImage(context.WithoutCancel(ctx), path)
			return true
		}
		p.ready[size] = append(p.ready[size], path)
		p.mu.Unlock()
		p.report(size)
	}
	return true
}

// make formats an image at path, attaches and mounts it at its pool mount.
func (p *DiskPool) make(ctx context.Context, path string, size int64) error {
	if err := p.q.makeImage(ctx, path, size); err != nil {
		return err
	}
	mnt := poolMount(path)
	if err := os.Mkdir(mnt, 0o700); err != nil {
		return err
	}
	return p.q.mount(ctx, path, mnt)
}

// short is the first size (in config order) short of its count, 0 if none.
func (p *DiskPool) short() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return 0
	}
	for _, s := range p.sizes {
		if len(p.ready[s.SizeMiB]) < s.Count {
			return s.SizeMiB
		}
	}
	return 0
}

// take hands out a ready image of size, if there is one, and asks for a
// refill. Only the sizes the pool keeps count as hits or misses.
func (p *DiskPool) take(size int64) (string, bool) {
	if !slices.ContainsFunc(p.sizes, func(s DiskPoolSize) bool { return s.SizeMiB == size }) {
		return "", false // a size the pool does not keep: not a miss
	}
	p.mu.Lock()
	var path string
	imgs := p.ready[size]
	ok := !p.closed && len(imgs) > 0
	if ok {
		path = imgs[0]
		p.ready[size] = imgs[1:]
	}
	p.mu.Unlock()
	if p.stats != nil {
		p.stats.PoolTake(PoolDisk, ok)
	}
	if ok {
		p.report(size)
		p.refill.Kick()
	}
	return path, ok
}

// Ready is how many images of size the pool holds.
func (p *DiskPool) Ready(size int64) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.ready[size])
}

func (p *DiskPool) report(size int64) {
	if p.stats != nil {
		p.stats.PoolReady(fmt.Sprintf("%s-%dMiB", PoolDisk, size), p.Ready(size))
	}
}

// Close stops the refill and unmounts, detaches and deletes every image the
// pool holds; Create then makes disks as it would without a pool. Safe to
// repeat.
func (p *DiskPool) Close() error {
	p.refill.Stop()
	p.mu.Lock()
	p.closed = true
	ready := p.ready
	p.ready = map[int64][]string{}
	p.mu.Unlock()
	var errs []error
	for _, imgs := range ready {
		for _, img := range imgs {
			if err := p.q.discardImage(context.Background(), img); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for _, s := range p.sizes {
		p.report(s.SizeMiB)
	}
	return errors.Join(errs...)
}

// claim hands a pooled disk of sizeMiB to the task whose image is img and
// mount point mnt, when the task has no image yet: the image is renamed to
// img and its mount moved onto mnt; false means Create makes its own. A
// disk that cannot be handed over is unmounted and deleted, never put
// back.
func (p *DiskPool) claim(ctx context.Context, img, mnt string, sizeMiB int64) bool {
	if _, err := os.Stat(img); err == nil {
		return false
	}
	src, ok := p.take(sizeMiB)
	if !ok {
		return false
	}
	from := poolMount(src)
	err := os.MkdirAll(filepath.Dir(img), 0o700)
	if err == nil {
		err = os.Rename(src, img)
	}
	if err != nil {
		p.log.Warn("disk pool: hand-over failed, making a fresh disk", "image", img, "err", err)
		_ = p.q.discardImage(ctx, src)
		return false
	}
	err = os.MkdirAll(mnt, 0o700)
	if err == nil {
		err = p.q.sys.MoveMount(from, mnt)
	}
	if err != nil {
		// The image is the task's by name now, never formatted for it:
		// it goes, and Create formats one.
		p.log.Warn("disk pool: hand-over failed, making a fresh disk", "image", img, "err", err)
		_ = p.q.discard(ctx, from)
		_ = p.q.discard(ctx, img)
		return false
	}
	_ = os.Remove(from)
	return true
}
