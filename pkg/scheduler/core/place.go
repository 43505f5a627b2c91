package core

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/titus-agent/titus-agent/pkg/metrics"
	"github.com/titus-agent/titus-agent/pkg/scheduler/model"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// placeSample is how many feasible hosts placement compares per task.
const placeSample = 16

// placeInFlight is how many placement rounds may be committing at once:
// the next round is planned while earlier ones are written (their tasks
// already count against their hosts in memory, so rounds never overcommit).
const placeInFlight = 3

// maxHostSets bounds the host lists kept for distinct placements between
// fleet changes (each is a few pointers per allowed host).
const maxHostSets = 1024

func (c *Core) placeLoop(ctx context.Context) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	slots := make(chan struct{}, placeInFlight)
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-c.kick:
		}
		for {
			select {
			case slots <- struct{}{}:
			case <-ctx.Done():
				return
			}
			batch, start := c.planRound()
			if len(batch) == 0 {
				<-slots
				break
			}
			wg.Go(func() {
				defer func() { <-slots }()
				if err := c.commitRound(ctx, batch, start); err != nil {
					c.fenceFailed(err)
					if ctx.Err() == nil {
						c.log.Warn("placement round", "err", err)
					}
				}
			})
			if len(batch) < c.opts.PlaceBatch {
				break
			}
		}
	}
}

// planRound picks hosts for up to PlaceBatch pending tasks and accounts
// them in memory (committing); commitRound writes and launches them. The
// records to write are copied under c.mu.
func (c *Core) planRound() ([]placed, time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	c.q.promoteDue(now)
	c.observeLocked()
	if len(c.q.waiting) == 0 {
		return nil, now
	}
	agents := make([]*agentState, 0, len(c.agents))
	for _, a := range c.agents {
		agents = append(agents, a)
	}
	p := newPlacer(agents, placeSample, c.opts.MaxLaunchingPerHost, now)
	p.gen = c.hostGen
	if c.hostSetsGen != c.hostGen || len(c.hostSets) > maxHostSets {
		c.hostSets, c.hostSetsGen = map[string]*jobHosts{}, c.hostGen
	}
	p.shared = c.hostSets
	p.zones = &c.zones
	jobs := make([]*jobState, 0, len(c.q.waiting))
	for j := range c.q.waiting {
		jobs = append(jobs, j)
	}
	// Critical groups first, then oldest job first.
	slices.SortFunc(jobs, func(a, b *jobState) int {
		if d := cmp.Compare(tierRank(a.group.cfg.Tier), tierRank(b.group.cfg.Tier)); d != 0 {
			return d
		}
		return a.created.Compare(b.created)
	})
	var batch []placed
	for _, j := range jobs {
		for len(j.queue) > 0 && len(batch) < c.opts.PlaceBatch {
			sl := j.queue[0]
			if !sl.queued || !sl.open() || !sl.active || sl.done || sl.due.After(now) || j.terminal() {
				j.queue = j.queue[1:]
				continue
			}
			if j.group.cfg.Tier == model.TierFlex && j.group.overQuota(j.d.req, j.group.used) {
				j.queuedReason = quotaReason(j.group, j.d.req) // queued until the group's usage drops
				break
			}
			a := p.pick(j)
			if a == nil {
				j.queuedReason = p.explain(j, len(agents))
				break
			}
			j.queue = j.queue[1:]
			j.queuedReason = ""
			t := c.newTask(j, sl, a, now)
			batch = append(batch, placed{t, *t.rec})
		}
		if len(j.queue) == 0 {
			j.queue, j.queuedReason = nil, ""
			delete(c.q.waiting, j)
		}
		if len(batch) >= c.opts.PlaceBatch {
			break
		}
	}
	return batch, now
}

// placed is a task of a placement round and its record as planned.
type placed struct {
	t   *taskState
	rec model.Task
}

func (c *Core) commitRound(ctx context.Context, batch []placed, start time.Time) error {
	recs := make([]*model.Task, len(batch))
	for i := range batch {
		recs[i] = &batch[i].rec
	}
	err := c.st.CreateTasks(ctx, recs)

	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	if err != nil {
		for _, p := range batch {
			c.unplace(p.t, now)
		}
		return err
	}
	launches := map[*agentState][]*task.Spec{}
	for _, p := range batch {
		t := p.t
		t.committing = false
		if !t.slot.holds(t) || t.job.terminal() || t.killWanted || t.agent.lost {
			// Killed or lost while the write was in flight: it never ran.
			c.end(t, task.Killed, string(task.ReasonKilledByUser), "killed before launch", 0, now)
			continue
		}
		spec := *t.job.tmpl
		spec.ID = t.rec.ID
		spec.Labels = jobLabels(spec.Labels, t.job.rec.ID, t.job.rec.Spec.Application, t.job.rec.Spec.Submitter)
		launches[t.agent] = append(launches[t.agent], &spec)
	}
	for a, specs := range launches {
		if a.sess != nil {
			a.sess.send(Message{Launch: specs})
			c.stats.launchesSent.Add(int64(len(specs)))
		}
		// A disconnected agent learns nothing; on reconnect it does not
		// report these tasks and they are replaced.
	}
	c.stats.placed.Add(int64(len(batch)))
	if m := c.opts.Metrics; m != nil {
		took := time.Since(start).Seconds() / float64(len(batch))
		for range batch {
			m.PlacementDuration.WithLabelValues(metrics.PlacementPlaced).Observe(took)
		}
	}
	return nil
}

