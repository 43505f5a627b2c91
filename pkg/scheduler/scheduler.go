package scheduler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
)

// Scheduler is one replica: it serves the API on Options.Listen, campaigns
// for leadership and, while leader, schedules.
type Scheduler struct {
	schedv1.UnimplementedSchedulerServer

	opts   Options
	groups map[string]*Group
	log    *slog.Logger
	lis    net.Listener
	srv    *grpc.Server

	leader     atomic.Bool
	leaderAddr atomic.Value // string
	ready      chan struct{}

	st    *store
	clock func() time.Time // time.Now; a fake clock in tests
	dirty dirtySet
	kick  chan struct{}
	stats counters

	mu           sync.Mutex
	jobs         map[string]*jobState
	tasks        map[string]*taskState
	agents       map[string]*agentState
	gstate       map[string]*groupState
	waiting      map[*jobState]struct{}
	backoff      backoffHeap
	pendingTotal int
	stepDown     context.CancelFunc
	// finished are the ended jobs still kept, oldest end first; unpruned
	// and unprunedAgents were pruned but their etcd delete is to be retried.
	finished       []*jobState
	unpruned       []string
	unprunedAgents []string
}

type counters struct {
	placed, heartbeats, launchesSent, lostAgents, pruned atomic.Int64
}

// Stats are the scheduler's running totals.
type Stats struct {
	Placed, Heartbeats, LaunchesSent, LostAgents int64
	// PrunedJobs is how many ended jobs were removed after their retention.
	PrunedJobs int64
}

// Stats returns the running totals.
func (s *Scheduler) Stats() Stats {
	return Stats{s.stats.placed.Load(), s.stats.heartbeats.Load(), s.stats.launchesSent.Load(), s.stats.lostAgents.Load(), s.stats.pruned.Load()}
}

// New checks the options and listens on Options.Listen.
func New(opts Options, log *slog.Logger) (*Scheduler, error) {
	opts.setDefaults()
	groups, err := opts.groups()
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	if opts.Listen == "" {
		return nil, errors.New("listen address is required")
	}
	if len(opts.Endpoints) == 0 && opts.DataDir == "" {
		return nil, errors.New("a data dir (embedded etcd) or etcd endpoints are required")
	}
	lis, err := net.Listen("tcp", opts.Listen)
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	if opts.Advertise == "" || opts.Advertise == opts.Listen {
		opts.Advertise = lis.Addr().String()
	}
	s := &Scheduler{opts: opts, groups: groups, log: log, lis: lis, ready: make(chan struct{}), kick: make(chan struct{}, 1), clock: time.Now}
	s.leaderAddr.Store("")
	sopts := []grpc.ServerOption{
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		grpc.MaxRecvMsgSize(16 << 20),
	}
	if opts.TLS != nil {
		sopts = append(sopts, grpc.Creds(credentials.NewTLS(opts.TLS)))
	}
	if m := opts.Metrics; m != nil {
		sopts = append(sopts, grpc.ChainUnaryInterceptor(m.GRPC.UnaryServerInterceptor()), grpc.ChainStreamInterceptor(m.GRPC.StreamServerInterceptor()))
	}
	s.srv = grpc.NewServer(sopts...)
	schedv1.RegisterSchedulerServer(s.srv, s)
	return s, nil
}

// Addr is the address the API listens on.
func (s *Scheduler) Addr() string { return s.lis.Addr().String() }

// IsLeader reports whether this replica is the leader now.
func (s *Scheduler) IsLeader() bool { return s.leader.Load() }

// Leading is closed once this replica has become leader and loaded its state.
func (s *Scheduler) Leading() <-chan struct{} { return s.ready }

