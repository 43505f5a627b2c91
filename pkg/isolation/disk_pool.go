package isolation

import (
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

// DiskPool keeps formatted, never-mounted ext4 images of common sizes
// ready for LoopQuota: a task whose disk is one of those sizes gets a
// pooled image renamed to its own instead of a freshly formatted one (the
// format is the bulk of a loop disk's set-up), and the pool refills in the
// background.
//
// A pooled image is only ever fresh: it is formatted for the pool, never
// attached or mounted while pooled, leaves the pool once, into one task,
// and is deleted with that task's disk. The pool's images live in
// <dir>/pool, where the task reaper (List) never looks; LoopQuota's
// PurgePool, run at every agent start, removes whatever an earlier agent
// process left there, and Close what the pool holds.
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

// PurgePool removes every image in the pool's directory and returns their
// names: what an agent process killed with a full pool left. The agent
// calls it at start whether or not the pool is enabled now. Pooled images
// are never attached to a loop device, so there is nothing to detach.
func (q *LoopQuota) PurgePool() ([]string, error) {
	names, err := listDir(q.poolDir())
	if err != nil {
		return nil, fmt.Errorf("disk pool: %w", err)
	}
	var errs []error
	var removed []string
	for _, n := range names {
		if err := os.Remove(filepath.Join(q.poolDir(), n)); err != nil && !errors.Is(err, fs.ErrNotExist) {
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
	left, err := q.PurgePool()
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
		if err := p.q.makeImage(ctx, path, size); err != nil {
			p.log.Warn("disk pool: format an image", "sizeMiB", size, "err", err)
			return false
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			_ = os.Remove(path)
			return true
		}
		p.ready[size] = append(p.ready[size], path)
		p.mu.Unlock()
		p.report(size)
	}
	return true
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

// Close stops the refill and deletes every image the pool holds; Create
// then formats images as it would without a pool. Safe to repeat.
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
			if err := os.Remove(img); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	for _, s := range p.sizes {
		p.report(s.SizeMiB)
	}
	return errors.Join(errs...)
}

// claim renames a pooled image of sizeMiB to img when the task has no
// image yet; false means Create formats its own. An image that cannot be
// handed over is deleted, never put back.
func (p *DiskPool) claim(img string, sizeMiB int64) bool {
	if _, err := os.Stat(img); err == nil {
		return false
	}
	src, ok := p.take(sizeMiB)
	if !ok {
		return false
	}
	err := os.MkdirAll(filepath.Dir(img), 0o700)
	if err == nil {
		err = os.Rename(src, img)
	}
	if err != nil {
		p.log.Warn("disk pool: hand-over failed, formatting a fresh image", "image", img, "err", err)
		_ = os.Remove(src)
		return false
	}
	return true
}
