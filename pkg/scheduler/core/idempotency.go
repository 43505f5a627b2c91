package core

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/containerd/errdefs"

	"github.com/titus-agent/titus-agent/pkg/scheduler/model"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// Idempotent submits. A client that retries a submit whose answer it
// lost (a timeout, a leader change) sends the same idempotency key: the
// scheduler answers with the job the first call created instead of
// creating a second. Keys are kept per caller (a digest of its
// principal): another tenant's equal key neither finds nor blocks the
// first caller's job. The key is written with the job record in one
// fenced transaction, and every leader loads them.

// IdempotencyKeyTTL is how long a submit's idempotency key names its job.
const IdempotencyKeyTTL = 24 * time.Hour

// MaxIdempotencyKeyLen bounds a key (printable ASCII).
const MaxIdempotencyKeyLen = 128

// Bounds of the keys held (each for IdempotencyKeyTTL): a caller that
// submits and kills in a loop would otherwise grow etcd by one key per
// submit for a day, towards its space quota, whose NOSPACE alarm stops
// every tenant's writes. Past either bound a keyed submit is refused
// (ResourceExhausted) until keys expire. 500,000 keys are about 250 MB.
const (
	MaxIdempotencyKeysPerCaller = 50_000
	MaxIdempotencyKeys          = 500_000
)

// The bounds in force (tests lower them).
var maxKeysPerCaller, maxKeys = MaxIdempotencyKeysPerCaller, MaxIdempotencyKeys

// ErrTooManyKeys refuses a keyed submit past a bound above.
var ErrTooManyKeys = errdefs.ErrResourceExhausted.WithMessage("too many idempotency keys")

// idemPruneEvery is how often expired keys are removed.
const idemPruneEvery = 30 * time.Second

// Submission is one submit call.
type Submission struct {
	Spec model.JobSpec
	// Caller is the authenticated principal ("" without authentication);
	// Key the idempotency key it sent ("" = none); Digest a digest of the
	// spec as it was sent (a retry must send the same spec).
	Caller, Key string
	Digest      []byte
}

// idemEntry is one caller's key as the leader knows it.
type idemEntry struct {
	k model.IdempotencyKey
	// busy: a submit with it is being written.
	busy bool
	// tried: a submit with it wrote this record and failed, perhaps after
	// it committed; a retry writes the same record (same job id) again, so
	// there is one job whichever way the first write went.
	tried *model.Job
}

func digestHex(s string) string {
	d := sha256.Sum256([]byte(s))
	return hex.EncodeToString(d[:])
}

// CheckIdempotencyKey refuses a key that is too long or not printable ASCII.
func CheckIdempotencyKey(key string) error {
	ck := &task.Checker{}
	if len(key) > MaxIdempotencyKeyLen {
		ck.Failf("idempotency_key", "at most %d characters, got %d", MaxIdempotencyKeyLen, len(key))
	}
	for _, r := range key {
		if r < 0x21 || r > 0x7e {
			ck.Failf("idempotency_key", "printable ASCII without spaces only")
			break
		}
	}
	if f := ck.Fields(); len(f) > 0 {
		return &ValidationError{Fields: f}
	}
	return nil
}

// claimKey finds or makes the entry of s's key and marks it busy. It
// returns the job id when the key already created a job from the same
// spec. Callers hold c.mu.
func (c *Core) claimKey(s *Submission, now time.Time) (*idemEntry, string, error) {
	scope, key := digestHex(s.Caller), digestHex(s.Key)
	id := scope + "/" + key
	e := c.idem[id]
	if e != nil && !now.Before(e.k.Expires) && !e.busy {
		c.dropKey(id)
		e = nil
	}
	switch {
	case e == nil:
		if err := c.checkKeyBounds(scope, now); err != nil {
			return nil, "", err
		}
		e = &idemEntry{k: model.IdempotencyKey{Scope: scope, Key: key, SpecDigest: s.Digest}}
		c.putKey(id, e)
	case !bytes.Equal(e.k.SpecDigest, s.Digest):
		what := "is being used by another submit"
		if e.k.JobID != "" {
			what = "created job " + e.k.JobID
		}
		return nil, "", fmt.Errorf("%w: idempotency_key: %s from another spec; use a new key for a new job", model.ErrIdempotencyConflict, what)
	case e.busy:
		return nil, "", fmt.Errorf("%w: a submit with this idempotency_key is being written; retry", errdefs.ErrUnavailable)
	case e.tried == nil:
		return nil, e.k.JobID, nil // created: the same job
	}
	e.busy = true
	return e, "", nil
}

