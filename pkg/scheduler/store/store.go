package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/titus-agent/titus-agent/pkg/scheduler/model"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/errgroup"
)

// ErrNotLeader: this replica is not (or no longer) the leader.
var ErrNotLeader = model.ErrNotLeader

// Store writes to etcd on behalf of the leader. Every transaction is fenced
// on the leader's election key (its create revision), so a deposed leader's
// writes fail instead of overcommitting hosts. Writes that may wait go
// through a write-behind set (Save*, Flush) that keeps the latest record
// per key.
type Store struct {
	kv     clientv3.KV
	prefix string
	fence  clientv3.Cmp
	txnOps int
	later  dirtySet
	// onBad is told of every record quarantined (see SetBadRecordHandler).
	onBad func(key, copy string, err error)
}

func newStore(kv clientv3.KV, prefix string, txnOps int, fence clientv3.Cmp) *Store {
	return &Store{kv: kv, prefix: prefix, txnOps: txnOps, fence: fence}
}

// WithKV returns a store that writes through kv with the same fence (tests
// use it to hold or fail transactions).
func (s *Store) WithKV(kv clientv3.KV) *Store {
	n := newStore(kv, s.prefix, s.txnOps, s.fence)
	n.onBad = s.onBad
	return n
}

// SetBadRecordHandler sets fn to be told of each record the store could
// not read and quarantined: its key, where the copy is, and why.
func (s *Store) SetBadRecordHandler(fn func(key, copy string, err error)) { s.onBad = fn }

// QuarantinePrefix is where unreadable records are copied, under the
// scheduler's prefix: quarantine/<key relative to the prefix>@<revision>.
const QuarantinePrefix = "quarantine/"

// quarantine keeps a record that cannot be read: it copies the value to
// the quarantine prefix (once per revision, fenced) and tells the bad
// record handler. The original is never deleted or overwritten by this;
// the caller skips it. Only a failure to talk to etcd is returned.
func (s *Store) quarantine(ctx context.Context, key string, val []byte, rev int64, why error) error {
	copyKey := s.prefix + QuarantinePrefix + strings.TrimPrefix(key, s.prefix) + "@" + strconv.FormatInt(rev, 10)
	err := s.txn(ctx, []put{{key: copyKey, val: val, create: true}})
	if errors.Is(err, ErrNotLeader) {
		// Either the copy exists (quarantined by an earlier leader) or the
		// fence moved; the next fenced write tells which.
		err = nil
	}
	if err != nil {
		return fmt.Errorf("quarantine %s: %w", key, err)
	}
	if s.onBad != nil {
		s.onBad(key, copyKey, why)
	}
	return nil
}

func (s *Store) jobKey(id string) string         { return s.prefix + "jobs/" + id }
func (s *Store) jobTasksPrefix(id string) string { return s.prefix + "tasks/" + id + "/" }
func (s *Store) taskKey(jobID, id string) string { return s.prefix + "tasks/" + jobID + "/" + id }
func (s *Store) agentKey(id string) string       { return s.prefix + "agents/" + id }

// put is one write; create says the key must not exist yet (a new task attempt).
type put struct {
	key    string
	val    []byte
	create bool
}

// commit writes puts in transactions of at most txnOps operations, several
// in flight at once (etcd batches concurrent proposals into one fsync).
func (s *Store) commit(ctx context.Context, puts []put) error {
	chunk := s.txnOps - 1
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for i := 0; i < len(puts); i += chunk {
		part := puts[i:min(i+chunk, len(puts))]
		g.Go(func() error { return s.txn(ctx, part) })
	}
	return g.Wait()
}

// txn writes puts in one fenced transaction, retrying transient etcd
// failures (see retry). A transaction with create-only puts is not
// blindly repeatable: a timed-out attempt may have committed, and its
// repeat would then be refused as if another scheduler had written. So
// after a transient failure the next attempt first reads one created key:
// present with this value, the earlier attempt committed (a transaction is
// all or nothing); absent, it did not and is tried again.
func (s *Store) txn(ctx context.Context, puts []put) error {
	var probe *put
	for i := range puts {
		if puts[i].create {
			probe = &puts[i]
			break
		}
	}
	failed := false
	return retry(ctx, func(ctx context.Context) error {
		if failed && probe != nil {
			resp, err := s.kv.Get(ctx, probe.key)
			if err != nil {
				return fmt.Errorf("etcd get %s: %w", probe.key, classify(err))
			}
			if len(resp.Kvs) > 0 {
				if bytes.Equal(resp.Kvs[0].Value, probe.val) {
					return nil
				}
				return fmt.Errorf("%w: conditional write refused", ErrNotLeader)
			}
		}
		err := s.txnOnce(ctx, puts)
		failed = IsTransient(err)
		return err
	})
}

