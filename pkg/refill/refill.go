// Package refill runs the background loop that keeps a pool of ready-made
// objects full: fill until full, then sleep until kicked; after a failed
// fill, try again after a delay. The agent's launch pools (network
// namespaces, formatted disks) share it.
package refill

import (
	"context"
	"time"
)

// Loop is one pool's refill loop. The zero value is not usable; use New.
type Loop struct {
	retry  time.Duration
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
