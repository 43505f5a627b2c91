package store

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/titus-agent/titus-agent/pkg/apierr"
	"github.com/titus-agent/titus-agent/pkg/backoff"
	"github.com/titus-agent/titus-agent/pkg/scheduler/model"
)

// flakyKV fails the next calls the way a cluster that just lost a member
// does. A failing transaction may first be applied (commit: the member
// answered "request timed out" after the proposal went through).
type flakyKV struct {
	clientv3.KV
	mu      sync.Mutex
	txnFail int   // transactions still to fail
	getFail int   // reads still to fail
	commit  bool  // apply a failing transaction before failing it
	err     error // what they fail with
	txns    int   // transactions attempted
}

func (f *flakyKV) Txn(ctx context.Context) clientv3.Txn {
	return &flakyTxn{Txn: f.KV.Txn(ctx), kv: f}
}

func (f *flakyKV) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	f.mu.Lock()
	fail := f.getFail > 0
	if fail {
		f.getFail--
	}
	f.mu.Unlock()
	if fail {
		return nil, f.err
	}
	return f.KV.Get(ctx, key, opts...)
}

type flakyTxn struct {
	clientv3.Txn
	kv *flakyKV
}

func (t *flakyTxn) If(c ...clientv3.Cmp) clientv3.Txn  { t.Txn = t.Txn.If(c...); return t }
func (t *flakyTxn) Then(o ...clientv3.Op) clientv3.Txn { t.Txn = t.Txn.Then(o...); return t }
func (t *flakyTxn) Else(o ...clientv3.Op) clientv3.Txn { t.Txn = t.Txn.Else(o...); return t }
func (t *flakyTxn) Commit() (*clientv3.TxnResponse, error) {
	f := t.kv
	f.mu.Lock()
	f.txns++
	fail := f.txnFail > 0
	if fail {
		f.txnFail--
	}
	f.mu.Unlock()
	if !fail {
		return t.Txn.Commit()
	}
	if f.commit {
		if _, err := t.Txn.Commit(); err != nil {
			return nil, err
		}
	}
	return nil, f.err
}

