package vpc

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/titus-agent/titus-agent/pkg/refill"
	"github.com/vishvananda/netlink"
)

// poolRetry is how long a pool waits to fill again after a failure.
const poolRetry = 5 * time.Second

// PoolStats is told how a pool of pre-made objects fares (the agent's
// metrics): every take, hit or miss, and the number ready.
type PoolStats interface {
	PoolTake(pool string, hit bool)
	PoolReady(pool string, n int)
}

// PoolNetNS names the namespace pool in PoolStats.
const PoolNetNS = "netns"

// warmVethPrefix starts the host end of a pooled namespace's veth: "tw",
// then 4 hex digits of the pool's directory (so one agent's start never
// touches another agent's pool) and 8 random ones, 14 characters in all.
// A task's own veth ("tt" and 10 hex digits) never has this shape.
const warmVethPrefix = "tw"

// warmNS is one pooled namespace: mounted at path, its veth's host end
// (down, on no bridge) named veth, its other end eth0 inside.
type warmNS struct{ path, veth string }

// NetNSPool keeps up to size network namespaces, each with its veth pair,
// made ahead of the launches that need them: Setup takes one (renaming the
// host end to the task's veth name and bind-mounting the namespace at the
// task's path) instead of making them on the launch's critical path, and
// the pool refills itself in the background.
//
// Pooled namespaces are only ever fresh: one leaves the pool at most once,
// into one task, and goes with that task's teardown like a namespace made
// for it. The pool's namespaces are mounted under their own directory and
// their veths carry a pool-specific prefix, so the task reaper never takes
// them for a task's; Start removes whatever an earlier agent process left
// there (kill -9), Close removes what the pool holds.
//
// Only the namespace and the veth are pooled, not the address: which
// address (and in ec2 mode, which ENI and security groups) a task gets
// depends on its request, and both providers hand addresses out of their
// own local pools without a round trip.
type NetNSPool struct {
	dp    *DataPlane
	size  int
	dir   string
	tag   string
	stats PoolStats
	log   *slog.Logger
	// random gives the 8 hex digits naming a new pooled namespace.
	random func() (string, error)
	refill *refill.Loop
	// prepare and release: see SetPrepare.
	prepare func(string) error
	release func(string)

	mu     sync.Mutex
	ready  []warmNS
	closed bool
}

// NetNSPoolConfig configures EnablePool.
type NetNSPoolConfig struct {
	// Size is how many namespaces to keep ready; 0 disables the pool.
	Size int
	// Dir holds the pooled namespaces' bind mounts; it must not be the
	// task namespaces' directory.
	Dir   string
	Stats PoolStats
	Log   *slog.Logger
	// Launches, if set, makes the refill wait while launches are on their
	// critical path (refill.Gate).
	Launches *refill.Gate
}

// EnablePool gives Setup a pool of ready namespaces. It removes what an
// earlier agent process's pool left (PurgePool); call Start to fill it and
// Close to release it.
func (d *DataPlane) EnablePool(cfg NetNSPoolConfig) (*NetNSPool, error) {
	if cfg.Size <= 0 {
		return nil, errors.New("vpc: namespace pool size must be positive")
	}
	if cfg.Dir == "" || filepath.Clean(cfg.Dir) == filepath.Clean(d.cfg.NetNSDir) {
		return nil, fmt.Errorf("vpc: namespace pool dir %q: must be set and differ from the task netns dir", cfg.Dir)
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	p := &NetNSPool{dp: d, size: cfg.Size, dir: cfg.Dir, tag: poolTag(cfg.Dir), stats: cfg.Stats, log: cfg.Log,
		refill: refill.New(poolRetry), random: randomHex}
	p.refill.YieldTo(cfg.Launches)
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("vpc: namespace pool: %w", err)
	}
	// What cannot be removed now is logged, not fatal: it is in no
	// task's way, and the next start tries again.
	left, err := d.PurgePool(cfg.Dir)
	if len(left) > 0 {
		p.log.Warn("removed pooled namespaces an earlier agent process left", "removed", left)
	}
	if err != nil {
		p.log.Error("namespace pool: remove what an earlier agent process left", "err", err)
	}
	d.pool = p
	p.report()
	return p, nil
}

// poolTag is 4 hex digits of the pool's directory.
func poolTag(dir string) string { return shortHash(filepath.Clean(dir))[:4] }