// checkKeyBounds refuses a new key of scope past the bounds. Callers
// hold c.mu.
func (c *Core) checkKeyBounds(scope string, now time.Time) error {
	if c.idemScopes[scope] >= maxKeysPerCaller || len(c.idem) >= maxKeys {
		c.expireKeys(now)
	}
	if n := c.idemScopes[scope]; n >= maxKeysPerCaller {
		return fmt.Errorf("%w: idempotency_key: this caller holds %d keys of the last %s (at most %d); wait for them to expire", ErrTooManyKeys, n, IdempotencyKeyTTL, maxKeysPerCaller)
	}
	if n := len(c.idem); n >= maxKeys {
		return fmt.Errorf("%w: idempotency_key: the scheduler holds %d keys of the last %s (at most %d); wait for them to expire", ErrTooManyKeys, n, IdempotencyKeyTTL, maxKeys)
	}
	return nil
}

// expireKeys takes the expired keys out of the counts, for pruneKeys to
// remove from the store. It scans only once a key may have expired since
// its last scan, so that a caller at its bound cannot make every call a
// scan of every key. Callers hold c.mu.
func (c *Core) expireKeys(now time.Time) {
	if now.Before(c.idemScanAt) {
		return
	}
	var next time.Time
	for id, e := range c.idem {
		switch {
		case e.busy:
		case !now.Before(e.k.Expires):
			k := e.k
			c.idemExpired = append(c.idemExpired, &k)
			c.dropKey(id)
		case next.IsZero() || e.k.Expires.Before(next):
			next = e.k.Expires
		}
	}
	c.idemScanAt = next
}

// putKey and dropKey add and remove a key, counting each caller's.
// Callers hold c.mu.
func (c *Core) putKey(id string, e *idemEntry) {
	if c.idem == nil {
		c.idem = map[string]*idemEntry{}
	}
	if c.idemScopes == nil {
		c.idemScopes = map[string]int{}
	}
	if c.idem[id] == nil {
		c.idemScopes[e.k.Scope]++
	}
	c.idem[id] = e
}

func (c *Core) dropKey(id string) {
	e := c.idem[id]
	if e == nil {
		return
	}
	delete(c.idem, id)
	if c.idemScopes[e.k.Scope]--; c.idemScopes[e.k.Scope] <= 0 {
		delete(c.idemScopes, e.k.Scope)
	}
}

// loadKeys makes the stored keys the leader's. Callers hold c.mu.
func (c *Core) loadKeys(ctx context.Context, now time.Time) error {
	c.idem = map[string]*idemEntry{}
	c.idemScopes = map[string]int{}
	ks, ok := c.st.(keyStore)
	if !ok {
		return nil
	}
	recs, err := ks.IdempotencyKeys(ctx)
	if err != nil {
		return err
	}
	c.idemExpired, c.idemScanAt = nil, time.Time{}
	for _, k := range recs {
		if now.Before(k.Expires) {
			c.putKey(k.Scope+"/"+k.Key, &idemEntry{k: *k})
		} else {
			c.idemExpired = append(c.idemExpired, k) // for pruneKeys to remove
		}
	}
	return nil
}

// keyStore is the store's part for idempotency keys.
type keyStore interface {
	PutJobWithKey(ctx context.Context, j *model.Job, k *model.IdempotencyKey) error
	IdempotencyKeys(ctx context.Context) ([]*model.IdempotencyKey, error)
	DeleteIdempotencyKeys(ctx context.Context, ks []*model.IdempotencyKey) error
}

// pruneKeys forgets expired keys and removes them from the store.
func (c *Core) pruneKeys(ctx context.Context, now time.Time) {
	ks, ok := c.st.(keyStore)
	if !ok {
		return
	}
	c.mu.Lock()
	if now.Before(c.idemPruneAt) {
		c.mu.Unlock()
		return
	}
	c.idemPruneAt = now.Add(idemPruneEvery)
	gone := c.idemExpired
	c.idemExpired = nil
	for id, e := range c.idem {
		if !e.busy && !now.Before(e.k.Expires) {
			c.dropKey(id)
			k := e.k
			gone = append(gone, &k)
		}
	}
	c.mu.Unlock()
	if len(gone) == 0 {
		return
	}
	if err := ks.DeleteIdempotencyKeys(ctx, gone); err != nil {
		c.fenceFailed(err)
		if !errors.Is(err, model.ErrNotLeader) && ctx.Err() == nil {
			c.log.Warn("remove expired idempotency keys", "keys", len(gone), "err", err)
		}
	}
}
