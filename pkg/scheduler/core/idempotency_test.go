package core

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/titus-agent/titus-agent/pkg/scheduler/model"
)

func keyed(spec model.JobSpec, caller, key, digest string) Submission {
	return Submission{Spec: spec, Caller: caller, Key: key, Digest: []byte(digest)}
}

// TestSubmitIdempotencyKey: the same caller's key with the same spec gives
// the same job, however often sent; with another spec it is refused;
// another caller's equal key is its own; bad keys are refused by field.
func TestSubmitIdempotencyKey(t *testing.T) {
	ts := newTestScheduler(t, Config{})
	spec := testSpec(&model.BatchJob{Size: 1}, 100)
	a, existing, err := ts.SubmitKeyed(ts.ctx, keyed(spec, "alice", "k1", "spec-1"))
	if err != nil || existing {
		t.Fatalf("first submit: %v existing=%v", err, existing)
	}
	again, existing, err := ts.SubmitKeyed(ts.ctx, keyed(spec, "alice", "k1", "spec-1"))
	if err != nil || again != a || !existing {
		t.Fatalf("retry: %q existing=%v err=%v, want %q", again, existing, err, a)
	}
	if n := ts.keys("jobs/"); n != 1 {
		t.Errorf("%d job records, want 1", n)
	}
	if n := ts.keys("idempotency/"); n != 1 {
		t.Errorf("%d key records, want 1", n)
	}
	other := testSpec(&model.BatchJob{Size: 2}, 100)
	_, _, err = ts.SubmitKeyed(ts.ctx, keyed(other, "alice", "k1", "spec-2"))
	if !errdefs.IsAlreadyExists(err) || !strings.Contains(err.Error(), a) || !strings.Contains(err.Error(), "idempotency_key") {
		t.Errorf("same key, another spec: %v, want AlreadyExists naming the key and job %s", err, a)
	}
	// Tenant B sends A's key (and A's spec): B gets a job of its own, and
	// learns nothing of A's.
	b, existing, err := ts.SubmitKeyed(ts.ctx, keyed(spec, "bob", "k1", "spec-1"))
	if err != nil || existing || b == a {
		t.Fatalf("bob with alice's key: %q existing=%v err=%v, want a new job", b, existing, err)
	}
	if _, existing, err := ts.SubmitKeyed(ts.ctx, keyed(other, "bob", "k2", "spec-2")); err != nil || existing {
		t.Fatalf("bob's own key: existing=%v err=%v", existing, err)
	}
	if got, _, err := ts.SubmitKeyed(ts.ctx, keyed(spec, "alice", "k1", "spec-1")); err != nil || got != a {
		t.Errorf("alice's retry after bob's: %q %v, want %q", got, err, a)
	}
	for _, key := range []string{strings.Repeat("x", 129), "has space", "tab\tkey", "ключ"} {
		_, _, err := ts.SubmitKeyed(ts.ctx, keyed(spec, "alice", key, "spec-1"))
		var ve *ValidationError
		if !errors.As(err, &ve) || !strings.Contains(err.Error(), "idempotency_key") {
			t.Errorf("key %q: %v, want a validation error naming idempotency_key", key, err)
		}
	}
}

