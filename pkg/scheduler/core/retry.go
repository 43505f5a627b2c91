package core

import (
	"math/rand/v2"
	"time"

	"github.com/titus-agent/titus-agent/pkg/scheduler/model"
)

// Defaults of a retry policy's fields left at zero.
const (
	defaultRetryDelay    = time.Second
	defaultRetryMaxDelay = 5 * time.Minute
	defaultResetAfter    = 5 * time.Minute
)

// retryDelay is how long the n-th consecutive failure (n >= 1) waits before
// the next attempt: the policy's delay, never less than the crash-loop floor
// (base*2^(n-3) from the third failure on, capped), so no job hot-loops.
func retryDelay(p model.RetryPolicy, n uint32, floorBase, floorCap time.Duration) time.Duration {
	var d time.Duration
	base := time.Duration(p.DelayMs) * time.Millisecond
	if base <= 0 {
		base = defaultRetryDelay
	}
	maxD := time.Duration(p.MaxDelayMs) * time.Millisecond
	if maxD <= 0 {
		maxD = defaultRetryMaxDelay
	}
	switch p.Kind {
	case model.RetryDelayed:
		d = base
	case model.RetryExponential:
		d = expo(base, n-1, maxD)
	}
	if n >= 3 {
		d = max(d, expo(floorBase, n-3, floorCap))
	}
	return d
}

// expo is base*2^k, capped (and safe from overflow).
func expo(base time.Duration, k uint32, limit time.Duration) time.Duration {
	d := base
	for i := uint32(0); i < k && d < limit; i++ {
		d *= 2
	}
	return min(d, limit)
}

// resetAfter is how long a task must run for its slot's failure counter to reset.
func resetAfter(p model.RetryPolicy) time.Duration {
	if s := p.ResetAfterSeconds; s > 0 {
		return time.Duration(s) * time.Second
	}
	return defaultResetAfter
}

// Backoff of lost tasks: the first loss of a slot is replaced at once; the
// n-th consecutive one waits lostBase*2^(n-2), capped at lostCap, jittered
// to [d/2, d] so that the tasks of one flapping host do not return in step.
// A task that ran lostResetAfter before it was lost starts the count again.
const (
	lostBase       = time.Second
	lostCap        = time.Minute
	lostResetAfter = time.Minute
)

// lostDelay is the wait before replacing the n-th consecutive lost attempt (n >= 1).
func lostDelay(n uint32) time.Duration {
	if n <= 1 {
		return 0
	}
	d := expo(lostBase, n-2, lostCap)
	return d/2 + rand.N(d/2+1)
}

// refusedAgain counts one more consecutive NoNetworkCapacity refusal of
// the slot's task and returns the wait before placing it again: none the
// first time (placement's view of the host was stale; it is corrected by
// the host's next heartbeat), then lostDelay's capped, jittered backoff,
// so that a stuck or hostile agent refusing every task, or a placement
// that keeps misjudging a host, cannot make a slot requeue once per
// heartbeat forever. A refusal is still no failure (no retry is counted,
// no quarantine strike); any other end of the slot's task starts over.
func (sl *slot) refusedAgain() time.Duration {
	sl.refused++
	return lostDelay(sl.refused)
}
