package core

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/titus-agent/titus-agent/pkg/metrics"
	"github.com/titus-agent/titus-agent/pkg/scheduler/model"
)

// Store is what the core needs of durable state. Every write is fenced on
// the leader's term and fails with model.ErrNotLeader once it is over.
type Store interface {
	// PutJob writes a job record now.
	PutJob(ctx context.Context, j *model.Job) error
	// CreateTasks writes new task attempts; none may exist yet.
	CreateTasks(ctx context.Context, ts []*model.Task) error
	// SaveJob, SaveTask and SaveAgent queue records for the next Flush;
	// they encode at once and never block on I/O.
	SaveJob(j *model.Job)
	SaveTask(t *model.Task)
	SaveAgent(a *model.Agent)
	Flush(ctx context.Context) error
	// Delete removes jobs with every attempt of their tasks, and agents.
	Delete(ctx context.Context, jobIDs, agentIDs []string) error
	Agents(ctx context.Context) ([]*model.Agent, error)
	Jobs(ctx context.Context) ([]*model.Job, error)
	JobTasks(ctx context.Context, jobID string) ([]*model.Task, error)
	// Task reads one attempt, nil if absent.
	Task(ctx context.Context, id string) (*model.Task, error)
}

// DefaultAgentTTL is how long an agent may be silent before it is lost
// (Config.AgentTTL, the scheduler's --agent-ttl): longer than an agent's
// restart (systemd's RestartSec of 2 s, re-adoption, a reconnect), so a
// restart no task notices, and short enough that a host that is gone has
// its service tasks replaced soon.
const DefaultAgentTTL = 10 * time.Second

// Config tunes the core. Zero fields take the defaults below.
type Config struct {
	// AgentTTL: an agent silent this long is lost and its tasks are replaced.
	AgentTTL time.Duration
	// HeartbeatInterval is what agents are told to use.
	HeartbeatInterval time.Duration
	// Groups are the capacity groups; "default" (flex, unlimited) is added when absent.
	Groups []model.Group
	// Bounded queues: pending tasks per group and in total.
	MaxPendingPerGroup int
	MaxPendingTotal    int
	// MaxLaunchingPerHost caps tasks sent to a host but not yet running.
	MaxLaunchingPerHost int
	// Quarantine a host after QuarantineFailures platform failures within QuarantineWindow.
	QuarantineFailures int
	QuarantineWindow   time.Duration
	// CrashLoopBase/CrashLoopCap: whatever a job's retry policy, the third and
	// later consecutive failures wait at least base*2^(n-3), capped.
	CrashLoopBase time.Duration
	CrashLoopCap  time.Duration
	// FinishedJobRetention and MaxFinishedJobs bound the ended jobs kept.
	FinishedJobRetention time.Duration
	MaxFinishedJobs      int
	// PlaceBatch is the most tasks placed per round.
	PlaceBatch int
	// MaxLiveJobs caps the jobs not yet ended, in total and per
	// application (a service at desired 0 is live): past them, submissions
	// are refused. They bound the records in etcd with MaxFinishedJobs.
	MaxLiveJobs               int
	MaxLiveJobsPerApplication int
	// Metrics, if set, gets placement latency, queue depth and agents by health.
	Metrics *metrics.Scheduler
	// LoadBalancers, if set, puts service tasks into their jobs' target
	// groups (nil: jobs naming target groups are refused).
	LoadBalancers LoadBalancers
	// MaxDeregistrationWait bounds how long a stop waits for a task to
	// leave its target groups (their deregistration delay) before the kill.
	MaxDeregistrationWait time.Duration
	// TargetReconcileInterval is how often every managed target group is
	// compared with the tasks that should be in it, and drift fixed.
	TargetReconcileInterval time.Duration
	// ManagedTargetGroups are reconciled even when no job names them now
	// (the policy's target groups), so no target outlives its job.
	ManagedTargetGroups []string
}

// Defaults of the finished-job retention (Config.FinishedJobRetention, MaxFinishedJobs).
const (
	DefaultFinishedJobRetention = 24 * time.Hour
	DefaultMaxFinishedJobs      = 10_000
)

// Defaults of the live-job caps (Config.MaxLiveJobs, MaxLiveJobsPerApplication).
const (
	DefaultMaxLiveJobs               = 50_000
	DefaultMaxLiveJobsPerApplication = 5_000
)

