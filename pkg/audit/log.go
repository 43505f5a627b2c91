package audit

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/errdefs"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Defaults of the retention.
const (
	DefaultMaxAge     = 90 * 24 * time.Hour
	DefaultMaxRecords = 100_000
	// The default per-principal cap is a tenth of MaxRecords, at least
	// minPerPrincipal (and at most MaxRecords).
	minPerPrincipal = 1000
)

// Options configure a Log.
type Options struct {
	// Prefix of the scheduler's keys; records live under Prefix+"audit/".
	Prefix string
	// MaxAge and MaxRecords bound retention (defaults above).
	MaxAge     time.Duration
	MaxRecords int
	// MaxRecordsPerPrincipal caps the records one principal holds: a new
	// record of a principal at its cap evicts that principal's own oldest
	// record in the same etcd transaction, never another principal's, so
	// that nobody's volume of calls (allowed or not) pushes others'
	// records out of the bounded trail (0: a tenth of MaxRecords, at least
	// 1000; at least MaxRecords: no per-principal bound).
	MaxRecordsPerPrincipal int
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

// maxBatch bounds the records of one etcd transaction: each takes at
// most four operations (its put, its index entry's, and the delete of an
// evicted record and its index entry), within etcd's default 128.
const maxBatch = 32

type pending struct {
	key       string
	val       []byte
	principal string
	done      chan error
}

// Log is the audit trail.
type Log struct {
	opts   Options
	prefix string
	// byPrefix indexes records by principal: byPrefix+hex(principal)+"/"+ID.
	byPrefix string
	seq      atomic.Uint64

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
	if o.MaxRecordsPerPrincipal <= 0 {
		o.MaxRecordsPerPrincipal = min(max(o.MaxRecords/10, minPerPrincipal), o.MaxRecords)
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
	return &Log{opts: o, prefix: o.Prefix + "audit/", byPrefix: o.Prefix + "audit-by/", wake: make(chan struct{}, 1),
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
	p := pending{key: l.prefix + r.ID, val: b, principal: r.Principal, done: make(chan error, 1)}
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
		ops, err := l.batchOps(ctx, kv, batch)
		if err == nil {
			_, err = kv.Txn(ctx).Then(ops...).Commit()
		}
		if err != nil {
			err = fmt.Errorf("audit: store %d records: %w", n, err)
			l.opts.Log.Error("audit trail not stored", "err", err)
		}
		for _, p := range batch {
			p.done <- err
		}
	}
}

// indexKey is the key of record id's entry in principal's index.
func (l *Log) indexKey(principal, id string) string {
	return l.byPrefix + hex.EncodeToString([]byte(principal)) + "/" + id
}

// batchOps are the operations storing batch: each record and its index
// entry, and, for a principal whose records would pass
// MaxRecordsPerPrincipal, the delete of as many of its own oldest records
// (at most one per new record). The index counts at least the principal's
// records (an entry is written with its record; one whose record was
// pruned by age or count stays until pruneIndex or an eviction), so the
// cap bounds what a principal holds even when the index lags.
func (l *Log) batchOps(ctx context.Context, kv clientv3.KV, batch []pending) ([]clientv3.Op, error) {
	var ops []clientv3.Op
	newBy := map[string][]string{}
	var order []string
	for _, p := range batch {
		id := strings.TrimPrefix(p.key, l.prefix)
		if _, ok := newBy[p.principal]; !ok {
			order = append(order, p.principal)
		}
		newBy[p.principal] = append(newBy[p.principal], id)
	}
	drop := map[string]bool{}
	var evict []clientv3.Op
	for _, who := range order {
		ids := newBy[who]
		from := l.indexKey(who, "")
		end := clientv3.GetPrefixRangeEnd(from)
		resp, err := kv.Get(ctx, from, clientv3.WithRange(end), clientv3.WithCountOnly())
		if err != nil {
			return nil, fmt.Errorf("count the records of %q: %w", who, err)
		}
		k := int64(len(ids))
		extra := min(resp.Count+k-int64(l.opts.MaxRecordsPerPrincipal), k)
		if extra <= 0 {
			continue
		}
		var old []string
		if resp.Count > 0 {
			resp, err = kv.Get(ctx, from, clientv3.WithRange(end), clientv3.WithKeysOnly(), clientv3.WithLimit(extra))
			if err != nil {
				return nil, fmt.Errorf("find the oldest records of %q: %w", who, err)
			}
			for _, item := range resp.Kvs {
				old = append(old, strings.TrimPrefix(string(item.Key), from))
			}
		}
		// Fewer stored than to evict: the batch's own oldest go (never
		// stored, still in the structured log).
		for _, id := range ids[:extra-int64(len(old))] {
			drop[id] = true
		}
		for _, id := range old {
			evict = append(evict, clientv3.OpDelete(l.prefix+id), clientv3.OpDelete(from+id))
		}
	}
	for _, p := range batch {
		id := strings.TrimPrefix(p.key, l.prefix)
		if drop[id] {
			continue
		}
		ops = append(ops, clientv3.OpPut(p.key, string(p.val)), clientv3.OpPut(l.indexKey(p.principal, id), ""))
	}
	return append(ops, evict...), nil
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
	del, err := kv.Delete(ctx, l.prefix, clientv3.WithRange(cutoff), clientv3.WithPrevKV())
	if err != nil {
		return fmt.Errorf("delete records past %s: %w", l.opts.MaxAge, err)
	}
	if err := l.pruneIndex(ctx, kv, del.PrevKvs); err != nil {
		return err
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
	del, err = kv.Delete(ctx, l.prefix, clientv3.WithRange(upto), clientv3.WithPrevKV())
	if err != nil {
		return fmt.Errorf("delete records beyond %d: %w", l.opts.MaxRecords, err)
	}
	return l.pruneIndex(ctx, kv, del.PrevKvs)
}

// pruneIndex deletes the index entries of records pruned by age or count.
// An entry left behind (an error here) only makes its principal's count
// high until an eviction of its takes it.
func (l *Log) pruneIndex(ctx context.Context, kv clientv3.KV, gone []*mvccpb.KeyValue) error {
	for len(gone) > 0 {
		n := min(len(gone), maxBatch)
		ops := make([]clientv3.Op, 0, n)
		for _, item := range gone[:n] {
			var r Record
			if json.Unmarshal(item.Value, &r) != nil {
				continue
			}
			ops = append(ops, clientv3.OpDelete(l.indexKey(r.Principal, strings.TrimPrefix(string(item.Key), l.prefix))))
		}
		if _, err := kv.Txn(ctx).Then(ops...).Commit(); err != nil {
			return fmt.Errorf("delete the index entries of pruned records: %w", err)
		}
		gone = gone[n:]
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
