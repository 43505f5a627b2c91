package core

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
	"github.com/titus-agent/titus-agent/pkg/scheduler/model"
	"github.com/titus-agent/titus-agent/pkg/scheduler/store"
	"github.com/titus-agent/titus-agent/pkg/scheduler/wire"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// testScheduler is a leader's core without its loops, over an embedded
// etcd: tests drive placement, agent messages, flushes and pruning
// themselves, and can hold the store's transactions (kv).
type testScheduler struct {
	*Core
	t      *testing.T
	ctx    context.Context
	cli    *clientv3.Client
	kv     *gatedKV
	prefix string
	now    time.Time // the fake clock, when set
	st     *store.Store
}

const testPrefix = "/titus/"

func newTestScheduler(t *testing.T, o Config) *testScheduler {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	c, err := New(o, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	e, err := store.StartEmbeddedEtcd(ctx, dir+"/etcd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	cli, err := store.Dial(e.Endpoints)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	el, err := store.NewElection(ctx, cli, testPrefix, 30*time.Second, 128)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { el.Close() })
	st, err := el.Campaign(ctx, "x")
	if err != nil {
		t.Fatal(err)
	}
	ts := &testScheduler{Core: c, t: t, ctx: ctx, cli: cli, kv: &gatedKV{KV: cli}, prefix: testPrefix, st: st}
	c.clock = func() time.Time {
		if !ts.now.IsZero() {
			return ts.now
		}
		return time.Now()
	}
	if err := c.Load(ctx, st.WithKV(ts.kv), nil); err != nil {
		t.Fatal(err)
	}
	return ts
}

// connect registers agent id with cpu millicores and returns its session.
func (ts *testScheduler) connect(id string, cpu int64) *Session {
	sess := newSession()
	ts.mu.Lock()
	sess.agent = ts.register(model.Registration{InstanceID: id, AZ: "az-1", Capacity: model.Capacity{Resources: model.Resources{CPU: cpu, Mem: 65536}}}, sess, time.Now())
	ts.mu.Unlock()
	return sess
}

// report delivers task states from agent id, as its stream would.
func (ts *testScheduler) report(id string, sess *Session, state task.State, taskIDs ...string) {
	ts.t.Helper()
	ts.mu.Lock()
	a := ts.agents[id]
	ts.mu.Unlock()
	if a != sess.agent {
		ts.t.Fatalf("session is not agent %s's", id)
	}
	var up []model.TaskStatus
	for _, tid := range taskIDs {
		up = append(up, model.TaskStatus{TaskID: tid, State: state})
	}
	ts.Updates(sess, up)
}

// place runs one placement round and returns the ids it placed.
func (ts *testScheduler) place() []string {
	ts.t.Helper()
	batch, start := ts.planRound()
	if err := ts.commitRound(ts.ctx, batch, start); err != nil {
		ts.t.Fatalf("commit round: %v", err)
	}
	var ids []string
	for _, p := range batch {
		ids = append(ids, p.rec.ID)
	}
	return ids
}

func (ts *testScheduler) submit(spec model.JobSpec) string {
	ts.t.Helper()
	id, err := ts.Submit(ts.ctx, spec)
	if err != nil {
		ts.t.Fatalf("submit: %v", err)
	}
	return id
}

func (ts *testScheduler) job(id string) *model.Job {
	ts.t.Helper()
	j, err := ts.Job(id)
	if err != nil {
		ts.t.Fatalf("get job: %v", err)
	}
	return j
}

// stored reads a job's record from etcd (nil if absent).
func (ts *testScheduler) stored(id string) *model.Job {
	ts.t.Helper()
	resp, err := ts.cli.Get(ts.ctx, ts.prefix+"jobs/"+id)
	if err != nil {
		ts.t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return nil
	}
	j := &schedv1.Job{}
	if err := proto.Unmarshal(resp.Kvs[0].Value, j); err != nil {
		ts.t.Fatal(err)
	}
	return wire.JobFromProto(j)
}

// keys counts etcd keys under the scheduler's prefix plus sub.
func (ts *testScheduler) keys(sub string) int64 {
	ts.t.Helper()
	resp, err := ts.cli.Get(ts.ctx, ts.prefix+sub, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		ts.t.Fatal(err)
	}
	return resp.Count
}

// stateOf is a job's state, unspecified for none.
func stateOf(j *model.Job) model.JobState {
	if j == nil {
		return model.JobUnspecified
	}
	return j.State
}

func testSpec(kind any, cpu int64) model.JobSpec {
	s := model.JobSpec{OwnerEmail: "t@example.com", Application: "t",
		Task: &task.Spec{Image: "registry.example/x:1", Command: []string{"x"}, Resources: task.Resources{CPUMillicores: cpu, MemoryMiB: 64}}}
	switch k := kind.(type) {
	case *model.BatchJob:
		s.Batch = k
	case *model.ServiceJob:
		s.Service = k
	}
	return s
}

// within runs fn and fails the test if it has not returned after a
// generous deadline (it would be blocked, not slow).
func within(t *testing.T, what string, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); fn() }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatalf("%s: blocked", what)
	}
}

