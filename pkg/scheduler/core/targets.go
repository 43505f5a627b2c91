package core

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/errdefs"

	"github.com/titus-agent/titus-agent/pkg/backoff"
	"github.com/titus-agent/titus-agent/pkg/metrics"
	"github.com/titus-agent/titus-agent/pkg/scheduler/model"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// Target is one IP:port in a target group.
type Target struct {
	IP   string
	Port uint32
}

// TargetHealth is a target as the load balancer reports it.
type TargetHealth struct {
	Target
	// State is ELBv2's: initial, healthy, unhealthy, unused, draining, unavailable.
	State string
	// Reason and Description say why it is not healthy (e.g.
	// Target.ResponseCodeMismatch, "Health checks failed with these codes: [502]").
	Reason, Description string
}

// lbServing reports whether the load balancer sends the registered
// target traffic: healthy; or, where the load balancer checks nothing,
// in a group no load balancer uses (unused, Target.NotInUse) or one
// whose health checks are off (unavailable, Target.HealthCheckDisabled).
func lbServing(r model.TargetRegistration) bool {
	switch r.LBHealth {
	case model.LBHealthy:
		return true
	case "unused":
		return strings.HasPrefix(r.LBHealthReason, "Target.NotInUse")
	case "unavailable":
		return strings.HasPrefix(r.LBHealthReason, "Target.HealthCheckDisabled")
	}
	return false
}

// lbReason is how a TargetHealth's reason is kept.
func lbReason(h TargetHealth) string {
	switch {
	case h.Reason == "":
		return h.Description
	case h.Description == "":
		return h.Reason
	}
	return h.Reason + ": " + h.Description
}

// Draining is the state of a deregistered target waiting out its delay.
const Draining = "draining"

// LoadBalancers is what the core needs of the load balancers (package
// scheduler/lb implements it on ELBv2, retrying throttled calls). Calls
// block on the network: the core never makes them holding its lock.
type LoadBalancers interface {
	// Register adds targets to a group; one already there is no error.
	Register(ctx context.Context, arn string, ts []Target) error
	// Deregister removes targets; one not there is no error.
	Deregister(ctx context.Context, arn string, ts []Target) error
	// Targets lists the group's targets with their states.
	Targets(ctx context.Context, arn string) ([]TargetHealth, error)
	// DeregistrationDelay is how long the group keeps a deregistered
	// target draining (deregistration_delay.timeout_seconds).
	DeregistrationDelay(ctx context.Context, arn string) (time.Duration, error)
	// TargetType is the group's target type (ip, instance, lambda, alb);
	// an error wrapping ErrNoTargetGroup when there is no such group.
	TargetType(ctx context.Context, arn string) (string, error)
}

// ErrNoTargetGroup: the load balancer API has no target group of that ARN.
var ErrNoTargetGroup = errors.New("no such target group")

// checkTargetGroupsExist refuses a job naming a target group the load
// balancer API does not know, or one whose targets are not IPs (a task
// can only join a group as its IP). It calls the API: callers do not
// hold c.mu. A group the scheduler cannot read (permissions, an outage)
// is refused too, saying so, rather than accepted into a job that would
// never join it.
func (c *Core) checkTargetGroupsExist(ctx context.Context, tgs []model.TargetGroup) error {
	if !c.targetsOn() || len(tgs) == 0 {
		return nil
	}
	ck := &task.Checker{}
	var failed error
	for i, tg := range tgs {
		f := "service.target_groups[" + strconv.Itoa(i) + "].arn"
		typ, err := c.lbAPI().TargetType(ctx, tg.ARN)
		switch {
		case errors.Is(err, ErrNoTargetGroup):
			ck.Failf(f, "no target group %s in the load balancer API (check its region and account)", tg.ARN)
		case err != nil:
			failed = errors.Join(failed, fmt.Errorf("checking target group %s: %w", tg.ARN, err))
		case typ != "ip":
			ck.Failf(f, "target group %s has target type %q: a task joins as its IP, so the group's target type must be ip", tg.ARN, typ)
		}
	}
	if fs := ck.Fields(); len(fs) > 0 {
		return &ValidationError{Fields: fs}
	}
	if failed != nil {
		return fmt.Errorf("%w: the scheduler could not read the job's target groups (it needs elasticloadbalancing:DescribeTargetGroups): %w", errdefs.ErrUnavailable, failed)
	}
	return nil
}