// Run serves the API and campaigns for leadership until ctx ends. It
// returns an error if leadership is lost (the caller restarts the process).
func (s *Scheduler) Run(ctx context.Context) error {
	endpoints := s.opts.Endpoints
	if len(endpoints) == 0 {
		e, err := StartEmbeddedEtcd(ctx, s.opts.DataDir+"/etcd")
		if err != nil {
			s.lis.Close()
			return err
		}
		defer e.Close()
		endpoints = e.Endpoints
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 10 * time.Second, MaxCallSendMsgSize: 8 << 20, Logger: nopZap()})
	if err != nil {
		s.lis.Close()
		return fmt.Errorf("etcd client: %w", err)
	}
	defer cli.Close()

	serveErr := make(chan error, 1)
	go func() { serveErr <- s.srv.Serve(s.lis) }()
	defer s.srv.Stop()

	sess, err := concurrency.NewSession(cli, concurrency.WithTTL(int(max(s.opts.ElectionTTL/time.Second, 1))), concurrency.WithContext(ctx))
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("etcd session: %w", err)
	}
	defer sess.Close()
	el := concurrency.NewElection(sess, s.opts.Prefix+"leader")
	go s.observe(ctx, el)

	if err := el.Campaign(ctx, s.opts.Advertise); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("campaign: %w", err)
	}
	s.st = &store{kv: cli, prefix: s.opts.Prefix, txnOps: s.opts.TxnOps,
		fence: clientv3.Compare(clientv3.CreateRevision(el.Key()), "=", el.Rev())}
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s.mu.Lock()
	s.stepDown = cancel
	s.mu.Unlock()
	if err := s.load(lctx); err != nil {
		return fmt.Errorf("load state: %w", err)
	}
	s.leader.Store(true)
	s.leaderAddr.Store(s.opts.Advertise)
	s.log.Info("leading", "addr", s.opts.Advertise, "jobs", len(s.jobs), "agents", len(s.agents))
	close(s.ready)

	var wg sync.WaitGroup
	for _, loop := range []func(context.Context){s.placeLoop, s.flushLoop, s.livenessLoop} {
		wg.Go(func() { loop(lctx) })
	}
	select {
	case <-ctx.Done():
		err = nil
	case <-sess.Done():
		err = errors.New("lost leadership: etcd session expired")
	case <-lctx.Done():
		err = errors.New("lost leadership: a fenced write was refused")
	case err = <-serveErr:
	}
	s.leader.Store(false)
	cancel()
	wg.Wait()
	s.closeSessions()
	if ctx.Err() != nil {
		// Orderly shutdown: flush what is pending, then hand over at once.
		fctx, fcancel := context.WithTimeout(context.Background(), 5*time.Second)
		s.flush(fctx)
		_ = el.Resign(fctx)
		fcancel()
	}
	return err
}

// observe keeps the current leader's address for clients of standbys.
func (s *Scheduler) observe(ctx context.Context, el *concurrency.Election) {
	for resp := range el.Observe(ctx) {
		if len(resp.Kvs) > 0 {
			s.leaderAddr.Store(string(resp.Kvs[0].Value))
		}
	}
}

func (s *Scheduler) closeSessions() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, a := range s.agents {
		if a.sess != nil {
			a.sess.close()
			a.sess = nil
		}
	}
}

func (s *Scheduler) poke() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// fenceFailed steps down after a refused fenced write.
func (s *Scheduler) fenceFailed(err error) {
	if errors.Is(err, ErrNotLeader) {
		s.log.Error("stepping down", "err", err)
		s.mu.Lock()
		if s.stepDown != nil {
			s.stepDown()
		}
		s.mu.Unlock()
	}
}

// pruneEvery is how often the flush loop removes ended jobs past their retention.
const pruneEvery = time.Second

// flushLoop persists task state changes and agent records in batches, and
// prunes ended jobs (in the same goroutine, so no flush of a pruned job's
// records can land after its delete).
func (s *Scheduler) flushLoop(ctx context.Context) {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	next := time.Now().Add(pruneEvery)
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			s.flush(ctx)
			if now.After(next) {
				s.prune(ctx)
				next = now.Add(pruneEvery)
			}
		}
	}
}

func (s *Scheduler) flush(ctx context.Context) error {
	puts := s.dirty.take()
	if len(puts) == 0 {
		return nil
	}
	err := s.st.commit(ctx, puts)
	if err != nil {
		s.fenceFailed(err)
		if !errors.Is(err, ErrNotLeader) && ctx.Err() == nil {
			s.log.Warn("persist state", "err", err)
			for _, p := range puts {
				s.dirty.setIfAbsent(p.key, p.val)
			}
		}
	}
	return err
}

// livenessLoop marks agents lost once they have been silent past the TTL.
func (s *Scheduler) livenessLoop(ctx context.Context) {
	t := time.NewTicker(min(s.opts.AgentTTL/10, time.Second))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			s.mu.Lock()
			for _, a := range s.agents {
				if !a.lost && a.silentFor(now) > s.opts.AgentTTL {
					s.agentLost(a, now)
				}
			}
			s.mu.Unlock()
		}
	}
}
