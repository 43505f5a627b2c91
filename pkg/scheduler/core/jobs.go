package core

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/google/uuid"

	"github.com/titus-agent/titus-agent/pkg/scheduler/model"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// newJobState builds a job's in-memory state (no slot queued yet).
func (c *Core) newJobState(rec *model.Job, tmpl *task.Spec) *jobState {
	name := rec.Spec.CapacityGroup
	if name == "" {
		name = model.DefaultGroup
	}
	g := c.gstate[name]
	if g == nil {
		// The group was removed from the configuration: keep the job running under default.
		g = c.gstate[model.DefaultGroup]
	}
	j := &jobState{rec: rec, tmpl: tmpl, group: g, spread: newSpread(), created: rec.Created}
	var err error
	if j.d, err = newDemand(&rec.Spec, model.TaskResources(tmpl), sgKey(tmpl)); err != nil {
		c.log.Error("job placement does not compile: placing without constraints", "job", rec.ID, "err", err)
	}
	j.slots = make([]*slot, rec.Spec.Size())
	for i := range j.slots {
		j.slots[i] = &slot{index: uint32(i), active: true}
	}
	return j
}

// admit checks a group's bounded queue and quota for n more tasks. Callers hold c.mu.
func (c *Core) admit(g *groupState, n int, footprint model.Resources) error {
	if g.pending+n > g.cfg.MaxPending {
		return fmt.Errorf("%w: capacity group %q has %d tasks queued, limit %d; submit again later", model.ErrQueueFull, g.cfg.Name, g.pending, g.cfg.MaxPending)
	}
	if c.q.pendingTotal+n > c.opts.MaxPendingTotal {
		return fmt.Errorf("%w: the scheduler has %d tasks queued, limit %d; submit again later", model.ErrQueueFull, c.q.pendingTotal, c.opts.MaxPendingTotal)
	}
	if g.cfg.Tier == model.TierCritical && g.overQuota(footprint, g.reserved) {
		return fmt.Errorf("%w: critical capacity group %q: job needs cpu=%dm mem=%dMiB, group has cpu=%dm mem=%dMiB of quota cpu=%dm mem=%dMiB reserved",
			model.ErrQuotaExceeded, g.cfg.Name, footprint.CPU, footprint.Mem, g.reserved.CPU, g.reserved.Mem, g.cfg.CPUMillicores, g.cfg.MemoryMiB)
	}
	return nil
}

// admitLive checks the live-job caps for one more job of app: the jobs
// not ended (a service at desired 0 included) and those being written.
// Callers hold c.mu.
func (c *Core) admitLive(app string) error {
	total, mine := c.live.total, c.live.byApp[app]+c.submitting[app]
	for _, n := range c.submitting {
		total += n
	}
	if mine >= c.opts.MaxLiveJobsPerApplication {
		return fmt.Errorf("%w: application %q has %d live jobs, limit %d (a service at desired 0 counts); kill jobs it no longer needs",
			model.ErrTooManyJobs, app, mine, c.opts.MaxLiveJobsPerApplication)
	}
	if total >= c.opts.MaxLiveJobs {
		return fmt.Errorf("%w: the scheduler has %d live jobs, limit %d", model.ErrTooManyJobs, total, c.opts.MaxLiveJobs)
	}
	return nil
}

// Submit validates a job, admits it into its capacity group's queue and
// quota, writes it and queues its tasks. It returns the job's id.
func (c *Core) Submit(ctx context.Context, spec model.JobSpec) (string, error) {
	id, _, err := c.SubmitKeyed(ctx, Submission{Spec: spec})
	return id, err
}