// TestSubmitIdempotencyKeyLostAnswer: a write that committed but whose
// answer was lost fails the submit; the retry with the same key writes the
// same job again: one job. A new leader knows the key; it expires.
func TestSubmitIdempotencyKeyLostAnswer(t *testing.T) {
	ts := newTestScheduler(t, Config{})
	spec := testSpec(&model.BatchJob{Size: 1}, 100)
	g := ts.kv.losing(errors.New("answer lost"))
	if _, _, err := ts.SubmitKeyed(ts.ctx, keyed(spec, "alice", "k1", "spec-1")); err == nil {
		t.Fatal("submit whose answer was lost succeeded")
	}
	ts.kv.open(g, nil)
	if n := ts.keys("jobs/"); n != 1 {
		t.Fatalf("%d job records after the lost answer, want 1 (the write committed)", n)
	}
	id, _, err := ts.SubmitKeyed(ts.ctx, keyed(spec, "alice", "k1", "spec-1"))
	if err != nil {
		t.Fatalf("retry: %v", err)
	}
	if n := ts.keys("jobs/"); n != 1 || ts.stored(id) == nil {
		t.Fatalf("%d job records after the retry (job %s stored: %v), want the one", n, id, ts.stored(id) != nil)
	}
	if j := ts.job(id); j.State != model.JobAccepted {
		t.Fatalf("job %s: %v", id, j.State)
	}
	// A failed write (nothing committed) and its retry: one job too.
	g = ts.kv.failing(errors.New("refused"))
	if _, _, err := ts.SubmitKeyed(ts.ctx, keyed(spec, "alice", "k2", "spec-1")); err == nil {
		t.Fatal("submit with a failing store succeeded")
	}
	ts.kv.open(g, nil)
	id2, _, err := ts.SubmitKeyed(ts.ctx, keyed(spec, "alice", "k2", "spec-1"))
	if err != nil || id2 == id {
		t.Fatalf("retry of k2: %q %v", id2, err)
	}
	if n := ts.keys("jobs/"); n != 2 {
		t.Errorf("%d job records, want 2", n)
	}

	// A new leader loads the keys.
	if err := ts.Flush(ts.ctx); err != nil {
		t.Fatal(err)
	}
	c2, err := New(Config{}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	c2.clock = func() time.Time { return now }
	if err := c2.Load(ts.ctx, ts.st, nil); err != nil {
		t.Fatal(err)
	}
	if got, existing, err := c2.SubmitKeyed(ts.ctx, keyed(spec, "alice", "k1", "spec-1")); err != nil || got != id || !existing {
		t.Fatalf("the new leader: %q existing=%v %v, want %q", got, existing, err, id)
	}
	// Past the TTL the key is removed and names no job.
	now = now.Add(IdempotencyKeyTTL + time.Minute)
	c2.prune(ts.ctx)
	if n := ts.keys("idempotency/"); n != 0 {
		t.Errorf("%d key records after expiry, want 0", n)
	}
	if got, existing, err := c2.SubmitKeyed(ts.ctx, keyed(spec, "alice", "k1", "spec-1")); err != nil || got == id || existing {
		t.Errorf("after expiry: %q existing=%v %v, want a new job", got, existing, err)
	}
}

// TestSubmitIdempotencyKeysBounded (attack): a tenant that submits and
// kills in a loop, a new key each time, would add one key record to etcd
// per submit for a day, towards the space quota whose NOSPACE alarm stops
// every tenant's writes. Past its bound its keyed submits are refused
// (its retries of held keys still answer), another caller is unaffected,
// and the total bound holds whoever submits; keys that expire free their
// places.
func TestSubmitIdempotencyKeysBounded(t *testing.T) {
	defer func(c, a int) { maxKeysPerCaller, maxKeys = c, a }(maxKeysPerCaller, maxKeys)
	maxKeysPerCaller, maxKeys = 3, 5
	ts := newTestScheduler(t, Config{})
	now := time.Now()
	ts.clock = func() time.Time { return now }
	spec := testSpec(&model.BatchJob{Size: 1}, 10)
	var first string
	for i := range 3 {
		id, _, err := ts.SubmitKeyed(ts.ctx, keyed(spec, "alice", fmt.Sprint("a", i), "s"))
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = id
		}
		if _, err := ts.KillJob(ts.ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	_, _, err := ts.SubmitKeyed(ts.ctx, keyed(spec, "alice", "a3", "s"))
	if !errors.Is(err, ErrTooManyKeys) || !errdefs.IsResourceExhausted(err) || !strings.Contains(err.Error(), "at most 3") {
		t.Errorf("alice's 4th key: %v, want ResourceExhausted naming the bound", err)
	}
	if id, existing, err := ts.SubmitKeyed(ts.ctx, keyed(spec, "alice", "a0", "s")); err != nil || !existing || id != first {
		t.Errorf("alice's retry of a held key: %q existing=%v %v, want %q", id, existing, err, first)
	}
	for i := range 2 {
		if _, _, err := ts.SubmitKeyed(ts.ctx, keyed(spec, "bob", fmt.Sprint("b", i), "s")); err != nil {
			t.Errorf("bob's key %d: %v", i, err)
		}
	}
	_, _, err = ts.SubmitKeyed(ts.ctx, keyed(spec, "carol", "c0", "s"))
	if !errors.Is(err, ErrTooManyKeys) || !strings.Contains(err.Error(), "at most 5") {
		t.Errorf("carol's key past the total: %v, want the total bound", err)
	}
	if n := ts.keys("idempotency/"); n != 5 {
		t.Errorf("%d key records, want 5", n)
	}
	now = now.Add(IdempotencyKeyTTL + time.Minute)
	if _, _, err := ts.SubmitKeyed(ts.ctx, keyed(spec, "alice", "a4", "s")); err != nil {
		t.Errorf("alice's key after hers expired: %v", err)
	}
	// The expired keys taken out of the counts leave the store too.
	ts.pruneKeys(ts.ctx, now)
	if n := ts.keys("idempotency/"); n != 1 {
		t.Errorf("%d key records after the prune, want 1 (alice's new one)", n)
	}
}
