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
		delete(c.idem, id)
		e = nil
	}
	switch {
	case e == nil:
		e = &idemEntry{k: model.IdempotencyKey{Scope: scope, Key: key, SpecDigest: s.Digest}}
		if c.idem == nil {
			c.idem = map[string]*idemEntry{}
		}
		c.idem[id] = e
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

// loadKeys makes the stored keys the leader's. Callers hold c.mu.
func (c *Core) loadKeys(ctx context.Context, now time.Time) error {
	c.idem = map[string]*idemEntry{}
	ks, ok := c.st.(keyStore)
	if !ok {
		return nil
	}
	recs, err := ks.IdempotencyKeys(ctx)
	if err != nil {
		return err
	}
	for _, k := range recs {
		if now.Before(k.Expires) {
			c.idem[k.Scope+"/"+k.Key] = &idemEntry{k: *k}
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
	var gone []*model.IdempotencyKey
	for id, e := range c.idem {
		if !e.busy && !now.Before(e.k.Expires) {
			delete(c.idem, id)
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