// Defaults of the load balancer settings (Config.MaxDeregistrationWait,
// TargetReconcileInterval).
const (
	DefaultMaxDeregistrationWait   = 2 * time.Minute
	DefaultTargetReconcileInterval = time.Minute
)

// targetPassEvery is how often the target loop runs without a kick.
const targetPassEvery = 500 * time.Millisecond

// taskTargets is one task's standing in its job's target groups, as this
// leader knows it (a new leader starts from nothing and re-registers,
// which is idempotent).
type taskTargets struct {
	tracked bool // in c.tgt.tasks: has an IP, its job has target groups
	// heard: its agent has reported it in this leadership term. Until
	// then its record may be stale (health is not always persisted), so
	// a new leader neither registers nor deregisters it on the record's
	// word: a failover never empties a load balancer.
	heard bool
	// refused: its reported IP cannot be a target (not a unicast IPv4);
	// it is never registered.
	refused bool
	// claimed: its IP is another live task's; it is tracked once that
	// task ends.
	claimed bool
	// inflight: a Register call for it is under way (a stop must then
	// deregister it, whatever its record says).
	inflight bool
	// stopping: stopTask deferred the kill until the task has left its
	// groups; stopAt is when. deregistered: it has; drainUntil: the kill
	// is sent then, or once no group shows it draining.
	stopping     bool
	stopAt       time.Time
	deregistered bool
	drainUntil   time.Time
	// drainedGroups counts the groups that no longer show it draining
	// (this pass).
	drainedGroups int
}

// goneTarget is a target of an ended task still to remove.
type goneTarget struct {
	arn string
	t   Target
}

// targetsState is the core's part of the load balancer integration
// (guarded by c.mu).
type targetsState struct {
	tasks map[*taskState]struct{}
	// byIP is the tracked task of each IP: one IP, one task.
	byIP map[string]*taskState
	gone map[goneTarget]struct{}
	// retryAt holds back calls to a group whose last call failed.
	retryAt  map[string]time.Time
	failures map[string]int
	kick     chan struct{}
}

var targetBackoff = backoff.Policy{Base: time.Second, Max: time.Minute, Jitter: backoff.Equal}

func (c *Core) targetsOn() bool { return c.opts.LoadBalancers != nil }

func (c *Core) kickTargets() {
	select {
	case c.tgt.kick <- struct{}{}:
	default:
	}
}

// checkTargetGroupsConfigured refuses target groups when this scheduler
// has no load balancer integration: they would silently never be used.
func (c *Core) checkTargetGroupsConfigured(spec model.JobSpec) error {
	if len(spec.TargetGroups()) > 0 && !c.targetsOn() {
		ck := &task.Checker{}
		ck.Failf("service.target_groups", "this scheduler has no load balancer integration (loadBalancers in its configuration)")
		return &ValidationError{Fields: ck.Fields()}
	}
	return nil
}

