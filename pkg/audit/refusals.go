package audit

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Defaults of the per-principal bound on stored refusals.
const (
	DefaultRefusalBurst  = 100
	DefaultRefusalEvery  = 10 * time.Minute
	DefaultRefusalWindow = time.Hour
)

// refusedCodes are the results of a call turned away before it acted:
// the records the per-principal bound applies to. A call that was let in
// is always stored, whatever its end (an exec session the caller ended is
// Canceled, one whose agent went away Unavailable).
var refusedCodes = map[string]bool{
	"PermissionDenied": true, "Unauthenticated": true, "NotFound": true, "InvalidArgument": true,
	"ResourceExhausted": true, "FailedPrecondition": true, "AlreadyExists": true, "OutOfRange": true, "Unimplemented": true,
}

// AggregateMethod is the Method of a record that counts refusals not
// stored one by one.
const AggregateMethod = "(refusals)"

// Bounds of the limiter's own memory: principals tracked at once (past
// it, new principals share one bucket, overflowPrincipal), and the kinds
// (method and code) one aggregate names.
const (
	maxTrackedPrincipals = 10_000
	maxAggregateKinds    = 16
	overflowPrincipal    = "(other principals)"
)

// refusalBucket is one principal's token bucket and the refusals counted
// over it in the current window.
type refusalBucket struct {
	lim *rate.Limiter
	// n refusals were not stored since first (0: none); last is the latest.
	n           int
	first, last time.Time
	// kinds counts them by "Method Code"; app and job are theirs when all
	// share one ("" otherwise).
	kinds    map[string]int
	app, job string
	mixed    bool
}

// refusals bounds the refusals each principal stores: a bucket of burst
// records refilled one per every; beyond it refusals are counted, and one
// record per principal and window stands for them. The structured log has
// every one.
type refusals struct {
	burst         int
	every, window time.Duration

	mu sync.Mutex
	m  map[string]*refusalBucket
}

func newRefusals(burst int, every, window time.Duration) *refusals {
	return &refusals{burst: burst, every: every, window: window, m: map[string]*refusalBucket{}}
}

// admit reports whether r may be stored one by one: calls that were not
// refused (refusedCodes) always are; a refusal when its principal's
// bucket has a token. A refusal that may not is counted in its
// principal's aggregate.
func (s *refusals) admit(r *Record, now time.Time) bool {
	if !refusedCodes[r.Code] {
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	key := r.Principal
	b := s.m[key]
	if b == nil {
		if len(s.m) >= maxTrackedPrincipals {
			key = overflowPrincipal
			b = s.m[key]
		}
		if b == nil {
			b = &refusalBucket{lim: rate.NewLimiter(rate.Every(s.every), s.burst)}
			s.m[key] = b
		}
	}
	if b.lim.AllowN(now, 1) {
		return true
	}
	if b.n == 0 {
		b.first, b.kinds, b.app, b.job, b.mixed = now, map[string]int{}, r.Application, r.JobID, false
	}
	b.n++
	b.last = now
	kind := r.Method + " " + r.Code
	if _, ok := b.kinds[kind]; ok || len(b.kinds) < maxAggregateKinds {
		b.kinds[kind]++
	} else {
		b.kinds["other"]++
	}
	if b.app != r.Application || b.job != r.JobID {
		b.mixed = true
	}
	return false
}

// due returns the aggregate records of the windows that ended by now
// (every window when all), and forgets principals whose bucket is full
// again with nothing counted.
func (s *refusals) due(now time.Time, all bool) []Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Record
	for p, b := range s.m {
		if b.n > 0 && (all || now.Sub(b.first) >= s.window) {
			out = append(out, b.aggregate(p, s))
			b.n, b.kinds = 0, nil
		}
		if b.n == 0 && b.lim.TokensAt(now) >= float64(s.burst) {
			delete(s.m, p)
		}
	}
	slices.SortFunc(out, func(a, b Record) int { return a.Time.Compare(b.Time) })
	return out
}

func (b *refusalBucket) aggregate(principal string, s *refusals) Record {
	kinds := slices.SortedFunc(maps.Keys(b.kinds), func(x, y string) int {
		if c := b.kinds[y] - b.kinds[x]; c != 0 {
			return c
		}
		return strings.Compare(x, y)
	})
	parts := make([]string, len(kinds))
	codes := map[string]bool{}
	for i, k := range kinds {
		parts[i] = fmt.Sprintf("%s ×%d", k, b.kinds[k])
		if _, code, ok := strings.Cut(k, " "); ok {
			codes[code] = true
		}
	}
	r := Record{Time: b.first, Ended: b.last, Principal: principal, Method: AggregateMethod, Count: b.n,
		Message: fmt.Sprintf("%d refusals beyond the principal's limit (%d, then one per %s) were not stored one by one; each is in the structured log: %s",
			b.n, s.burst, s.every, strings.Join(parts, ", "))}
	if len(codes) == 1 && b.kinds["other"] == 0 {
		for c := range codes {
			r.Code = c
		}
	} else {
		r.Code = "Various"
	}
	if !b.mixed {
		r.Application, r.JobID = b.app, b.job
	}
	return r
}