func (s *Store) txnOnce(ctx context.Context, puts []put) error {
	cmps := []clientv3.Cmp{s.fence}
	ops := make([]clientv3.Op, 0, len(puts))
	for _, p := range puts {
		if p.create {
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(p.key), "=", 0))
		}
		ops = append(ops, clientv3.OpPut(p.key, string(p.val)))
	}
	resp, err := s.kv.Txn(ctx).If(cmps...).Then(ops...).Commit()
	if err != nil {
		return fmt.Errorf("etcd txn: %w", classify(err))
	}
	if !resp.Succeeded {
		// Either the fence moved (we are not the leader) or a task key
		// already exists: both mean another scheduler wrote here.
		return fmt.Errorf("%w: conditional write refused", ErrNotLeader)
	}
	return nil
}

// deleteJobs removes jobs' records and every attempt of their tasks, and
// agents' records, in fenced transactions of at most txnOps operations.
func (s *Store) deleteJobs(ctx context.Context, jobIDs, agentIDs []string) error {
	var ops []clientv3.Op
	for _, id := range jobIDs {
		ops = append(ops, clientv3.OpDelete(s.jobKey(id)), clientv3.OpDelete(s.jobTasksPrefix(id), clientv3.WithPrefix()))
	}
	for _, id := range agentIDs {
		ops = append(ops, clientv3.OpDelete(s.agentKey(id)))
	}
	return s.fencedDeletes(ctx, ops)
}

// fencedDeletes runs delete ops in fenced transactions of at most txnOps
// operations (the fence compare is one of them).
func (s *Store) fencedDeletes(ctx context.Context, ops []clientv3.Op) error {
	per := max(s.txnOps-1, 1)
	for i := 0; i < len(ops); i += per {
		part := ops[i:min(i+per, len(ops))]
		err := retry(ctx, func(ctx context.Context) error {
			resp, err := s.kv.Txn(ctx).If(s.fence).Then(part...).Commit()
			if err != nil {
				return fmt.Errorf("etcd delete: %w", classify(err))
			}
			if !resp.Succeeded {
				return fmt.Errorf("%w: fenced delete refused", ErrNotLeader)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// get reads one key (nil if absent).
func (s *Store) get(ctx context.Context, key string) ([]byte, error) {
	var resp *clientv3.GetResponse
	err := retry(ctx, func(ctx context.Context) (err error) {
		resp, err = s.kv.Get(ctx, key)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("etcd get %s: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	return resp.Kvs[0].Value, nil
}

// getPrefix reads every key under prefix, a page at a time.
func (s *Store) getPrefix(ctx context.Context, prefix string, fn func(key string, val []byte) error) error {
	return s.getPrefixRev(ctx, prefix, func(key string, val []byte, _ int64) error { return fn(key, val) })
}

// getPrefixRev is getPrefix with each key's modification revision.
func (s *Store) getPrefixRev(ctx context.Context, prefix string, fn func(key string, val []byte, rev int64) error) error {
	end := clientv3.GetPrefixRangeEnd(prefix)
	key := prefix
	for {
		var resp *clientv3.GetResponse
		err := retry(ctx, func(ctx context.Context) (err error) {
			resp, err = s.kv.Get(ctx, key, clientv3.WithRange(end), clientv3.WithLimit(5000))
			return err
		})
		if err != nil {
			return fmt.Errorf("etcd get %s: %w", prefix, err)
		}
		for _, kv := range resp.Kvs {
			if err := fn(string(kv.Key), kv.Value, kv.ModRevision); err != nil {
				return err
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return nil
		}
		key = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// dirtySet collects records to persist in the background, keeping only the
// latest value per key.
type dirtySet struct {
	mu sync.Mutex
	m  map[string][]byte
}

func (d *dirtySet) set(key string, val []byte) {
	d.mu.Lock()
	if d.m == nil {
		d.m = map[string][]byte{}
	}
	d.m[key] = val
	d.mu.Unlock()
}

func (d *dirtySet) take() []put {
	d.mu.Lock()
	m := d.m
	d.m = nil
	d.mu.Unlock()
	out := make([]put, 0, len(m))
	for k, v := range m {
		out = append(out, put{key: k, val: v})
	}
	return out
}

func (d *dirtySet) setIfAbsent(key string, val []byte) {
	d.mu.Lock()
	if d.m == nil {
		d.m = map[string][]byte{}
	}
	if _, ok := d.m[key]; !ok {
		d.m[key] = val
	}
	d.mu.Unlock()
}