// trackTargets starts managing t's targets once it has an IP and its job
// names target groups. Callers hold c.mu.
func (c *Core) trackTargets(t *taskState) {
	if !c.targetsOn() || t.lb.tracked || t.lb.refused || t.rec.IP == "" || len(groupsOf(t)) == 0 {
		return
	}
	if c.tgt.tasks == nil {
		c.tgt.tasks, c.tgt.byIP = map[*taskState]struct{}{}, map[string]*taskState{}
	}
	// The IP comes from an agent: a broken or hostile one must not put
	// another task's address (another tenant's, on another host) or a
	// non-task address into this job's load balancer.
	ip, err := netip.ParseAddr(t.rec.IP)
	if err != nil || !ip.Is4() || !ip.IsGlobalUnicast() {
		t.lb.refused = true
		c.log.Error("not registering a task in its target groups: its agent reported no usable IPv4", "task", t.rec.ID, "agent", t.agent.id, "ip", t.rec.IP)
		return
	}
	if o := c.tgt.byIP[t.rec.IP]; o != nil && o != t && o.lb.tracked {
		// Not refused for good: the holder may be a task a previous
		// leader's unflushed records still show live, whose IP the agent
		// gave to this one. Once the holder ends, targetsEnded tracks t.
		if !t.lb.claimed {
			t.lb.claimed = true
			c.log.Error("not registering a task in its target groups while its IP is another live task's", "task", t.rec.ID, "agent", t.agent.id, "ip", t.rec.IP, "holder", o.rec.ID, "holder_agent", o.agent.id)
		}
		return
	}
	t.lb.claimed = false
	c.tgt.byIP[t.rec.IP] = t
	t.lb.tracked = true
	c.tgt.tasks[t] = struct{}{}
	if len(t.rec.Targets) == 0 {
		var rs []model.TargetRegistration
		for _, tg := range groupsOf(t) {
			rs = append(rs, model.TargetRegistration{ARN: tg.ARN, Port: tg.Port, State: model.TargetPending})
		}
		t.rec.Targets = rs
	}
	c.kickTargets()
}

// targetsEnded forgets an ended task, leaving its targets to be removed
// (unless it had already left its groups). Callers hold c.mu.
func (c *Core) targetsEnded(t *taskState) {
	if !t.lb.tracked {
		return
	}
	delete(c.tgt.tasks, t)
	if c.tgt.byIP[t.rec.IP] == t {
		delete(c.tgt.byIP, t.rec.IP)
		// A task waiting for this IP (see trackTargets) serves from it now.
		for _, o := range c.tasks {
			if o != t && o.lb.claimed && o.rec.IP == t.rec.IP {
				c.trackTargets(o)
			}
		}
	}
	t.lb.tracked = false
	if t.lb.deregistered {
		return
	}
	// Shown as draining: its targets are being removed.
	rs := slices.Clone(t.rec.Targets)
	for i := range rs {
		if rs[i].State == model.TargetRegistered {
			rs[i].State, rs[i].Deregistered = model.TargetDraining, c.clock()
		}
	}
	t.rec.Targets = rs
	if c.tgt.gone == nil {
		c.tgt.gone = map[goneTarget]struct{}{}
	}
	for _, tg := range groupsOf(t) {
		c.tgt.gone[goneTarget{tg.ARN, Target{t.rec.IP, tg.Port}}] = struct{}{}
	}
	c.kickTargets()
}

// wantsTargets reports whether t should be in its target groups now:
// Running, healthy if it has a check, not being stopped, its job live.
func wantsTargets(t *taskState) bool {
	if t.killWanted || t.committing || t.job.terminal() || t.rec.State != task.Running {
		return false
	}
	return !t.checked || (t.rec.Health != nil && t.rec.Health.Status == task.HealthHealthy)
}

// whyOut says why a live task's targets leave its groups, for the log:
// the first reason wantsTargets (or a stop) has.
func whyOut(t *taskState) string {
	switch {
	case t.lb.stopping:
		return "stopping"
	case t.killWanted:
		return "kill wanted"
	case t.job.terminal():
		return "job ended"
	case t.rec.State != task.Running:
		return "state " + t.rec.State.String()
	case t.rec.Health == nil:
		return "health not known"
	}
	return "health " + t.rec.Health.Status.String()
}

// inTargets reports whether t serves through its load balancers: always
// true for a task not managed there; else registered in each of its
// groups, and healthy there as the load balancer itself sees it
// (DescribeTargetHealth; see lbServing). Rollouts and drains count a
// task available only once it is (so at least the budget's tasks stay
// in service behind the load balancer).
func inTargets(t *taskState) bool {
	if !t.lb.tracked {
		return true
	}
	for _, r := range t.rec.Targets {
		if r.State != model.TargetRegistered || !lbServing(r) {
			return false
		}
	}
	return true
}