// SetDefaults fills zero fields.
func (o *Config) SetDefaults() {
	if o.AgentTTL <= 0 {
		o.AgentTTL = DefaultAgentTTL
	}
	if o.HeartbeatInterval <= 0 {
		o.HeartbeatInterval = o.AgentTTL / 5
	}
	if o.MaxPendingPerGroup <= 0 {
		o.MaxPendingPerGroup = 100_000
	}
	if o.MaxPendingTotal <= 0 {
		o.MaxPendingTotal = 200_000
	}
	if o.MaxLaunchingPerHost <= 0 {
		o.MaxLaunchingPerHost = 32
	}
	if o.QuarantineFailures <= 0 {
		o.QuarantineFailures = 5
	}
	if o.QuarantineWindow <= 0 {
		o.QuarantineWindow = 10 * time.Minute
	}
	if o.CrashLoopBase <= 0 {
		o.CrashLoopBase = time.Second
	}
	if o.CrashLoopCap <= 0 {
		o.CrashLoopCap = 5 * time.Minute
	}
	if o.FinishedJobRetention <= 0 {
		o.FinishedJobRetention = DefaultFinishedJobRetention
	}
	if o.MaxFinishedJobs <= 0 {
		o.MaxFinishedJobs = DefaultMaxFinishedJobs
	}
	if o.PlaceBatch <= 0 {
		o.PlaceBatch = 4096
	}
	if o.MaxLiveJobs <= 0 {
		o.MaxLiveJobs = DefaultMaxLiveJobs
	}
	if o.MaxLiveJobsPerApplication <= 0 {
		o.MaxLiveJobsPerApplication = DefaultMaxLiveJobsPerApplication
	}
	if o.MaxDeregistrationWait <= 0 {
		o.MaxDeregistrationWait = DefaultMaxDeregistrationWait
	}
	if o.TargetReconcileInterval <= 0 {
		o.TargetReconcileInterval = DefaultTargetReconcileInterval
	}
}

// CheckGroups validates the capacity groups and returns them by name, with
// defaults filled and the default group added.
func (o *Config) CheckGroups() (map[string]*model.Group, error) {
	out := map[string]*model.Group{}
	for i := range o.Groups {
		g := o.Groups[i]
		if g.Name == "" {
			return nil, fmt.Errorf("capacity group %d: name is required", i)
		}
		switch g.Tier {
		case "":
			g.Tier = model.TierFlex
		case model.TierCritical, model.TierFlex:
		default:
			return nil, fmt.Errorf("capacity group %s: tier must be critical or flex", g.Name)
		}
		if g.MaxPending <= 0 {
			g.MaxPending = o.MaxPendingPerGroup
		}
		out[g.Name] = &g
	}
	if out[model.DefaultGroup] == nil {
		out[model.DefaultGroup] = &model.Group{Name: model.DefaultGroup, Tier: model.TierFlex, MaxPending: o.MaxPendingPerGroup}
	}
	return out, nil
}

// Core is the leader's working set. Build it with New, fill it with Load
// when this replica becomes leader, then Run its loops while leading.
type Core struct {
	opts   Config
	groups map[string]*model.Group
	log    *slog.Logger
	st     Store
	clock  func() time.Time // time.Now; a fake clock in tests
	kick   chan struct{}
	stats  counters

	// term is this leadership term's end: stepDown is set by Load and
	// called, without mu, when a fenced write is refused; stopped is set
	// once Run returns, so no session attaches afterwards.
	stepDown atomic.Pointer[func()]
	stopped  atomic.Bool

	mu     sync.RWMutex
	jobs   map[string]*jobState
	tasks  map[string]*taskState
	agents map[string]*agentState
	// zones are the agents' findings of subnets' zones (zones.go).
	zones subnetZones
	// hostGen changes whenever an agent registers or goes: constrained
	// jobs' host lists (jobHosts) are recomputed only then.
	hostGen uint64
	// hostSets are the jobHosts of every placement seen since hostGen
	// last changed, by constraint.Placement.HostsKey: jobs with the same
	// constraints share one evaluation of them over the fleet.
	hostSets    map[string]*jobHosts
	hostSetsGen uint64
	gstate      map[string]*groupState
	q           queues
	ret         retention
	// submitting counts submissions being written, by application: they
	// count against the live-job caps before they are in jobs.
	submitting map[string]int
	// live counts the jobs not ended, by application (kept in step by
	// Submit, loadJob and finishJob).
	live live
	// dirty are the jobs to step (rollouts, drains) soon; stepKick wakes the step loop.
	dirty    map[*jobState]struct{}
	stepKick chan struct{}

	// tgt is the load balancer integration's state.
	tgt targetsState

	// idem are the submit idempotency keys (idempotency.go), by scope/key.
	idem       map[string]*idemEntry
	idemScopes map[string]int // keys held per caller scope
	// idemExpired are expired keys out of idem, to remove from the store;
	// idemScanAt is when expireKeys may find one again.
	idemExpired []*model.IdempotencyKey
	idemScanAt  time.Time
	idemPruneAt time.Time

	badMu          sync.Mutex
	unreadableJobs map[string]bool // ids of jobs whose record could not be read
}

