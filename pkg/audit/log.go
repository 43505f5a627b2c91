package audit

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/errdefs"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Defaults of the retention.
const (
	DefaultMaxAge     = 90 * 24 * time.Hour
	DefaultMaxRecords = 100_000
)

// Options configure a Log.
type Options struct {
	// Prefix of the scheduler's keys; records live under Prefix+"audit/".
	Prefix string
	// MaxAge and MaxRecords bound retention (defaults above).
	MaxAge     time.Duration
	MaxRecords int
	// Log receives every record as a structured line (nil = slog.Default()).
	Log *slog.Logger
	// Now is the clock (nil = time.Now).
	Now func() time.Time
	// Refusals (records of calls turned away: PermissionDenied, NotFound,
	// InvalidArgument, ResourceExhausted, ...) stored one by one per
	// principal: RefusalBurst, then one per RefusalEvery. Beyond that
	// they are logged but counted, and one record per principal and
	// RefusalWindow (Method AggregateMethod, Count) stands for them, so
	// that no principal can push others' records out of the bounded
	// trail by being refused (defaults: DefaultRefusal*).
	RefusalBurst  int
	RefusalEvery  time.Duration
	RefusalWindow time.Duration
}

// maxBatch bounds the records of one etcd transaction.
const maxBatch = 128

type pending struct {
	key  string
	val  []byte
	done chan error
}

// Log is the audit trail.
type Log struct {
	opts   Options
	prefix string
	seq    atomic.Uint64

	mu      sync.Mutex
	kv      clientv3.KV
	queue   []pending
	wake    chan struct{}
	written int // since the last prune

	refusals *refusals
}

// New makes a Log; records reach etcd once Run is given a client.
func New(o Options) *Log {
	if o.MaxAge <= 0 {
		o.MaxAge = DefaultMaxAge
	}
	if o.MaxRecords <= 0 {
		o.MaxRecords = DefaultMaxRecords
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.RefusalBurst <= 0 {
		o.RefusalBurst = DefaultRefusalBurst
	}
	if o.RefusalEvery <= 0 {
		o.RefusalEvery = DefaultRefusalEvery
	}
	if o.RefusalWindow <= 0 {
		o.RefusalWindow = DefaultRefusalWindow
	}
	return &Log{opts: o, prefix: o.Prefix + "audit/", wake: make(chan struct{}, 1),
		refusals: newRefusals(o.RefusalBurst, o.RefusalEvery, o.RefusalWindow)}
}

var errNoStore = errdefs.ErrUnavailable.WithMessage("the audit store is not attached (not leading yet?)")

// ErrNotStored: the record was logged but etcd is not attached (yet).
var ErrNotStored = fmt.Errorf("audit record not stored: %w", errNoStore)

// Record logs r and waits until it is stored in etcd (or ctx ends). The
// structured log line is written first, whatever happens to the store. A
// refusal beyond its principal's limit (Options.RefusalBurst) is logged
// and counted but not stored one by one; Record returns nil for it.
func (l *Log) Record(ctx context.Context, r Record) error {
	if r.Time.IsZero() {
		r.Time = l.opts.Now()
	}
	stored := l.refusals.admit(&r, l.opts.Now())
	p, err := l.put(r, stored)
	if err != nil || !stored {
		return err
	}
	select {
	case err := <-p.done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("audit record %s: %w", p.key, ctx.Err())
	}
}

// put logs r and, when store, queues it for etcd.
func (l *Log) put(r Record, store bool) (pending, error) {
	r.ID = idOf(r.Time, l.seq.Add(1))
	r.clip()
	attrs := []any{"id", r.ID, "principal", r.Principal, "method", r.Method, "action", r.Action, "application", r.Application,
		"job", r.JobID, "task", r.TaskID, "agent", r.AgentID, "code", r.Code, "message", r.Message, "peer", r.Peer}
	if r.Count > 0 {
		attrs = append(attrs, "count", r.Count)
	}
	if !store {
		attrs = append(attrs, "stored", false)
	}
	l.opts.Log.Info("audit", attrs...)
	if !store {
		return pending{}, nil
	}
	b, err := json.Marshal(r)
	if err != nil {
		return pending{}, fmt.Errorf("audit: %w", err)
	}
	p := pending{key: l.prefix + r.ID, val: b, done: make(chan error, 1)}
	l.mu.Lock()
	if l.kv == nil {
		l.mu.Unlock()
		return pending{}, ErrNotStored
	}
	l.queue = append(l.queue, p)
	l.mu.Unlock()
	select {
	case l.wake <- struct{}{}:
	default:
	}
	return p, nil
}

// flushAggregates queues the records of refusals counted over windows
// that ended (all of them when all); nobody waits for them.
func (l *Log) flushAggregates(all bool) {
	for _, r := range l.refusals.due(l.opts.Now(), all) {
		if _, err := l.put(r, true); err != nil {
			l.opts.Log.Error("audit record not stored", "principal", r.Principal, "method", r.Method, "count", r.Count, "err", err)
		}
	}
}

// Run writes queued records to kv in groups and prunes past the retention
// until ctx ends.
func (l *Log) Run(ctx context.Context, kv clientv3.KV) {
	l.mu.Lock()
	l.kv = kv
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		l.kv = nil
		q := l.queue
		l.queue = nil
		l.mu.Unlock()
		for _, p := range q {
			p.done <- ErrNotStored
		}
	}()
	prune := time.NewTicker(time.Minute)
	defer prune.Stop()
	agg := time.NewTicker(min(max(l.opts.RefusalWindow/4, 100*time.Millisecond), time.Minute))
	defer agg.Stop()
	l.prune(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case <-agg.C:
			l.flushAggregates(false)
		case <-prune.C:
			l.prune(ctx)
		case <-l.wake:
			l.flush(ctx, kv)
			l.mu.Lock()
			over := l.written >= max(l.opts.MaxRecords/10, 1)
			l.mu.Unlock()
			if over {
				l.prune(ctx)
			}
		}
	}
}