// setLBHealth records the load balancer's view of t's registered target
// in group arn. Callers hold c.mu.
func (c *Core) setLBHealth(t *taskState, arn string, h TargetHealth) {
	rs := slices.Clone(t.rec.Targets)
	changed := false
	for i := range rs {
		r := &rs[i]
		if r.ARN != arn || r.State != model.TargetRegistered {
			continue
		}
		if why := lbReason(h); r.LBHealth != h.State || r.LBHealthReason != why {
			r.LBHealth, r.LBHealthReason = h.State, why
			changed = true
		}
	}
	if !changed {
		return
	}
	t.rec.Targets = rs
	c.st.SaveTask(t.rec)
	c.touched(t.job) // a rollout or a drain may wait on it
}

// readLBHealth reads the groups where a registered target's health is not
// yet known to be serving, and records what the load balancer says.
func (c *Core) readLBHealth(ctx context.Context, lb LoadBalancers) {
	c.mu.RLock()
	groups := map[string]bool{}
	for t := range c.tgt.tasks {
		for _, r := range t.rec.Targets {
			if r.State == model.TargetRegistered && !lbServing(r) {
				groups[r.ARN] = true
			}
		}
	}
	c.mu.RUnlock()
	for _, arn := range slices.Sorted(maps.Keys(groups)) {
		hs, err := lb.Targets(ctx, arn)
		if err != nil {
			continue // read again next pass
		}
		c.noteLBHealth(arn, hs)
	}
}

// noteLBHealth records a group's target health on the tasks it names.
func (c *Core) noteLBHealth(arn string, hs []TargetHealth) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, h := range hs {
		t := c.tgt.byIP[h.IP]
		if t == nil || !t.lb.tracked || portIn(t, arn) != h.Port {
			continue
		}
		c.setLBHealth(t, arn, h)
	}
}

// mayBeInTargets reports whether t might be in a target group: a stop
// must then deregister it first.
func mayBeInTargets(t *taskState) bool {
	if !t.lb.tracked {
		return false
	}
	if t.lb.inflight {
		return true
	}
	for _, r := range t.rec.Targets {
		if r.State == model.TargetRegistered || r.State == model.TargetDraining {
			return true
		}
	}
	return false
}

// setTargets sets every registration of t to state (a new slice: views
// share the old one). Callers hold c.mu.
func (c *Core) setTargets(t *taskState, arn string, state model.TargetState, errMsg string, now time.Time) {
	rs := slices.Clone(t.rec.Targets)
	changed := false
	for i := range rs {
		r := &rs[i]
		if arn != "" && r.ARN != arn {
			continue
		}
		if state != "" && r.State != state {
			r.State = state
			r.LBHealth, r.LBHealthReason = "", "" // read again once registered
			changed = true
			switch state {
			case model.TargetRegistered:
				r.Registered, r.Deregistered = now, time.Time{}
			case model.TargetDraining, model.TargetDeregistered:
				if r.Deregistered.IsZero() {
					r.Deregistered = now
				}
			}
		}
		if r.Error != errMsg {
			r.Error = errMsg
			changed = true
		}
	}
	if changed {
		t.rec.Targets = rs
		c.st.SaveTask(t.rec)
	}
}

// targetOp is one call the target loop makes, and the tasks it is for.
type targetOp struct {
	arn     string
	targets []Target
	tasks   []*taskState // parallel to targets; nil for gone or drifted targets
	// stops: a deregistration for a stopping task (its delay is read).
	stops bool
}

// targetPlan is what one pass does, decided under c.mu.
type targetPlan struct {
	register, deregister []*targetOp
	// draining: groups to ask whether their draining tasks are gone.
	draining map[string][]*taskState
	// want is every target that should be registered now, by group.
	want map[string]map[Target]bool
}

func (p *targetPlan) op(list *[]*targetOp, arn string) *targetOp {
	for _, o := range *list {
		if o.arn == arn {
			return o
		}
	}
	o := &targetOp{arn: arn}
	*list = append(*list, o)
	return o
}

