package core

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/titus-agent/titus-agent/pkg/scheduler/model"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// Load takes over with the store of this leadership term and rebuilds the
// working set from it. Agents get a fresh TTL to reconnect; tasks of agents
// that do not come back are then lost and replaced. stepDown is called when
// a fenced write is refused: the term is over.
func (c *Core) Load(ctx context.Context, st Store, stepDown func()) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.st = st
	c.stepDown.Store(&stepDown)
	now := time.Now()
	c.jobs, c.tasks, c.agents = map[string]*jobState{}, map[string]*taskState{}, map[string]*agentState{}
	c.q, c.ret, c.live = newQueues(), retention{}, live{}
	c.dirty = map[*jobState]struct{}{}
	c.gstate = map[string]*groupState{}
	c.hostGen++ // a new fleet: no host list computed before holds
	for name, g := range c.groups {
		c.gstate[name] = &groupState{cfg: g}
	}
	if q, ok := c.st.(badRecordReporter); ok {
		q.SetBadRecordHandler(c.badRecord)
	}
	recs, err := c.st.Agents(ctx)
	if err != nil {
		return err
	}
	for _, r := range recs {
		a := newAgent(r.ID)
		a.instanceType, a.az, a.labels, a.drained = r.InstanceType, r.AZ, r.Labels, r.Drained
		a.capacity, a.enis, a.ipsPerENI = r.Capacity.Resources, r.Capacity.ENIs, r.Capacity.IPsPerENI
		a.net.cooldown = r.Capacity.IPReuseCooldown
		a.setAttributes(r.Attributes)
		a.lastSeen = now
		c.agents[a.id] = a
	}
	jobs, err := c.st.Jobs(ctx)
	if err != nil {
		return err
	}
	if err := c.loadKeys(ctx, c.clock()); err != nil {
		return err
	}
	var active []*model.Job
	for _, r := range jobs {
		if r.State != model.JobAccepted {
			tmpl := task.Spec{}
			if r.Spec.Task != nil {
				tmpl = *r.Spec.Task
			}
			tmpl.Normalize()
			j := &jobState{rec: r, tmpl: &tmpl, group: c.gstate[model.DefaultGroup], spread: newSpread()}
			c.jobs[r.ID] = j
			c.ret.keep(j)
			continue
		}
		active = append(active, r)
	}
	slices.SortStableFunc(c.ret.finished, func(a, b *jobState) int { return a.ended().Compare(b.ended()) })
	for _, r := range active {
		if err := c.loadJob(ctx, r, now); err != nil {
			return fmt.Errorf("job %s: %w", r.ID, err)
		}
	}
	return nil
}

func (c *Core) loadJob(ctx context.Context, r *model.Job, now time.Time) error {
	r.Counts = model.JobCounts{}
	j := c.newJobState(r, r.Spec.Template())
	j.footprint = footprintOf(&r.Spec, j.d.req)
	j.group.reserved = j.group.reserved.Add(j.footprint)
	c.jobs[r.ID] = j
	c.live.add(r.Spec.Application, 1)
	recs, err := c.st.JobTasks(ctx, r.ID)
	if err != nil {
		return err
	}
	// Per slot: its latest attempt, and its live attempts (two while a
	// replacement was being started: the older is the task, the newer its
	// replacement).
	latest := map[uint32]*model.Task{}
	liveRecs := map[uint32][]*model.Task{}
	for _, t := range recs {
		if l := latest[t.Index]; l == nil || t.Attempt > l.Attempt {
			latest[t.Index] = t
		}
		if !t.State.Terminal() {
			liveRecs[t.Index] = append(liveRecs[t.Index], t)
		}
	}
	for idx := range latest {
		for int(idx) >= len(j.slots) {
			j.slots = append(j.slots, &slot{index: uint32(len(j.slots))}) // retired service slots
		}
	}
	for _, sl := range j.slots {
		rec := latest[sl.index]
		if rec == nil {
			if sl.active {
				c.q.enqueue(j, sl, now, now)
			}
			continue
		}
		sl.attempt, sl.failures = rec.Attempt, rec.Failures
		lv := liveRecs[sl.index]
		if len(lv) == 0 {
			c.settle(j, sl, rec, now)
			continue
		}
		slices.SortFunc(lv, func(a, b *model.Task) int { return int(a.Attempt) - int(b.Attempt) })
		for i, rec := range lv {
			t := c.adopt(j, sl, rec, now)
			switch {
			case i == len(lv)-1 && i > 0:
				sl.next, sl.replace = t, true
			case i == 0:
				sl.cur = t
			default:
				t.killWanted = true // an older replacement superseded
			}
			if !sl.active {
				t.killWanted = true
			}
		}
	}
	c.recountFailures(j, recs)
	c.touched(j)
	c.checkDone(j, now)
	return nil
}

// adopt rebuilds a live task of a loaded job. Callers hold c.mu.
func (c *Core) adopt(j *jobState, sl *slot, rec *model.Task, now time.Time) *taskState {
	a := c.agents[rec.AgentID]
	if a == nil {
		a = newAgent(rec.AgentID)
		a.lastSeen = now
		c.agents[a.id] = a
	}
	t := &taskState{rec: rec, job: j, slot: sl, agent: a, d: j.d, checked: j.tmpl.HealthCheck != nil}
	if r := j.rec.Rollout; rec.Revision != j.rec.Revision && r != nil && r.From == rec.Revision && r.Previous != nil {
		// A task of the revision the rollout comes from: its own template.
		prev := r.Previous
		pt := (&model.JobSpec{Task: prev, OwnerEmail: j.rec.Spec.OwnerEmail}).Template()
		t.d.req, t.d.sgKey, t.checked = model.TaskResources(pt), sgKey(pt), pt.HealthCheck != nil
	}
	a.attach(t)
	if rec.State < task.Running {
		t.launching = true
		a.launching++
	}
	j.spread.add(a, 1)
	j.live++
	j.group.used = j.group.used.Add(t.d.req)
	c.tasks[rec.ID] = t
	return t
}

// badRecordReporter is a store that skips and quarantines records it
// cannot read, and says so.
type badRecordReporter interface {
	SetBadRecordHandler(fn func(key, copy string, err error))
}

// badRecord alerts on a record the store skipped: an error log line and
// the quarantine metric. The tasks of a job whose record is unreadable
// are not killed when their agents report them (the scheduler cannot
// tell what they are; an operator decides). It takes no lock of c.mu.
func (c *Core) badRecord(key, copy string, err error) {
	c.stats.quarantined.Add(1)
	if m := c.opts.Metrics; m != nil {
		m.QuarantinedRecords.Inc()
	}
	c.log.Error("unreadable record skipped and quarantined; the scheduler runs without it, repair or remove it by hand",
		"key", key, "copy", copy, "err", err)
	if i := strings.Index(key, "/jobs/"); i >= 0 {
		c.badMu.Lock()
		if c.unreadableJobs == nil {
			c.unreadableJobs = map[string]bool{}
		}
		c.unreadableJobs[key[i+len("/jobs/"):]] = true
		c.badMu.Unlock()
	}
}

// unreadableJob reports whether taskID belongs to a job whose record could not be read.
func (c *Core) unreadableJob(taskID string) bool {
	jobID, _, _ := strings.Cut(taskID, ".")
	c.badMu.Lock()
	defer c.badMu.Unlock()
	return c.unreadableJobs[jobID]
}
