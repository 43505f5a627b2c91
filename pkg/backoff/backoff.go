// Package backoff is the agent's one owner of retry delays: exponential
// growth from a base, a cap, and a jitter mode. Every loop that retries a
// call to a remote service (EC2, STS, the scheduler) uses a jittered policy
// so that a fleet of agents does not retry in lockstep; loops that only wait
// for a local daemon (containerd) may use None.
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Jitter says how a delay is randomized.
type Jitter int

const (
	// None waits exactly the exponential delay d.
	None Jitter = iota
	// Full waits a uniformly random time in [0, d].
	Full
	// Equal waits a uniformly random time in [d/2, d]: still spread out,
	// but never much shorter than the exponential step.
	Equal
)

// Policy shapes the delays of one retry loop.
type Policy struct {
	// Base is the delay before the first retry (attempt 0); each further
	// attempt doubles it. Base must be positive.
	Base time.Duration
	// Max caps the delay. Zero means no cap.
	Max time.Duration
	// Jitter randomizes each delay.
	Jitter Jitter
}

// randN is rand.N, replaced by tests to pin the jitter.
var randN = rand.N[time.Duration]

// Ceil is the un-jittered delay before retry attempt (0-based): Base·2^attempt,
// capped at Max. It never overflows.
func (p Policy) Ceil(attempt int) time.Duration {
	d := p.Base
	for i := 0; i < attempt && (p.Max <= 0 || d < p.Max); i++ {
		if d > (1<<62)/2 {
			break
		}
		d *= 2
	}
	if p.Max > 0 {
		d = min(d, p.Max)
	}
	return min(max(d, 0), 1<<62)
}

// Delay is the jittered delay before retry attempt (0-based).
func (p Policy) Delay(attempt int) time.Duration {
	d := p.Ceil(attempt)
	switch p.Jitter {
	case Full:
		return randN(d + 1)
	case Equal:
		return d/2 + randN(d-d/2+1)
	default:
		return d
	}
}

// Backoff is a Policy with its attempt counter, for loops that retry until
// success. The zero attempt count is the first retry. Not safe for
// concurrent use.
type Backoff struct {
	Policy
	n int
}

// New returns a Backoff at its first attempt.
func New(p Policy) *Backoff { return &Backoff{Policy: p} }

// Next returns the delay before the next retry and counts the attempt.
func (b *Backoff) Next() time.Duration {
	d := b.Delay(b.n)
	b.n++
	return d
}

// Reset starts over from Base, as after a success.
func (b *Backoff) Reset() { b.n = 0 }

// Attempts is how many delays Next has handed out since the last Reset.
func (b *Backoff) Attempts() int { return b.n }

// Wait sleeps for Next() unless ctx ends first; it reports whether the
// full delay passed.
func (b *Backoff) Wait(ctx context.Context) bool { return Sleep(ctx, b.Next()) }

// Sleep waits d unless ctx ends first; it reports whether the full delay
// passed.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