// targetLoop keeps the target groups in step with the tasks: it registers
// tasks that serve, deregisters those that stop (before they are killed)
// or end, and every TargetReconcileInterval compares each group with what
// it should hold and fixes the drift, so a target of an ended task is
// never left behind, whichever leader registered it.
func (c *Core) targetLoop(ctx context.Context) {
	c.mu.Lock()
	// A new term (Load made every taskState afresh): track its tasks.
	c.tgt.tasks, c.tgt.byIP = map[*taskState]struct{}{}, map[string]*taskState{}
	for _, t := range c.tasks {
		if t.lb.tracked {
			c.tgt.tasks[t] = struct{}{}
			c.tgt.byIP[t.rec.IP] = t
		} else {
			c.trackTargets(t)
		}
	}
	c.mu.Unlock()
	tick := time.NewTicker(targetPassEvery)
	defer tick.Stop()
	next := time.Time{} // reconcile at once
	for {
		now := c.clock()
		full := !now.Before(next)
		c.targetPass(ctx, now, full)
		if full {
			next = now.Add(c.opts.TargetReconcileInterval)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-c.tgt.kick:
		}
	}
}

// counted is the load balancers with every call counted in the metrics.
type counted struct {
	LoadBalancers
	m *metrics.Scheduler
}

func (c counted) count(op string, err error) error {
	if c.m != nil {
		r := "ok"
		if err != nil {
			r = "error"
		}
		c.m.TargetCalls.WithLabelValues(op, r).Inc()
	}
	return err
}

func (c counted) Register(ctx context.Context, arn string, ts []Target) error {
	return c.count("register", c.LoadBalancers.Register(ctx, arn, ts))
}

func (c counted) Deregister(ctx context.Context, arn string, ts []Target) error {
	return c.count("deregister", c.LoadBalancers.Deregister(ctx, arn, ts))
}

func (c counted) TargetType(ctx context.Context, arn string) (string, error) {
	t, err := c.LoadBalancers.TargetType(ctx, arn)
	if errors.Is(err, ErrNoTargetGroup) {
		c.count("describe_group", nil) // the call worked
		return t, err
	}
	return t, c.count("describe_group", err)
}

func (c counted) Targets(ctx context.Context, arn string) ([]TargetHealth, error) {
	hs, err := c.LoadBalancers.Targets(ctx, arn)
	return hs, c.count("describe", err)
}

func (c *Core) lbAPI() LoadBalancers { return counted{c.opts.LoadBalancers, c.opts.Metrics} }