// live counts jobs not ended.
type live struct {
	byApp map[string]int
	total int
}

func (l *live) add(app string, n int) {
	if l.byApp == nil {
		l.byApp = map[string]int{}
	}
	l.byApp[app] += n
	l.total += n
	if l.byApp[app] <= 0 {
		delete(l.byApp, app)
	}
}

type counters struct {
	placed, heartbeats, launchesSent, lostAgents, pruned, refusedSessions, quarantined atomic.Int64
}

// Stats are the scheduler's running totals.
type Stats struct {
	Placed, Heartbeats, LaunchesSent, LostAgents int64
	// PrunedJobs is how many ended jobs were removed after their retention.
	PrunedJobs int64
	// RefusedSessions counts agent streams refused because their instance
	// id already had a live session.
	RefusedSessions int64
	// QuarantinedRecords counts records in etcd that could not be read,
	// were skipped and copied under the quarantine prefix.
	QuarantinedRecords int64
}

// Stats returns the running totals.
func (c *Core) Stats() Stats {
	s := &c.stats
	return Stats{s.placed.Load(), s.heartbeats.Load(), s.launchesSent.Load(), s.lostAgents.Load(), s.pruned.Load(), s.refusedSessions.Load(), s.quarantined.Load()}
}

// New checks the configuration. The core is empty until Load.
func New(opts Config, log *slog.Logger) (*Core, error) {
	opts.SetDefaults()
	groups, err := opts.CheckGroups()
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	return &Core{opts: opts, groups: groups, log: log, clock: time.Now, kick: make(chan struct{}, 1), stepKick: make(chan struct{}, 1),
		tgt: targetsState{kick: make(chan struct{}, 1)}}, nil
}

// Counts says how many jobs and agents the core holds.
func (c *Core) Counts() (jobs, agents int) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.jobs), len(c.agents)
}

// Run places, persists and watches agents until ctx ends, then closes
// every agent session.
func (c *Core) Run(ctx context.Context) {
	var wg sync.WaitGroup
	loops := []func(context.Context){c.placeLoop, c.flushLoop, c.livenessLoop, c.stepLoop}
	if c.targetsOn() {
		loops = append(loops, c.targetLoop)
	}
	for _, loop := range loops {
		wg.Go(func() { loop(ctx) })
	}
	wg.Wait()
	c.stopped.Store(true) // before the sessions close: Connect checks it under mu
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, a := range c.agents {
		if a.sess != nil {
			a.sess.close()
			a.sess = nil
		}
	}
}

func (c *Core) poke() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// fenceFailed steps down after a refused fenced write.
func (c *Core) fenceFailed(err error) {
	if errors.Is(err, model.ErrNotLeader) {
		c.log.Error("stepping down", "err", err)
		if f := c.stepDown.Load(); f != nil {
			(*f)()
		}
	}
}

// pruneEvery is how often the flush loop removes ended jobs past their retention.
const pruneEvery = time.Second

// flushLoop persists task state changes and agent records in batches, and
// prunes ended jobs (in the same goroutine, so no flush of a pruned job's
// records can land after its delete).
func (c *Core) flushLoop(ctx context.Context) {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	next := time.Now().Add(pruneEvery)
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			c.Flush(ctx)
			if now.After(next) {
				c.prune(ctx)
				next = now.Add(pruneEvery)
			}
		}
	}
}

// Flush persists the queued state changes now.
func (c *Core) Flush(ctx context.Context) error {
	err := c.st.Flush(ctx)
	if err != nil {
		c.fenceFailed(err)
		if !errors.Is(err, model.ErrNotLeader) && ctx.Err() == nil {
			c.log.Warn("persist state", "err", err)
		}
	}
	return err
}

// livenessLoop marks agents lost once they have been silent past the TTL.
func (c *Core) livenessLoop(ctx context.Context) {
	t := time.NewTicker(min(c.opts.AgentTTL/10, time.Second))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			c.checkLiveness(now)
		}
	}
}

// checkLiveness marks lost every agent without a heartbeat for the TTL.
func (c *Core) checkLiveness(now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, a := range c.agents {
		if !a.lost && a.silentFor(now) > c.opts.AgentTTL {
			c.agentLost(a, now)
		}
	}
}