// gatedKV is etcd's KV with a hand on its transactions: while a gate is
// set, every Commit signals entered and waits for the gate to open.
type gatedKV struct {
	clientv3.KV
	mu   sync.Mutex
	gate *gate
}

type gate struct {
	entered chan struct{}
	release chan struct{}
	err     error
	// committed: the transaction commits before it fails with err (an
	// answer lost on the way back).
	committed bool
}

// hold makes every later transaction wait on the returned gate.
func (k *gatedKV) hold() *gate {
	g := &gate{entered: make(chan struct{}, 64), release: make(chan struct{})}
	k.mu.Lock()
	k.gate = g
	k.mu.Unlock()
	return g
}

// failing makes every later transaction fail with err, until open.
func (k *gatedKV) failing(err error) *gate {
	g := &gate{entered: make(chan struct{}, 1024), release: make(chan struct{}), err: err}
	close(g.release)
	k.mu.Lock()
	k.gate = g
	k.mu.Unlock()
	return g
}

// losing makes every later transaction commit and then fail with err
// (the answer lost), until open.
func (k *gatedKV) losing(err error) *gate {
	g := k.failing(err)
	g.committed = true
	return g
}

// open lets waiting and later transactions through; with err they fail with it.
func (k *gatedKV) open(g *gate, err error) {
	k.mu.Lock()
	if k.gate == g {
		k.gate = nil
	}
	k.mu.Unlock()
	select {
	case <-g.release: // a failing gate: already open
	default:
		g.err = err
		close(g.release)
	}
}

// wait blocks until a transaction is waiting on g.
func (g *gate) wait(t *testing.T) {
	t.Helper()
	select {
	case <-g.entered:
	case <-time.After(20 * time.Second):
		t.Fatal("no transaction reached the store")
	}
}

func (k *gatedKV) Txn(ctx context.Context) clientv3.Txn { return &gatedTxn{Txn: k.KV.Txn(ctx), kv: k} }

type gatedTxn struct {
	clientv3.Txn
	kv *gatedKV
}

func (t *gatedTxn) If(c ...clientv3.Cmp) clientv3.Txn  { t.Txn = t.Txn.If(c...); return t }
func (t *gatedTxn) Then(o ...clientv3.Op) clientv3.Txn { t.Txn = t.Txn.Then(o...); return t }
func (t *gatedTxn) Else(o ...clientv3.Op) clientv3.Txn { t.Txn = t.Txn.Else(o...); return t }

func (t *gatedTxn) Commit() (*clientv3.TxnResponse, error) {
	t.kv.mu.Lock()
	g := t.kv.gate
	t.kv.mu.Unlock()
	if g != nil {
		select {
		case g.entered <- struct{}{}:
		default:
		}
		<-g.release
		if g.err != nil && g.committed {
			if _, err := t.Txn.Commit(); err != nil {
				return nil, err
			}
		}
		if g.err != nil {
			return nil, g.err
		}
	}
	return t.Txn.Commit()
}