// targetPass is one round of the target loop.
func (c *Core) targetPass(ctx context.Context, now time.Time, full bool) {
	lb := c.lbAPI()
	c.mu.Lock()
	p := c.planTargets(now)
	c.mu.Unlock()

	for _, o := range p.register {
		err := lb.Register(ctx, o.arn, o.targets)
		c.mu.Lock()
		c.callDone(o.arn, err, now)
		for _, t := range o.tasks {
			t.lb.inflight = false
			if !t.lb.tracked {
				continue // ended meanwhile: its targets are in gone
			}
			if err != nil {
				c.setTargets(t, o.arn, "", err.Error(), now)
				continue
			}
			c.setTargets(t, o.arn, model.TargetRegistered, "", now)
			if allRegistered(t) {
				c.touched(t.job) // a rollout or a drain may wait on it
			}
		}
		c.mu.Unlock()
		if err != nil && ctx.Err() == nil {
			c.log.Warn("register targets", "target_group", o.arn, "targets", o.targets, "err", err)
		}
	}

	c.readLBHealth(ctx, lb)

	delays := map[string]time.Duration{}
	for _, o := range p.deregister {
		err := lb.Deregister(ctx, o.arn, o.targets)
		if err == nil && o.stops {
			d, derr := lb.DeregistrationDelay(ctx, o.arn)
			if derr != nil {
				d = c.opts.MaxDeregistrationWait // unknown: wait the most
			}
			delays[o.arn] = max(delays[o.arn], d)
		}
		c.mu.Lock()
		c.callDone(o.arn, err, now)
		for i, t := range o.tasks {
			if t == nil {
				if err == nil {
					delete(c.tgt.gone, goneTarget{o.arn, o.targets[i]})
				}
				continue
			}
			if err != nil {
				c.setTargets(t, o.arn, "", err.Error(), now)
				continue
			}
			if registrationOf(t, o.arn) == model.TargetRegistered {
				c.log.Info("took a live task's target out of its group", "target_group", o.arn, "task", t.rec.ID, "target", o.targets[i], "why", whyOut(t))
			}
			if t.lb.stopping {
				c.setTargets(t, o.arn, model.TargetDraining, "", now)
			} else {
				c.setTargets(t, o.arn, model.TargetPending, "", now)
			}
		}
		c.mu.Unlock()
		if err != nil && ctx.Err() == nil {
			c.log.Warn("deregister targets", "target_group", o.arn, "targets", o.targets, "err", err)
		}
	}

	// Stopping tasks out of every group wait out the longest delay of
	// their groups, bounded by MaxDeregistrationWait.
	c.mu.Lock()
	for _, o := range p.deregister {
		for _, t := range o.tasks {
			if t == nil || !t.lb.tracked || !t.lb.stopping || t.lb.deregistered || !allDraining(t) {
				continue
			}
			t.lb.deregistered = true
			var wait time.Duration
			for _, tg := range groupsOf(t) {
				wait = max(wait, delays[tg.ARN])
			}
			t.lb.drainUntil = now.Add(min(wait, c.opts.MaxDeregistrationWait))
		}
	}
	c.mu.Unlock()

	// A group that no longer shows a draining task as draining is done with it.
	for arn, ts := range p.draining {
		hs, err := lb.Targets(ctx, arn)
		if err != nil {
			continue // the deadline still ends the wait
		}
		draining := map[Target]bool{}
		for _, h := range hs {
			if h.State == Draining {
				draining[h.Target] = true
			}
		}
		c.mu.Lock()
		for _, t := range ts {
			if t.lb.tracked && !draining[Target{t.rec.IP, portIn(t, arn)}] {
				t.lb.drainedGroups++
			}
		}
		c.mu.Unlock()
	}

	c.mu.Lock()
	c.finishStops(c.clock())
	c.mu.Unlock()

	if full {
		c.reconcileTargets(ctx, now)
	}
}

// finishStops sends the kill of every stopping task that has left its
// groups and waited out their delay (or that the group shows gone), and
// of any whose deregistration has not succeeded within
// MaxDeregistrationWait (its targets are then removed as it ends).
// Callers hold c.mu.
func (c *Core) finishStops(now time.Time) {
	for t := range c.tgt.tasks {
		if !t.lb.stopping {
			continue
		}
		groups := len(groupsOf(t))
		done := t.lb.deregistered && (!now.Before(t.lb.drainUntil) || t.lb.drainedGroups >= groups)
		t.lb.drainedGroups = 0
		giveUp := !t.lb.deregistered && now.Sub(t.lb.stopAt) >= c.opts.MaxDeregistrationWait
		if !done && !giveUp {
			continue
		}
		if giveUp {
			c.log.Error("stopping a task still in its target groups: deregistration kept failing", "task", t.rec.ID, "waited", now.Sub(t.lb.stopAt))
		} else {
			c.setTargets(t, "", model.TargetDeregistered, "", now)
		}
		t.lb.stopping = false
		c.killTask(t)
	}
}