// PoolVethPrefix starts the host veth names of the namespace pool in dir;
// each is this and 8 hex digits.
func PoolVethPrefix(dir string) string { return warmVethPrefix + poolTag(dir) }

// PurgePool removes every namespace mounted in a namespace pool's
// directory and every host veth with that pool's prefix, and returns what
// it removed: what an agent process killed with a full pool left. The
// agent calls it at start whether or not the pool is enabled now, so
// turning the pool off never strands what it held.
func (d *DataPlane) PurgePool(dir string) ([]string, error) {
	var removed []string
	var errs []error
	prefix := PoolVethPrefix(dir)
	links, err := d.host.LinkList()
	if err != nil {
		errs = append(errs, fmt.Errorf("list links: %w", err))
	}
	for _, l := range links {
		if n := l.Attrs().Name; strings.HasPrefix(n, prefix) && len(n) == len(prefix)+8 {
			if err := d.host.LinkDel(l); err != nil {
				errs = append(errs, fmt.Errorf("pooled veth %s: %w", n, err))
				continue
			}
			removed = append(removed, "veth "+n)
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	for _, e := range entries {
		path := filepath.Join(dir, e.Name())
		// The host end may have been renamed already (a hand-over cut
		// short): it goes by its peer, not by its name, and now, not
		// whenever the kernel gets round to the namespace.
		if host := d.warmHostEnd(path, links); host != nil {
			if err := d.host.LinkDel(host); err == nil {
				removed = append(removed, "veth "+host.Attrs().Name)
			}
		}
		if err := d.ns.Remove(path); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, "netns "+e.Name())
	}
	if len(errs) > 0 {
		return removed, fmt.Errorf("vpc: purge namespace pool: %w", errors.Join(errs...))
	}
	return removed, nil
}

// warmHostEnd is the host end, among links, of the veth whose other end
// is eth0 in the namespace at path; nil if there is none.
func (d *DataPlane) warmHostEnd(path string, links []netlink.Link) netlink.Link {
	if !d.ns.Exists(path) {
		return nil
	}
	inner, _, done, err := d.ns.Open(path)
	if err != nil {
		return nil
	}
	defer done()
	eth, err := inner.LinkByName("eth0")
	if err != nil || eth.Type() != "veth" || eth.Attrs().ParentIndex == 0 {
		return nil
	}
	for _, l := range links {
		if l.Attrs().Index == eth.Attrs().ParentIndex && l.Type() == "veth" {
			return l
		}
	}
	return nil
}

// SetPrepare, called before Start, has each new pooled namespace readied
// further by prepare (the metadata listeners), given its path; an error
// discards the namespace. release undoes it for a namespace about to be
// removed, whether still pooled or handed to a task (Teardown), given its
// path then.
func (p *NetNSPool) SetPrepare(prepare func(nsPath string) error, release func(nsPath string)) {
	p.prepare, p.release = prepare, release
}

// Start fills the pool in the background until Close.
func (p *NetNSPool) Start(ctx context.Context) { p.refill.Start(ctx, p.fill) }

// fill makes namespaces until the pool is full; false if making one failed.
func (p *NetNSPool) fill(ctx context.Context) bool {
	for ctx.Err() == nil {
		p.mu.Lock()
		full := p.closed || len(p.ready) >= p.size
		p.mu.Unlock()
		if full {
			return true
		}
		p.refill.Yield(ctx)
		if ctx.Err() != nil {
			return true
		}
		w, err := p.newWarm()
		if err == nil {
			err = p.dp.makeWarm(w)
		}
		if err == nil && p.prepare != nil {
			if err = p.prepare(w.path); err != nil {
				err = errors.Join(err, p.dp.discardWarm(w, w.veth))
			}
		}
		if err != nil {
			p.log.Warn("namespace pool: make a namespace", "err", err)
			return false
		}
		p.mu.Lock()
		p.ready = append(p.ready, w)
		p.mu.Unlock()
		p.report()
	}
	return true
}

func randomHex() (string, error) {
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

func (p *NetNSPool) newWarm() (warmNS, error) {
	r, err := p.random()
	if err != nil {
		return warmNS{}, err
	}
	return warmNS{path: filepath.Join(p.dir, "w"+r), veth: warmVethPrefix + p.tag + r}, nil
}

// take hands out a ready namespace, if there is one, and asks for a refill.
func (p *NetNSPool) take() (warmNS, bool) {
	p.mu.Lock()
	var w warmNS
	ok := !p.closed && len(p.ready) > 0
	if ok {
		w = p.ready[0]
		p.ready = p.ready[1:]
	}
	p.mu.Unlock()
	if p.stats != nil {
		p.stats.PoolTake(PoolNetNS, ok)
	}
	p.report()
	p.refill.Kick()
	return w, ok
}

// Ready is how many namespaces the pool holds.
func (p *NetNSPool) Ready() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.ready)
}