// observeLocked publishes queue depth and agents by health. Caller holds c.mu.
func (c *Core) observeLocked() {
	m := c.opts.Metrics
	if m == nil {
		return
	}
	depth := 0
	for j := range c.q.waiting {
		depth += len(j.queue)
	}
	m.QueueDepth.Set(float64(depth))
	counts := map[string]int{metrics.AgentHealthy: 0, metrics.AgentUnhealthy: 0, metrics.AgentDraining: 0, metrics.AgentLost: 0}
	for _, a := range c.agents {
		switch {
		case a.lost:
			counts[metrics.AgentLost]++
		case a.drained:
			counts[metrics.AgentDraining]++
		case !a.healthy:
			counts[metrics.AgentUnhealthy]++
		default:
			counts[metrics.AgentHealthy]++
		}
	}
	for k, v := range counts {
		m.Agents.WithLabelValues(k).Set(float64(v))
	}
}

func tierRank(t model.Tier) int {
	if t == model.TierCritical {
		return 0
	}
	return 1
}

// newTask makes the next attempt of a slot on agent a (not yet committed).
func (c *Core) newTask(j *jobState, sl *slot, a *agentState, now time.Time) *taskState {
	c.q.dequeue(j, sl)
	sl.attempt++
	t := &taskState{job: j, slot: sl, agent: a, d: j.d, checked: j.tmpl.HealthCheck != nil, launching: true, committing: true}
	t.rec = &model.Task{
		ID: model.TaskID(j.rec.ID, sl.index, sl.attempt), JobID: j.rec.ID, Index: sl.index, Attempt: sl.attempt,
		AgentID: a.id, AZ: a.az, State: task.StateUnknown, Failures: sl.failures,
		Placed: now, Revision: j.rec.Revision, Targets: c.pendingTargets(j),
	}
	if sl.cur != nil {
		sl.next = t // a replacement (see slot.next)
	} else {
		sl.cur = t
	}
	a.attach(t)
	a.launching++
	j.spread.add(a, 1)
	j.live++
	j.group.used = j.group.used.Add(t.d.req)
	c.tasks[t.rec.ID] = t
	return t
}

// unplace undoes newTask after a failed commit: the slot is pending again.
func (c *Core) unplace(t *taskState, now time.Time) {
	t.agent.detach(t)
	j := t.job
	j.spread.add(t.agent, -1)
	j.live--
	j.group.used = j.group.used.Sub(t.d.req)
	delete(c.tasks, t.rec.ID)
	if t.slot.next == t {
		t.slot.next = nil
		if !j.terminal() && t.slot.active && t.slot.replace {
			c.q.enqueue(j, t.slot, now, now)
		}
	} else if t.slot.cur == t {
		t.slot.cur = nil
		if !j.terminal() && t.slot.active {
			c.q.enqueue(j, t.slot, now, now)
		}
	}
}

// agentLost marks a silent agent lost and its tasks lost. Callers hold c.mu.
func (c *Core) agentLost(a *agentState, now time.Time) {
	a.lost = true
	c.stats.lostAgents.Add(1)
	if a.sess != nil {
		a.sess.close()
		a.sess = nil
	}
	c.log.Warn("agent lost", "agent", a.id, "silent", a.silentFor(now).Round(time.Millisecond), "tasks", len(a.tasks))
	for _, t := range a.tasks {
		if t.committing {
			continue // finished (as killed) when its commit returns
		}
		c.end(t, task.Lost, "AgentLost", fmt.Sprintf("agent %s missed heartbeats for %s", a.id, c.opts.AgentTTL), 0, now)
	}
}

// jobLabels copies a task's labels with the job's reserved labels set by
// the scheduler (never by the tenant): the agent turns them into STS
// session tags.
func jobLabels(in map[string]string, jobID, application, submitter string) map[string]string {
	out := make(map[string]string, len(in)+3)
	for k, v := range in {
		if !strings.HasPrefix(k, task.LabelJobPrefix) {
			out[k] = v
		}
	}
	out[task.LabelJobID] = jobID
	if application != "" {
		out[task.LabelApplication] = application
	}
	if submitter != "" {
		out[task.LabelSubmitter] = submitter
	}
	return out
}
