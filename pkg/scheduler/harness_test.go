package scheduler

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"google.golang.org/protobuf/proto"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
)

// campaign wins the election under prefix and returns a store fenced on it.
func campaign(t *testing.T, ctx context.Context, cli *clientv3.Client, prefix string, txnOps int) (*concurrency.Session, *store) {
	t.Helper()
	sess, err := concurrency.NewSession(cli, concurrency.WithTTL(30))
	if err != nil {
		t.Fatal(err)
	}
	el := concurrency.NewElection(sess, prefix+"leader")
	if err := el.Campaign(ctx, "x"); err != nil {
		t.Fatal(err)
	}
	return sess, &store{kv: cli, prefix: prefix, txnOps: txnOps, fence: clientv3.Compare(clientv3.CreateRevision(el.Key()), "=", el.Rev())}
}

// testScheduler is a leader without its loops, over an embedded etcd:
// tests drive placement, agent messages, flushes and pruning themselves,
// and can hold the store's transactions (kv).
type testScheduler struct {
	*Scheduler
	t   *testing.T
	ctx context.Context
	cli *clientv3.Client
	kv  *gatedKV
	now time.Time // the fake clock, when set
}

func newTestScheduler(t *testing.T, o Options) *testScheduler {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	o.Listen, o.DataDir = "127.0.0.1:0", t.TempDir()
	s, err := New(o, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.lis.Close() })
	e, err := StartEmbeddedEtcd(ctx, o.DataDir+"/etcd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	cli, err := clientv3.New(clientv3.Config{Endpoints: e.Endpoints, Logger: nopZap()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	sess, st := campaign(t, ctx, cli, s.opts.Prefix, s.opts.TxnOps)
	t.Cleanup(func() { sess.Close() })
	ts := &testScheduler{Scheduler: s, t: t, ctx: ctx, cli: cli, kv: &gatedKV{KV: cli}}
	st.kv = ts.kv
	s.st = st
	s.clock = func() time.Time {
		if !ts.now.IsZero() {
			return ts.now
		}
		return time.Now()
	}
	if err := s.load(ctx); err != nil {
		t.Fatal(err)
	}
	s.leader.Store(true)
	return ts
}

// connect registers agent id with cpu millicores and returns its session.
func (ts *testScheduler) connect(id string, cpu int64) *session {
	sess := newSession()
	ts.mu.Lock()
	ts.register(&schedv1.Register{InstanceId: id, Az: "az-1", Capacity: &schedv1.Capacity{CpuMillicores: cpu, MemoryMib: 65536}}, sess, time.Now())
	ts.mu.Unlock()
	return sess
}

// report delivers task states from agent id, as its stream would.
func (ts *testScheduler) report(id string, sess *session, state agentv1.TaskState, taskIDs ...string) {
	up := &schedv1.TaskUpdates{}
	for _, tid := range taskIDs {
		up.Tasks = append(up.Tasks, &schedv1.TaskStatus{TaskId: tid, State: state})
	}
	ts.mu.Lock()
	a := ts.agents[id]
	ts.mu.Unlock()
	ts.handle(a, sess, &schedv1.AgentMessage{Msg: &schedv1.AgentMessage_Updates{Updates: up}})
}

// place runs one placement round and returns the ids it placed.
func (ts *testScheduler) place() []string {
	ts.t.Helper()
	batch, puts, start := ts.planRound()
	if err := ts.commitRound(ts.ctx, batch, puts, start); err != nil {
		ts.t.Fatalf("commit round: %v", err)
	}
	var ids []string
	for _, t := range batch {
		ids = append(ids, t.rec.Id)
	}
	return ids
}

func (ts *testScheduler) submit(spec *schedv1.JobSpec) string {
	ts.t.Helper()
	resp, err := ts.SubmitJob(ts.ctx, &schedv1.SubmitJobRequest{Spec: spec})
	if err != nil {
		ts.t.Fatalf("submit: %v", err)
	}
	return resp.JobId
}

func (ts *testScheduler) job(id string) *schedv1.Job {
	ts.t.Helper()
	j, err := ts.GetJob(ts.ctx, &schedv1.GetJobRequest{Id: id})
	if err != nil {
		ts.t.Fatalf("get job: %v", err)
	}
	return j
}

// stored reads a job's record from etcd (nil if absent).
func (ts *testScheduler) stored(id string) *schedv1.Job {
	ts.t.Helper()
	resp, err := ts.cli.Get(ts.ctx, ts.st.jobKey(id))
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
	return j
}

// keys counts etcd keys under the scheduler's prefix plus sub.
func (ts *testScheduler) keys(sub string) int64 {
	ts.t.Helper()
	resp, err := ts.cli.Get(ts.ctx, ts.opts.Prefix+sub, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		ts.t.Fatal(err)
	}
	return resp.Count
}

func testSpec(kind any, cpu int64) *schedv1.JobSpec {
	s := &schedv1.JobSpec{OwnerEmail: "t@example.com", Application: "t",
		Task: &agentv1.TaskSpec{Image: "registry.example/x:1", Command: []string{"x"}, Resources: &agentv1.Resources{CpuMillicores: cpu, MemoryMib: 64}}}
	switch k := kind.(type) {
	case *schedv1.BatchJob:
		s.Kind = &schedv1.JobSpec_Batch{Batch: k}
	case *schedv1.ServiceJob:
		s.Kind = &schedv1.JobSpec_Service{Service: k}
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
		if g.err != nil {
			return nil, g.err
		}
	}
	return t.Txn.Commit()
}
