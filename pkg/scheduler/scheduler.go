package scheduler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
	"github.com/titus-agent/titus-agent/pkg/audit"
	"github.com/titus-agent/titus-agent/pkg/authn"
	"github.com/titus-agent/titus-agent/pkg/authz"
	"github.com/titus-agent/titus-agent/pkg/scheduler/api"
	"github.com/titus-agent/titus-agent/pkg/scheduler/core"
	"github.com/titus-agent/titus-agent/pkg/scheduler/store"
)

// Scheduler is one replica: it serves the API on Options.Listen, campaigns
// for leadership and, while leader, schedules.
type Scheduler struct {
	opts Options
	log  *slog.Logger
	lis  net.Listener
	srv  *grpc.Server
	core *core.Core
	// audit is the trail of mutating calls, attached to etcd in Run.
	audit *audit.Log

	leader     atomic.Bool
	leaderAddr atomic.Value // string
	ready      chan struct{}
}

// Stats are the scheduler's running totals.
type Stats = core.Stats

// Stats returns the running totals.
func (s *Scheduler) Stats() Stats { return s.core.Stats() }

// EmbeddedEtcd is a single-member etcd inside this process (see store.StartEmbeddedEtcd).
type EmbeddedEtcd = store.EmbeddedEtcd

// StartEmbeddedEtcd starts (or restarts) the embedded etcd in dir.
func StartEmbeddedEtcd(ctx context.Context, dir string) (*EmbeddedEtcd, error) {
	return store.StartEmbeddedEtcd(ctx, dir)
}

// New checks the options and listens on Options.Listen.
func New(opts Options, log *slog.Logger) (*Scheduler, error) {
	opts.setDefaults()
	if log == nil {
		log = slog.Default()
	}
	if opts.Policy != nil {
		// Every target group a job may name is reconciled, named by a job
		// now or not: no target outlives its job (patterns cannot be listed).
		for _, app := range opts.Policy.Applications {
			for _, arn := range app.TargetGroups {
				if !strings.HasSuffix(arn, "*") {
					opts.ManagedTargetGroups = append(opts.ManagedTargetGroups, arn)
				}
			}
		}
	}
	c, err := core.New(opts.CoreConfig, log)
	if err != nil {
		return nil, err
	}
	if opts.Listen == "" {
		return nil, errors.New("listen address is required")
	}
	if len(opts.Endpoints) == 0 && opts.DataDir == "" {
		return nil, errors.New("a data dir (embedded etcd) or etcd endpoints are required")
	}
	if err := checkExposure(opts, log); err != nil {
		return nil, err
	}
	an := opts.Authn
	if an == nil {
		if an, err = authn.New(authn.Config{}, nil); err != nil {
			return nil, err
		}
	}
	decider := authz.Open()
	if opts.Policy != nil {
		decider = authz.New(opts.Policy)
	}
	trail := audit.New(audit.Options{Prefix: opts.Prefix, MaxAge: opts.AuditMaxAge, MaxRecords: opts.AuditMaxRecords, Log: log,
		RefusalBurst: opts.AuditRefusalBurst, RefusalEvery: opts.AuditRefusalEvery, RefusalWindow: opts.AuditRefusalWindow,
		MaxRecordsPerPrincipal: opts.AuditMaxRecordsPerPrincipal})
	guard := authz.NewGuard(authz.GuardConfig{Authn: an, Decider: decider, Audit: trail, MaxRequestBytes: opts.MaxRequestBytes, Log: log})
	lis, err := net.Listen("tcp", opts.Listen)
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	if opts.Advertise == "" || opts.Advertise == opts.Listen {
		opts.Advertise = lis.Addr().String()
	}
	s := &Scheduler{opts: opts, log: log, lis: lis, core: c, audit: trail, ready: make(chan struct{})}
	s.leaderAddr.Store("")
	sopts := append(keepaliveOptions(defaultKeepalive()), grpc.MaxRecvMsgSize(16<<20))
	if opts.TLS != nil {
		sopts = append(sopts, grpc.Creds(credentials.NewTLS(opts.TLS)))
	}
	if m := opts.Metrics; m != nil {
		sopts = append(sopts, grpc.ChainUnaryInterceptor(m.GRPC.UnaryServerInterceptor()), grpc.ChainStreamInterceptor(m.GRPC.StreamServerInterceptor()))
	}
	// The guard runs on every RPC, the agent stream included, after the
	// metrics interceptors (refused calls are counted too).
	sopts = append(sopts, grpc.ChainUnaryInterceptor(guard.Unary), grpc.ChainStreamInterceptor(guard.Stream))
	s.srv = grpc.NewServer(sopts...)
	as := api.New(c, s, guard, trail)
	as.SetLog(log)
	as.SetExecMaxSessionsPerCaller(opts.ExecMaxSessionsPerCaller)
	if opts.LogArchive != nil {
		as.SetLogArchive(opts.LogArchive)
	}
	as.SetLogReadLimits(opts.MaxLogReadsPerCaller, opts.MaxLogReads)
	schedv1.RegisterSchedulerServer(s.srv, as)
	return s, nil
}