// planTargets decides one pass. Callers hold c.mu.
func (c *Core) planTargets(now time.Time) *targetPlan {
	p := &targetPlan{draining: map[string][]*taskState{}, want: map[string]map[Target]bool{}}
	ready := func(arn string) bool { return !now.Before(c.tgt.retryAt[arn]) }
	for t := range c.tgt.tasks {
		wanted := t.lb.heard && wantsTargets(t)
		for _, tg := range groupsOf(t) {
			tt := Target{t.rec.IP, tg.Port}
			switch {
			case t.lb.stopping && t.lb.deregistered:
				p.draining[tg.ARN] = append(p.draining[tg.ARN], t)
			case t.lb.stopping:
				if ready(tg.ARN) {
					o := p.op(&p.deregister, tg.ARN)
					o.targets, o.tasks, o.stops = append(o.targets, tt), append(o.tasks, t), true
				}
			case wanted:
				if p.want[tg.ARN] == nil {
					p.want[tg.ARN] = map[Target]bool{}
				}
				p.want[tg.ARN][tt] = true
				if registrationOf(t, tg.ARN) != model.TargetRegistered && ready(tg.ARN) {
					o := p.op(&p.register, tg.ARN)
					o.targets, o.tasks = append(o.targets, tt), append(o.tasks, t)
					t.lb.inflight = true
				}
			case t.lb.heard && registrationOf(t, tg.ARN) == model.TargetRegistered:
				// Unhealthy, or killed without a stop (a health kill): out.
				if ready(tg.ARN) {
					o := p.op(&p.deregister, tg.ARN)
					o.targets, o.tasks = append(o.targets, tt), append(o.tasks, t)
				}
			}
		}
	}
	for g := range c.tgt.gone {
		if p.want[g.arn][g.t] {
			delete(c.tgt.gone, g) // its IP and port serve another task now
			continue
		}
		if ready(g.arn) {
			o := p.op(&p.deregister, g.arn)
			o.targets, o.tasks = append(o.targets, g.t), append(o.tasks, nil)
		}
	}
	return p
}

// reconcileTargets compares every managed group with what it should hold:
// registers what is missing and removes what no task accounts for.
func (c *Core) reconcileTargets(ctx context.Context, now time.Time) {
	lb := c.lbAPI()
	c.mu.RLock()
	arns := map[string]bool{}
	for _, arn := range c.opts.ManagedTargetGroups {
		arns[arn] = true
	}
	for _, j := range c.jobs {
		for _, tg := range j.rec.Spec.TargetGroups() {
			arns[tg.ARN] = true
		}
		// A group an update took away: targets a task left there (one that
		// ended while the leader failed over) are removed too.
		if r := j.rec.Rollout; r != nil {
			for _, tg := range r.PreviousTargetGroups {
				arns[tg.ARN] = true
			}
		}
	}
	for t := range c.tgt.tasks {
		for _, tg := range groupsOf(t) {
			arns[tg.ARN] = true
		}
	}
	c.mu.RUnlock()
	for _, arn := range slices.Sorted(maps.Keys(arns)) {
		hs, err := lb.Targets(ctx, arn)
		if err != nil {
			if ctx.Err() == nil {
				c.log.Warn("reconcile target group", "target_group", arn, "err", err)
			}
			continue
		}
		// What should be there, decided now (after the read): a task that
		// stops meanwhile is deregistered by a later pass, after this one.
		// Targets of live tasks that should not be registered (stopping,
		// unhealthy, not yet heard from) are left to the task's own path.
		c.mu.Lock()
		present := map[Target]bool{}
		for _, h := range hs {
			if h.State != Draining {
				present[h.Target] = true
			}
		}
		want, keep := map[Target]*taskState{}, map[Target]bool{}
		for t := range c.tgt.tasks {
			port := portIn(t, arn)
			if port == 0 {
				continue
			}
			tt := Target{t.rec.IP, port}
			keep[tt] = true
			if !t.lb.stopping && t.lb.heard && wantsTargets(t) {
				want[tt] = t
			}
			if present[tt] && !t.lb.stopping && registrationOf(t, arn) != model.TargetRegistered {
				// Registered by an earlier term's call this one never saw
				// succeed: its own path deregisters it if it should not be.
				c.setTargets(t, arn, model.TargetRegistered, "", now)
			}
		}
		c.mu.Unlock()
		c.noteLBHealth(arn, hs)
		var extra, missing []Target
		var missingTasks []*taskState
		have := map[Target]bool{}
		for _, h := range hs {
			if h.State == Draining {
				continue
			}
			have[h.Target] = true
			if !keep[h.Target] {
				extra = append(extra, h.Target)
			}
		}
		for tt, t := range want {
			if !have[tt] {
				missing = append(missing, tt)
				missingTasks = append(missingTasks, t)
			}
		}
		if len(extra) > 0 {
			c.log.Info("removing targets no task accounts for", "target_group", arn, "targets", extra)
			if err := lb.Deregister(ctx, arn, extra); err != nil && ctx.Err() == nil {
				c.log.Warn("reconcile target group", "target_group", arn, "err", err)
			}
		}
		if len(missing) > 0 {
			c.log.Info("registering missing targets", "target_group", arn, "targets", missing)
			err := lb.Register(ctx, arn, missing)
			c.mu.Lock()
			for _, t := range missingTasks {
				if !t.lb.tracked || t.lb.stopping {
					continue
				}
				if err != nil {
					c.setTargets(t, arn, "", err.Error(), now)
					continue
				}
				c.setTargets(t, arn, model.TargetRegistered, "", now)
				if allRegistered(t) {
					c.touched(t.job)
				}
			}
			c.mu.Unlock()
		}
	}
}