func (l *Log) flush(ctx context.Context, kv clientv3.KV) {
	for {
		l.mu.Lock()
		n := min(len(l.queue), maxBatch)
		batch := l.queue[:n:n]
		l.queue = l.queue[n:]
		l.written += n
		l.mu.Unlock()
		if n == 0 {
			return
		}
		ops := make([]clientv3.Op, n)
		for i, p := range batch {
			ops[i] = clientv3.OpPut(p.key, string(p.val))
		}
		_, err := kv.Txn(ctx).Then(ops...).Commit()
		if err != nil {
			err = fmt.Errorf("audit: store %d records: %w", n, err)
			l.opts.Log.Error("audit trail not stored", "err", err)
		}
		for _, p := range batch {
			p.done <- err
		}
	}
}

// prune deletes records older than MaxAge, then the oldest beyond MaxRecords.
func (l *Log) prune(ctx context.Context) {
	l.mu.Lock()
	kv := l.kv
	l.written = 0
	l.mu.Unlock()
	if kv == nil {
		return
	}
	if err := l.pruneOnce(ctx, kv); err != nil && ctx.Err() == nil {
		l.opts.Log.Warn("audit retention", "err", err)
	}
}

func (l *Log) pruneOnce(ctx context.Context, kv clientv3.KV) error {
	cutoff := l.prefix + idOf(l.opts.Now().Add(-l.opts.MaxAge), 0)
	if _, err := kv.Delete(ctx, l.prefix, clientv3.WithRange(cutoff)); err != nil {
		return fmt.Errorf("delete records past %s: %w", l.opts.MaxAge, err)
	}
	end := clientv3.GetPrefixRangeEnd(l.prefix)
	resp, err := kv.Get(ctx, l.prefix, clientv3.WithRange(end), clientv3.WithCountOnly())
	if err != nil {
		return fmt.Errorf("count records: %w", err)
	}
	extra := resp.Count - int64(l.opts.MaxRecords)
	if extra <= 0 {
		return nil
	}
	// The key after the extra oldest ones bounds the delete.
	resp, err = kv.Get(ctx, l.prefix, clientv3.WithRange(end), clientv3.WithKeysOnly(), clientv3.WithLimit(extra+1))
	if err != nil {
		return fmt.Errorf("find oldest records: %w", err)
	}
	if int64(len(resp.Kvs)) <= extra {
		return nil
	}
	upto := string(resp.Kvs[extra].Key)
	if _, err := kv.Delete(ctx, l.prefix, clientv3.WithRange(upto)); err != nil {
		return fmt.Errorf("delete records beyond %d: %w", l.opts.MaxRecords, err)
	}
	return nil
}

// Filter selects records for List.
type Filter struct {
	JobID, Principal string
	// After is a page token (a record ID); records after it are listed.
	After string
	// Limit bounds the records returned (default and cap 1000).
	Limit int
}

// MaxPage caps a page of List.
const MaxPage = 1000

// List returns records matching f, oldest first, and the token of the
// next page ("" when there is none).
func (l *Log) List(ctx context.Context, f Filter) ([]Record, string, error) {
	l.mu.Lock()
	kv := l.kv
	l.mu.Unlock()
	if kv == nil {
		return nil, "", fmt.Errorf("audit: %w", errNoStore)
	}
	if f.Limit <= 0 || f.Limit > MaxPage {
		f.Limit = MaxPage
	}
	if strings.ContainsAny(f.After, "/\x00") {
		return nil, "", fmt.Errorf("audit: bad page token %q", f.After)
	}
	end := clientv3.GetPrefixRangeEnd(l.prefix)
	from := l.prefix
	if f.After != "" {
		from = l.prefix + f.After + "\x00"
	}
	var out []Record
	for {
		resp, err := kv.Get(ctx, from, clientv3.WithRange(end), clientv3.WithLimit(1000))
		if err != nil {
			return nil, "", fmt.Errorf("audit: list: %w", err)
		}
		for _, item := range resp.Kvs {
			var r Record
			if err := json.Unmarshal(item.Value, &r); err != nil {
				// Kept, not fatal: one bad record must not hide the trail.
				r = Record{ID: strings.TrimPrefix(string(item.Key), l.prefix), Code: "Undecodable", Message: err.Error()}
			}
			if (f.JobID != "" && r.JobID != f.JobID) || (f.Principal != "" && r.Principal != f.Principal) {
				continue
			}
			out = append(out, r)
			if len(out) == f.Limit {
				return out, r.ID, nil
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return out, "", nil
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}