// Addr is the address the API listens on.
func (s *Scheduler) Addr() string { return s.lis.Addr().String() }

// IsLeader reports whether this replica is the leader now.
func (s *Scheduler) IsLeader() bool { return s.leader.Load() }

// LeaderAddr is the current leader's advertised address ("" if unknown).
func (s *Scheduler) LeaderAddr() string {
	a, _ := s.leaderAddr.Load().(string)
	return a
}

// Leading is closed once this replica has become leader and loaded its state.
func (s *Scheduler) Leading() <-chan struct{} { return s.ready }

// Run serves the API and campaigns for leadership until ctx ends. It
// returns an error if leadership is lost (the caller restarts the process).
func (s *Scheduler) Run(ctx context.Context) error {
	endpoints := s.opts.Endpoints
	if len(endpoints) == 0 {
		e, err := store.StartEmbeddedEtcd(ctx, s.opts.DataDir+"/etcd")
		if err != nil {
			s.lis.Close()
			return err
		}
		defer e.Close()
		endpoints = e.Endpoints
	}
	cli, err := store.Dial(endpoints)
	if err != nil {
		s.lis.Close()
		return err
	}
	defer cli.Close()
	actx, acancel := context.WithCancel(ctx)
	adone := make(chan struct{})
	go func() { defer close(adone); s.audit.Run(actx, cli) }()
	defer func() { acancel(); <-adone }()

	serveErr := make(chan error, 1)
	go func() { serveErr <- s.srv.Serve(s.lis) }()
	defer s.srv.Stop()

	el, err := store.NewElection(ctx, cli, s.opts.Prefix, s.opts.ElectionTTL, s.opts.TxnOps)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	defer el.Close()
	go el.Observe(ctx, func(addr string) { s.leaderAddr.Store(addr) })

	st, err := el.Campaign(ctx, s.opts.Advertise)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if err := s.core.Load(lctx, st, cancel); err != nil {
		return fmt.Errorf("load state: %w", err)
	}
	s.leader.Store(true)
	s.leaderAddr.Store(s.opts.Advertise)
	jobs, agents := s.core.Counts()
	s.log.Info("leading", "addr", s.opts.Advertise, "jobs", jobs, "agents", agents)
	close(s.ready)

	done := make(chan struct{})
	go func() { defer close(done); s.core.Run(lctx) }()
	select {
	case <-ctx.Done():
		err = nil
	case <-el.Done():
		err = errors.New("lost leadership: etcd session expired")
	case <-lctx.Done():
		err = errors.New("lost leadership: a fenced write was refused")
	case err = <-serveErr:
	}
	s.leader.Store(false)
	cancel()
	<-done
	if ctx.Err() != nil {
		// Orderly shutdown: flush what is pending, then hand over at once.
		fctx, fcancel := context.WithTimeout(context.Background(), 5*time.Second)
		s.core.Flush(fctx)
		_ = el.Resign(fctx)
		fcancel()
	}
	return err
}