// callDone paces calls to a group after failures. Callers hold c.mu.
func (c *Core) callDone(arn string, err error, now time.Time) {
	if c.tgt.retryAt == nil {
		c.tgt.retryAt, c.tgt.failures = map[string]time.Time{}, map[string]int{}
	}
	if err == nil {
		delete(c.tgt.retryAt, arn)
		delete(c.tgt.failures, arn)
		return
	}
	c.tgt.retryAt[arn] = now.Add(targetBackoff.Delay(c.tgt.failures[arn]))
	c.tgt.failures[arn]++
}

// registrationOf is t's state in group arn.
func registrationOf(t *taskState, arn string) model.TargetState {
	for _, r := range t.rec.Targets {
		if r.ARN == arn {
			return r.State
		}
	}
	return ""
}

func allRegistered(t *taskState) bool {
	for _, r := range t.rec.Targets {
		if r.State != model.TargetRegistered {
			return false
		}
	}
	return true
}

func allDraining(t *taskState) bool {
	for _, r := range t.rec.Targets {
		if r.State != model.TargetDraining {
			return false
		}
	}
	return true
}

// groupsOf is t's target groups: those of the revision that launched it,
// as its record carries them from its creation (an update may give the
// job other groups; a task keeps its own until it is replaced). Records
// written before tasks carried them: the job's groups, or the previous
// revision's for a task of that revision.
func groupsOf(t *taskState) []model.TargetGroup {
	if len(t.rec.Targets) > 0 {
		out := make([]model.TargetGroup, len(t.rec.Targets))
		for i, r := range t.rec.Targets {
			out[i] = model.TargetGroup{ARN: r.ARN, Port: r.Port}
		}
		return out
	}
	j := t.job
	if r := j.rec.Rollout; r != nil && r.PreviousTargetGroupsKnown && t.rec.Revision == r.From && t.rec.Revision != j.rec.Revision {
		return r.PreviousTargetGroups
	}
	return j.rec.Spec.TargetGroups()
}

// pendingTargets are the registrations a new task of job j starts with.
func (c *Core) pendingTargets(j *jobState) []model.TargetRegistration {
	if !c.targetsOn() {
		return nil
	}
	var rs []model.TargetRegistration
	for _, tg := range j.rec.Spec.TargetGroups() {
		rs = append(rs, model.TargetRegistration{ARN: tg.ARN, Port: tg.Port, State: model.TargetPending})
	}
	return rs
}

// portIn is t's port in group arn (0: not one of its groups).
func portIn(t *taskState, arn string) uint32 {
	for _, tg := range groupsOf(t) {
		if tg.ARN == arn {
			return tg.Port
		}
	}
	return 0
}
