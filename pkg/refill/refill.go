// Package refill runs the background loop that keeps a pool of ready-made
// objects full: fill until full, then sleep until kicked; after a failed
// fill, try again after a delay. The agent's launch pools (network
// namespaces, formatted disks) share it, and a Gate through which refill
// work yields to launches on their critical path.
package refill

import (
	"context"
	"sync"
	"time"
)

// Loop is one pool's refill loop. The zero value is not usable; use New.
type Loop struct {
	retry  time.Duration
	gate   *Gate
	kick   chan struct{}
	cancel context.CancelFunc
	done   chan struct{}
}

// New returns a loop that retries a failed fill after retry.
func New(retry time.Duration) *Loop {
	return &Loop{retry: retry, kick: make(chan struct{}, 1)}
}

// Start calls fill in the background until ctx ends or Stop. fill makes
// objects until the pool is full and returns true, or false when making
// one failed. After a success the loop waits for Kick; after a failure, for
// Kick or the retry delay.
func (l *Loop) Start(ctx context.Context, fill func(context.Context) bool) {
	ctx, l.cancel = context.WithCancel(ctx)
	l.done = make(chan struct{})
	go func() {
		defer close(l.done)
		for {
			var retry <-chan time.Time // nil: wait for a kick
			if !fill(ctx) {
				retry = time.After(l.retry)
			}
			select {
			case <-ctx.Done():
				return
			case <-l.kick:
			case <-retry:
			}
		}
	}()
}

// YieldTo makes Yield wait on g; call it before Start.
func (l *Loop) YieldTo(g *Gate) { l.gate = g }

// Yield is called by fill before it makes each object: it returns once no
// launch is on its critical path (Gate.Wait), at once without a gate.
func (l *Loop) Yield(ctx context.Context) { l.gate.Wait(ctx) }

// Kick asks for a fill (an object was taken); it never blocks.
func (l *Loop) Kick() {
	select {
	case l.kick <- struct{}{}:
	default:
	}
}

// Stop ends the loop and waits for a fill under way to return. Safe to
// repeat, and to call without Start.
func (l *Loop) Stop() {
	if l.cancel != nil {
		l.cancel()
		<-l.done
	}
}

// MaxYield bounds how long refill work waits for launches to end, so that
// a steady stream of launches cannot keep a pool empty for ever.
const MaxYield = 2 * time.Second

// Gate counts the launches on their critical path (from accepted to
// running). Pool work (mkfs, namespaces and veths) takes the same two
// cores and disk as the launch it would race, so refill loops wait on the
// gate before each object they make. The zero value is ready to use.
type Gate struct {
	mu   sync.Mutex
	busy int
	idle chan struct{} // closed when busy drops to 0; nil while idle
	// maxYield, if set, replaces MaxYield (tests).
	maxYield time.Duration
}

// Enter marks a launch on its critical path until leave is called; leave
// may be called more than once.
func (g *Gate) Enter() (leave func()) {
	if g == nil {
		return func() {}
	}
	g.mu.Lock()
	if g.busy == 0 {
		g.idle = make(chan struct{})
	}
	g.busy++
	g.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			g.mu.Lock()
			defer g.mu.Unlock()
			if g.busy--; g.busy == 0 {
				close(g.idle)
				g.idle = nil
			}
		})
	}
}

// InFlight is how many launches are on their critical path.
func (g *Gate) InFlight() int {
	if g == nil {
		return 0
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.busy
}

// Wait returns once no launch is in flight, after MaxYield, or when ctx
// ends; at once on a nil gate.
func (g *Gate) Wait(ctx context.Context) {
	if g == nil {
		return
	}
	g.mu.Lock()
	idle, max := g.idle, g.maxYield
	g.mu.Unlock()
	if idle == nil {
		return
	}
	if max == 0 {
		max = MaxYield
	}
	t := time.NewTimer(max)
	defer t.Stop()
	select {
	case <-idle:
	case <-t.C:
	case <-ctx.Done():
	}
}