func (p *NetNSPool) report() {
	if p.stats != nil {
		p.stats.PoolReady(PoolNetNS, p.Ready())
	}
}

// Close stops the refill and removes every namespace the pool holds; Setup
// then makes namespaces as it would without a pool. Safe to repeat.
func (p *NetNSPool) Close() error {
	p.refill.Stop()
	p.mu.Lock()
	p.closed = true
	ready := p.ready
	p.ready = nil
	p.mu.Unlock()
	var errs []error
	for _, w := range ready {
		if err := p.dp.discardWarm(w, w.veth); err != nil {
			errs = append(errs, err)
		}
	}
	p.report()
	return errors.Join(errs...)
}

// makeWarm makes a pooled namespace: the namespace, lo up, and the veth
// pair with eth0 born inside (as Setup makes it) and the host end down.
func (d *DataPlane) makeWarm(w warmNS) error {
	if err := d.ns.Ensure(w.path); err != nil {
		return err
	}
	inner, fd, done, err := d.ns.Open(w.path)
	if err != nil {
		return errors.Join(err, d.ns.Remove(w.path))
	}
	defer done()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: w.veth, MTU: d.cfg.MTU}, PeerName: "eth0", PeerNamespace: netlink.NsFd(fd)}
	if err := d.host.LinkAdd(veth); err != nil {
		return errors.Join(fmt.Errorf("vpc: pooled veth: %w", err), d.ns.Remove(w.path))
	}
	if lo, err := inner.LinkByName("lo"); err == nil {
		_ = inner.LinkSetUp(lo)
	}
	return nil
}

// discardWarm removes a pooled namespace and its veth, whose host end is
// now named veth. The veth goes first and explicitly: a namespace's links
// go with it only once the kernel gets round to it.
func (d *DataPlane) discardWarm(w warmNS, veth string) error {
	d.pool.releaseAt(w.path)
	var errs []error
	if l, err := d.host.LinkByName(veth); err == nil {
		if err := d.host.LinkDel(l); err != nil {
			errs = append(errs, fmt.Errorf("pooled veth %s: %w", veth, err))
		}
	}
	if err := d.ns.Remove(w.path); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// claimWarm gives the task a pooled namespace when the pool has one and
// the task has no namespace yet; false means Setup makes its own. A pooled
// namespace that cannot be handed over is removed, never put back.
func (d *DataPlane) claimWarm(taskID string) bool {
	nsPath := d.NetNSPath(taskID)
	if d.pool == nil || d.ns.Exists(nsPath) {
		return false
	}
	w, ok := d.pool.take()
	if !ok {
		return false
	}
	veth := w.veth
	err := func() error {
		l, err := d.host.LinkByName(w.veth)
		if err != nil {
			return fmt.Errorf("pooled veth %s: %w", w.veth, err)
		}
		if err := d.host.LinkSetName(l, HostVeth(taskID)); err != nil {
			return fmt.Errorf("rename pooled veth %s: %w", w.veth, err)
		}
		veth = HostVeth(taskID)
		return d.ns.Adopt(w.path, nsPath)
	}()
	if err != nil {
		d.pool.log.Warn("namespace pool: hand-over failed, making a fresh namespace", "task", taskID, "err", err)
		d.pool.releaseAt(nsPath) // the namespace may be there already
		if derr := d.discardWarm(w, veth); derr != nil {
			d.pool.log.Warn("namespace pool: remove", "err", derr)
		}
		_ = d.ns.Remove(nsPath)
		return false
	}
	return true
}

// releaseAt undoes Prepare for the namespace at path, if the pool has a
// Release and a namespace is there.
func (p *NetNSPool) releaseAt(path string) {
	if p != nil && p.release != nil && p.dp.ns.Exists(path) {
		p.release(path)
	}
}