func leadOnEmbedded(t *testing.T, ctx context.Context) (*Store, clientv3.KV) {
	t.Helper()
	e, err := StartEmbeddedEtcd(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	cli, err := clientv3.New(clientv3.Config{Endpoints: e.Endpoints, Logger: nopZap()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	el, err := NewElection(ctx, cli, "/t/", 30*time.Second, 128)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { el.Close() })
	st, err := el.Campaign(ctx, "x")
	if err != nil {
		t.Fatal(err)
	}
	return st, cli
}

func fastRetries(t *testing.T) {
	old := retryPolicy
	retryPolicy = backoff.Policy{Base: time.Millisecond, Max: 5 * time.Millisecond}
	t.Cleanup(func() { retryPolicy = old })
}

// TestTransientEtcdErrorsAreRetriedOrUnavailable: a write that fails with
// "request timed out" (as after a member was killed) is retried when
// repeating it is safe, including a create-only write whose first attempt
// did commit (it must not then be taken for another scheduler's write and
// make the leader step down); one that keeps failing comes back as
// Unavailable at the gRPC edge, never Internal; other etcd errors are
// neither retried nor called transient.
func TestTransientEtcdErrorsAreRetriedOrUnavailable(t *testing.T) {
	fastRetries(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, cli := leadOnEmbedded(t, ctx)
	job := &model.Job{ID: "j1", Spec: model.JobSpec{Application: "a"}}
	value := func(key string) string {
		resp, err := cli.Get(ctx, key)
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("get %s: %v %v", key, resp, err)
		}
		return string(resp.Kvs[0].Value)
	}

	for _, tc := range []struct {
		name    string
		fails   int
		commit  bool
		err     error
		run     func(*Store) error
		wantErr bool
		code    codes.Code
		txns    int
	}{
		{name: "job write timed out after it committed", fails: 1, commit: true, err: rpctypes.ErrTimeout,
			run: func(s *Store) error { return s.PutJob(ctx, job) }, txns: 2},
		{name: "job write without a leader", fails: 2, err: rpctypes.ErrNoLeader,
			run: func(s *Store) error { return s.PutJob(ctx, job) }, txns: 3},
		{name: "connection to the member lost", fails: 1, err: status.Error(codes.Unavailable, "error reading from server: EOF"),
			run: func(s *Store) error { return s.PutJob(ctx, job) }, txns: 2},
		{name: "task create timed out after it committed", fails: 1, commit: true, err: rpctypes.ErrTimeoutDueToLeaderFail,
			run: func(s *Store) error {
				return s.CreateTasks(ctx, []*model.Task{{ID: "j1.0.1", JobID: "j1"}, {ID: "j1.1.1", JobID: "j1"}})
			}, txns: 1},
		{name: "task create timed out before it committed", fails: 1, err: rpctypes.ErrTimeout,
			run: func(s *Store) error { return s.CreateTasks(ctx, []*model.Task{{ID: "j1.2.1", JobID: "j1"}}) }, txns: 2},
		{name: "etcd keeps timing out", fails: 100, err: rpctypes.ErrTimeout,
			run: func(s *Store) error { return s.PutJob(ctx, job) }, wantErr: true, code: codes.Unavailable, txns: retryAttempts},
		{name: "not transient: request too large", fails: 100, err: rpctypes.ErrRequestTooLarge,
			run: func(s *Store) error { return s.PutJob(ctx, job) }, wantErr: true, code: codes.Internal, txns: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &flakyKV{KV: cli, txnFail: tc.fails, commit: tc.commit, err: tc.err}
			err := tc.run(st.WithKV(f))
			if f.txns != tc.txns {
				t.Errorf("%d transactions, want %d", f.txns, tc.txns)
			}
			if !tc.wantErr {
				if err != nil {
					t.Fatalf("err = %v, want a retry to succeed", err)
				}
				return
			}
			if err == nil {
				t.Fatal("no error")
			}
			if IsTransient(err) != (tc.code == codes.Unavailable) || errors.Is(err, ErrNotLeader) {
				t.Errorf("IsTransient(%v) = %v; ErrNotLeader: %v", err, IsTransient(err), errors.Is(err, ErrNotLeader))
			}
			s := status.Convert(apierr.ToGRPC(err))
			if s.Code() != tc.code || !strings.Contains(s.Message(), tc.err.Error()) {
				t.Errorf("at the edge: %v %q, want %v with %q", s.Code(), s.Message(), tc.code, tc.err)
			}
		})
	}
	if v := value(st.taskKey("j1", "j1.0.1")); v == "" {
		t.Error("the committed task record is empty")
	}
	value(st.taskKey("j1", "j1.2.1"))

	// A create-only write that finds its key holding another value was
	// not ours: that is still refused (another scheduler wrote it).
	if _, err := cli.Put(ctx, st.taskKey("j1", "j1.3.1"), "theirs"); err != nil {
		t.Fatal(err)
	}
	f := &flakyKV{KV: cli, txnFail: 1, err: rpctypes.ErrTimeout}
	if err := st.WithKV(f).CreateTasks(ctx, []*model.Task{{ID: "j1.3.1", JobID: "j1"}}); !errors.Is(err, ErrNotLeader) {
		t.Errorf("create over another's record after a timeout: err = %v, want ErrNotLeader", err)
	}

	// Reads are retried too.
	f = &flakyKV{KV: cli, getFail: 2, err: rpctypes.ErrLeaderChanged}
	if tasks, err := st.WithKV(f).JobTasks(ctx, "j1"); err != nil || len(tasks) != 4 {
		t.Errorf("JobTasks after two failed reads: %d tasks, %v", len(tasks), err)
	}
}