// SubmitKeyed is Submit with an optional idempotency key (idempotency.go):
// existing reports that the key had already created the job.
func (c *Core) SubmitKeyed(ctx context.Context, s Submission) (jobID string, existing bool, err error) {
	spec := s.Spec
	tmpl, err := ValidateJob(spec)
	if err != nil {
		return "", false, err
	}
	if err := c.checkTargetGroupsConfigured(spec); err != nil {
		return "", false, err
	}
	if err := c.checkTargetGroupsExist(ctx, spec.TargetGroups()); err != nil {
		return "", false, err
	}
	if s.Key != "" {
		if err := CheckIdempotencyKey(s.Key); err != nil {
			return "", false, err
		}
	}
	spec = spec.Clone()
	if spec.CapacityGroup == "" {
		spec.CapacityGroup = model.DefaultGroup
	}
	c.mu.Lock()
	var key *idemEntry
	if s.Key != "" {
		var id string
		key, id, err = c.claimKey(&s, c.clock())
		if err != nil || id != "" {
			c.mu.Unlock()
			return id, id != "", err
		}
	}
	// release ends the key's claim: a submit refused before its write
	// leaves no trace of the key.
	release := func() {
		if key != nil {
			key.busy = false
			if key.tried == nil && key.k.JobID == "" {
				c.dropKey(key.k.Scope + "/" + key.k.Key)
			}
		}
	}
	g := c.gstate[spec.CapacityGroup]
	if g == nil {
		release()
		c.mu.Unlock()
		return "", false, fmt.Errorf("%w: capacity_group: %q is not configured", model.ErrUnknownGroup, spec.CapacityGroup)
	}
	fp := footprintOf(&spec, model.TaskResources(tmpl))
	n := spec.Size()
	if err := c.admitLive(spec.Application); err != nil {
		release()
		c.mu.Unlock()
		return "", false, err
	}
	if err := c.admit(g, n, fp); err != nil {
		release()
		c.mu.Unlock()
		return "", false, err
	}
	if c.submitting == nil {
		c.submitting = map[string]int{}
	}
	c.submitting[spec.Application]++
	// Hold the job's place in the queue and quota while it is written, but
	// not the lock: heartbeats and placement go on during the store's round trip.
	g.reserved = g.reserved.Add(fp)
	g.pending += n
	c.q.pendingTotal += n
	var rec *model.Job
	var k model.IdempotencyKey
	now := time.Now()
	if key != nil {
		if key.tried != nil {
			// The same job again: the earlier write may have committed.
			rec = &model.Job{ID: key.tried.ID, Spec: spec, State: model.JobAccepted, Created: key.tried.Created, Revision: 1}
		}
		key.k.Expires = c.clock().Add(IdempotencyKeyTTL)
		k = key.k
	}
	c.mu.Unlock()

	if rec == nil {
		var id uuid.UUID
		id, err = uuid.NewV7()
		rec = &model.Job{ID: id.String(), Spec: spec, State: model.JobAccepted, Created: now, Revision: 1}
	}
	if err == nil && key != nil {
		k.JobID = rec.ID
		err = c.putJobWithKey(ctx, rec, &k)
	} else if err == nil {
		err = c.putJob(ctx, rec)
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	if c.submitting[spec.Application]--; c.submitting[spec.Application] <= 0 {
		delete(c.submitting, spec.Application)
	}
	g.pending -= n
	c.q.pendingTotal -= n
	if key != nil {
		key.busy = false
		if err != nil {
			key.tried = rec
		} else {
			key.k, key.tried = k, nil
		}
	}
	if err != nil {
		g.reserved = g.reserved.Sub(fp)
		return "", false, err
	}
	j := c.newJobState(rec, tmpl)
	j.footprint = fp
	c.jobs[rec.ID] = j
	c.live.add(spec.Application, 1)
	for _, sl := range j.slots {
		c.q.enqueue(j, sl, now, now)
	}
	c.poke()
	return rec.ID, false, nil
}

// putJobWithKey writes a job record with its submit's idempotency key
// (fenced). Callers do not hold c.mu.
func (c *Core) putJobWithKey(ctx context.Context, rec *model.Job, k *model.IdempotencyKey) error {
	ks, ok := c.st.(keyStore)
	if !ok {
		return c.putJob(ctx, rec)
	}
	err := ks.PutJobWithKey(ctx, rec, k)
	if errors.Is(err, model.ErrNotLeader) {
		go c.fenceFailed(err)
	}
	return err
}

// putJob writes a job record now (fenced). Callers do not hold c.mu.
func (c *Core) putJob(ctx context.Context, rec *model.Job) error {
	err := c.st.PutJob(ctx, rec)
	if errors.Is(err, model.ErrNotLeader) {
		go c.fenceFailed(err)
	}
	return err
}

// view is a copy of a job with its current counts. Callers hold c.mu.
func (c *Core) view(j *jobState) *model.Job {
	out := *j.rec
	out.Counts = counts(j)
	if r := j.rec.Rollout; r != nil && !j.terminal() {
		rc := *r
		rc.Updated, rc.Old, rc.Unavailable = 0, 0, 0
		unavailable := 0
		for _, sl := range j.slots {
			for _, t := range []*taskState{sl.cur, sl.next} {
				if t != nil && t.rec.Revision != j.rec.Revision {
					rc.Old++
				}
			}
			if !sl.active {
				continue
			}
			if !available(sl.cur) {
				unavailable++
			} else if sl.cur.rec.Revision == j.rec.Revision {
				rc.Updated++
			}
		}
		rc.Unavailable = uint32(unavailable)
		out.Rollout = &rc
	}
	if out.Counts.Pending > 0 {
		out.QueuedReason = j.queuedReason
		if out.QueuedReason == "" {
			out.QueuedReason = backoffReason(j, c.clock())
		}
	}
	return &out
}

// Job returns one job.
func (c *Core) Job(id string) (*model.Job, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	j := c.jobs[id]
	if j == nil {
		return nil, c.jobNotFound(id)
	}
	return c.view(j), nil
}

// JobOwner returns who a job belongs to (for authorization).
func (c *Core) JobOwner(id string) (model.Owner, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	j := c.jobs[id]
	if j == nil {
		return model.Owner{}, c.jobNotFound(id)
	}
	return j.rec.Owner(), nil
}

// Jobs lists live jobs, with all ended ones too, by id.
func (c *Core) Jobs(all bool) []*model.Job {
	c.mu.RLock()
	defer c.mu.RUnlock()
	var out []*model.Job
	for _, j := range c.jobs {
		if all || !j.terminal() {
			out = append(out, c.view(j))
		}
	}
	sort.Slice(out, func(a, b int) bool { return out[a].ID < out[b].ID })
	return out
}

// lockJob takes job id's operation lock (see jobState.op). The caller
// must not hold c.mu and must call unlock.
func (c *Core) lockJob(id string) (j *jobState, unlock func(), err error) {
	c.mu.RLock()
	j = c.jobs[id]
	c.mu.RUnlock()
	if j == nil {
		return nil, nil, c.jobNotFound(id)
	}
	j.op.Lock()
	c.mu.RLock()
	cur := c.jobs[id]
	c.mu.RUnlock()
	if cur != j { // pruned (or state reloaded) while we waited
		j.op.Unlock()
		return nil, nil, c.jobNotFound(id)
	}
	return j, j.op.Unlock, nil
}

// KillJob kills a job and its tasks. The killed record is written without
// c.mu (placement and heartbeats go on during the round trip); kills and
// scales of one job are ordered by its operation lock, and a job that
// ended on its own during the write keeps its own end.
func (c *Core) KillJob(ctx context.Context, id string) (*model.Job, error) {
	j, unlock, err := c.lockJob(id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	c.mu.Lock()
	if j.terminal() {
		defer c.mu.Unlock()
		return c.view(j), nil
	}
	rec := *j.rec
	rec.State, rec.Finished, rec.Counts = model.JobKilled, time.Now(), counts(j)
	gen := j.gen
	c.mu.Unlock()

	err = c.putJob(ctx, &rec)

	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if j.gen != gen {
		// The job ended on its own while the killed record was written:
		// memory holds the truth, write it again so the store follows.
		c.st.SaveJob(j.rec)
		return c.view(j), nil
	}
	var live []*taskState
	for _, sl := range j.slots {
		for _, t := range []*taskState{sl.cur, sl.next} {
			if t != nil {
				live = append(live, t)
			}
		}
	}
	c.finishJob(j, model.JobKilled, time.Now())
	for _, t := range live {
		c.stopTask(t)
	}
	return c.view(j), nil
}

// ScaleJob changes a service job's size. Like KillJob it writes without
// c.mu: the larger of the old and new quota footprints and the queue room
// of the new tasks are held while the record is written, and released if
// the write fails.
func (c *Core) ScaleJob(ctx context.Context, id string, minN, desired, maxN uint32) (*model.Job, error) {
	j, unlock, err := c.lockJob(id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	c.mu.Lock()
	if j.batch() || j.terminal() {
		c.mu.Unlock()
		return nil, fmt.Errorf("%w: only a running service job can be scaled", model.ErrWrongJobKind)
	}
	rec := *j.rec
	rec.Spec = rec.Spec.Clone()
	svc := rec.Spec.Service
	svc.Min, svc.Desired, svc.Max = minN, desired, maxN
	if _, err := ValidateJob(rec.Spec); err != nil {
		c.mu.Unlock()
		return nil, err
	}
	grow := max(int(svc.Desired)-j.rec.Spec.Size(), 0)
	settle, err := c.hold(j, grow, footprintOf(&rec.Spec, j.d.req))
	c.mu.Unlock()
	if err != nil {
		return nil, err
	}

	err = c.putJob(ctx, &rec)

	c.mu.Lock()
	defer c.mu.Unlock()
	settle(err == nil)
	if err != nil {
		return nil, err
	}
	j.rec.Spec = rec.Spec
	j.gen++
	c.resize(j, time.Now())
	return c.view(j), nil
}

// hold admits a change of job j to quota footprint fp that adds grow
// queued tasks, and holds both while the change is written without c.mu:
// the larger of j's current and new footprints against the group's quota,
// and grow against the queues. Without the hold, two changes written at
// once would each be admitted against a quota the other is about to use.
// settle, called with c.mu held once the write is over, makes fp j's
// footprint if the change was written, or restores the old one. Callers
// hold c.mu.
func (c *Core) hold(j *jobState, grow int, fp model.Resources) (settle func(written bool), err error) {
	g, prev := j.group, j.footprint
	if grow > 0 || fp.CPU > prev.CPU || fp.Mem > prev.Mem {
		// Only growth is checked: a group over a lowered quota can still shrink.
		g.reserved = g.reserved.Sub(prev)
		err = c.admit(g, grow, fp)
		g.reserved = g.reserved.Add(prev)
		if err != nil {
			return nil, err
		}
	}
	held := prev.Max(fp)
	g.reserved = g.reserved.Sub(prev).Add(held)
	j.footprint = held
	g.pending += grow
	c.q.pendingTotal += grow
	return func(written bool) {
		g.pending -= grow
		c.q.pendingTotal -= grow
		if j.terminal() {
			return // finishJob released the footprint
		}
		keep := prev
		if written {
			keep = fp
		}
		g.reserved = g.reserved.Sub(held).Add(keep)
		j.footprint = keep
	}, nil
}

// resize activates or retires service slots to match desired. Callers hold c.mu.
func (c *Core) resize(j *jobState, now time.Time) {
	want := j.rec.Spec.Size()
	for i := len(j.slots); i < want; i++ {
		j.slots = append(j.slots, &slot{index: uint32(i)})
	}
	for i, sl := range j.slots {
		switch {
		case i < want && !sl.active:
			sl.active = true
			if sl.cur == nil {
				c.q.enqueue(j, sl, now, now)
			}
		case i >= want && sl.active:
			sl.active = false
			sl.replace = false
			c.q.dequeue(j, sl)
			for _, t := range []*taskState{sl.cur, sl.next} {
				if t != nil {
					c.stopTask(t) // fewer tasks are wanted: none of these counts against the budget
				}
			}
		}
	}
	c.poke()
}

// Tasks lists live tasks (of one job, if jobID is set) from memory; with
// all and a job, every attempt from the store, by id.
func (c *Core) Tasks(ctx context.Context, jobID string, all bool) ([]*model.Task, error) {
	var out []*model.Task
	if all && jobID != "" {
		recs, err := c.st.JobTasks(ctx, jobID)
		if err != nil {
			return nil, err
		}
		out = recs
		// Live state in memory is newer than what was last flushed.
		c.mu.RLock()
		for i, t := range out {
			if live := c.tasks[t.ID]; live != nil {
				cp := *live.rec
				out[i] = &cp
			}
		}
		c.mu.RUnlock()
	} else {
		c.mu.RLock()
		for _, t := range c.tasks {
			if jobID == "" || t.rec.JobID == jobID {
				cp := *t.rec
				out = append(out, &cp)
			}
		}
		c.mu.RUnlock()
	}
	sort.Slice(out, func(a, b int) bool { return out[a].ID < out[b].ID })
	return out, nil
}

// Task returns one task attempt, live or from the store.
func (c *Core) Task(ctx context.Context, id string) (*model.Task, error) {
	c.mu.RLock()
	if t := c.tasks[id]; t != nil {
		defer c.mu.RUnlock()
		cp := *t.rec
		return &cp, nil
	}
	c.mu.RUnlock()
	t, err := c.st.Task(ctx, id)
	if err != nil {
		return nil, err
	}
	if t == nil {
		return nil, TaskNotFound(id)
	}
	return t, nil
}

// KillTask kills one live task.
func (c *Core) KillTask(id string) (*model.Task, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.tasks[id]
	if t == nil {
		return nil, fmt.Errorf("%w: no live task %q", model.ErrNotFound, id)
	}
	c.stopTask(t)
	cp := *t.rec
	return &cp, nil
}
