package healthcheck

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/titus-agent/titus-agent/pkg/task"
)

// Report gets each check's health; changed says the status changed.
type Report = func(h task.Health, changed bool)

// Service runs the checks of every task on the host, one goroutine each.
type Service struct {
	exec Execer
	log  *slog.Logger
	now  func() time.Time
	// openDialer opens a dialer in a task's netns (tests replace it).
	openDialer func(path string) (DialFunc, func() error, error)

	mu      sync.Mutex
	running map[string]*checkLoop
}

type checkLoop struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// New makes a service; exec runs exec checks inside containers.
func New(exec Execer, log *slog.Logger) *Service {
	if log == nil {
		log = slog.Default()
	}
	return &Service{exec: exec, log: log, now: time.Now, running: map[string]*checkLoop{},
		openDialer: func(path string) (DialFunc, func() error, error) {
			d, err := OpenNetNSDialer(path)
			if err != nil {
				return nil, nil, err
			}
			return d.DialContext, d.Close, nil
		}}
}

// ErrNoNetNS refuses an http or tcp check of a task without its own
// network namespace: it is never dialled from the host's.
var ErrNoNetNS = errors.New("http and tcp health checks need the task's own network namespace")

// Start checks the task until ctx ends (the agent shuts down) or Stop.
// started is when the task started running (the start period counts
// from it); last is its recorded health, if any. Starting a task already
// checked does nothing.
func (s *Service) Start(ctx context.Context, spec *task.Spec, n *task.NetworkAttachment, started time.Time, last *task.Health, report Report) error {
	if spec.HealthCheck == nil {
		return nil
	}
	check := *spec.HealthCheck
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.running[spec.ID]; ok {
		return nil
	}
	var (
		p       Prober
		closeFn = func() error { return nil }
	)
	switch check.Kind {
	case task.HealthExec:
		p = &ExecProber{Exec: s.exec, TaskID: spec.ID, Args: check.Command}
	case task.HealthHTTP, task.HealthTCP:
		if n == nil || n.NetNSPath == "" || n.IPv4 == "" {
			return ErrNoNetNS
		}
		dial, closeNS, err := s.openDialer(n.NetNSPath)
		if err != nil {
			return fmt.Errorf("health check of %s: %w", spec.ID, err)
		}
		closeFn = closeNS
		addr := net.JoinHostPort(n.IPv4, strconv.Itoa(int(check.Port)))
		if check.Kind == task.HealthTCP {
			p = &TCPProber{Dial: dial, Addr: addr}
		} else {
			p = NewHTTPProber(dial, addr, check.Path, int(check.ExpectedStatus))
		}
	default:
		return fmt.Errorf("health check of %s: unknown kind %q", spec.ID, check.Kind)
	}
	lctx, cancel := context.WithCancel(ctx)
	l := &checkLoop{cancel: cancel, done: make(chan struct{})}
	s.running[spec.ID] = l
	tr := NewTracker(check, started, last, s.now())
	if last == nil || last.Status == task.HealthNone {
		report(tr.Health(), true) // Starting
	}
	go func() {
		defer close(l.done)
		defer closeFn()
		s.loop(lctx, check, p, tr, report)
	}()
	return nil
}

// Stop ends a task's checks and returns once no report of it can follow.
// Stopping a task not checked does nothing.
func (s *Service) Stop(taskID string) {
	s.mu.Lock()
	l := s.running[taskID]
	delete(s.running, taskID)
	s.mu.Unlock()
	if l != nil {
		l.cancel()
		<-l.done
	}
}

// Checked is the number of tasks being checked.
func (s *Service) Checked() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.running)
}

func (s *Service) loop(ctx context.Context, check task.HealthCheck, p Prober, tr *Tracker, report Report) {
	// The first check comes at a random point of the first interval, so
	// tasks started together are not checked in step.
	t := time.NewTimer(rand.N(check.Interval))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		start := s.now()
		pctx, cancel := context.WithTimeout(ctx, check.Timeout)
		r := p.Probe(pctx)
		cancel()
		if ctx.Err() != nil {
			return // stopped mid-check: the result says nothing of the task
		}
		h, changed := tr.Observe(r, s.now())
		report(h, changed)
		t.Reset(max(0, check.Interval-s.now().Sub(start)))
	}
}
