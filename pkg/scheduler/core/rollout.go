package core

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/titus-agent/titus-agent/pkg/scheduler/model"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// Rollouts and paced drains. A service job's slot may hold, beside its
// task (cur), a replacement being started (next): once the replacement is
// available (Running, and Healthy when its template has a health check)
// the old task is stopped and the replacement takes the slot. Rollouts
// replace tasks of another revision this way (up to maxSurge at once) or
// stop them first (up to maxUnavailable unavailable); drains replace the
// tasks of drained hosts, as many at once as the job's disruption budget
// leaves. Both are recomputed from the working set on every step, so a
// new leader continues them from the tasks and the job's record.

// stepEvery is how often every service job is stepped (deadlines, drains).
const stepEvery = time.Second

// touched asks for a step of job j soon. Callers hold c.mu.
func (c *Core) touched(j *jobState) {
	if j.batch() || c.dirty == nil {
		return
	}
	c.dirty[j] = struct{}{}
	select {
	case c.stepKick <- struct{}{}:
	default:
	}
}

// stepLoop steps the jobs touched since the last step, and every service
// job once a second.
func (c *Core) stepLoop(ctx context.Context) {
	t := time.NewTicker(stepEvery)
	defer t.Stop()
	for {
		full := false
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			full = true
		case <-c.stepKick:
			// Let a burst of reports land before stepping.
			select {
			case <-ctx.Done():
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
		c.mu.Lock()
		c.stepLocked(full, time.Now())
		c.mu.Unlock()
	}
}

// stepLocked steps the touched jobs, or all live service jobs. Callers hold c.mu.
func (c *Core) stepLocked(all bool, now time.Time) {
	if all {
		for _, j := range c.jobs {
			if !j.batch() && !j.terminal() {
				c.dirty[j] = struct{}{}
			}
		}
	}
	jobs := make([]*jobState, 0, len(c.dirty))
	for j := range c.dirty {
		jobs = append(jobs, j)
	}
	clear(c.dirty)
	sort.Slice(jobs, func(a, b int) bool { return jobs[a].created.Before(jobs[b].created) })
	for _, j := range jobs {
		c.step(j, now)
	}
}

// available reports whether a task serves: Running, not being stopped,
// Healthy when its template has a health check, and registered in its
// job's target groups when it has any.
func available(t *taskState) bool {
	if t == nil || t.killWanted || t.committing || t.rec.State != task.Running {
		return false
	}
	return (!t.checked || (t.rec.Health != nil && t.rec.Health.Status == task.HealthHealthy)) && inTargets(t)
}

// maxFailedTasks bounds the ids a rollout keeps of its counted failures
// (more than any MaxFailures rolls back: validate.go).
const maxFailedTasks = MaxRetries + 1

// failedRun reports whether an ended task's record counts as a failure of
// its revision: it crashed or exited non-zero, or the scheduler killed it
// for staying Unhealthy; not a kill, not a loss with its host.
func failedRun(rec *model.Task) bool {
	if refusal(rec.Reason) {
		return false // refused before it ran: placement's doing, or the host's
	}
	switch rec.State {
	case task.Lost:
		return false
	case task.Killed:
		return rec.Reason == string(task.ReasonHealthCheckFailed)
	case task.Finished:
		return rec.ExitCode != 0
	}
	return rec.State.Terminal()
}

// newFailure counts a failure of a task of the revision being rolled out,
// once per task whichever leader sees it end (a new leader hears again of
// tasks that ended while the old one's writes were in flight).
// Callers hold c.mu.
func (c *Core) newFailure(j *jobState, t *taskState, now time.Time) {
	if c.countFailure(j, t.rec) {
		c.st.SaveJob(j.rec) // a new leader goes on counting from here
	}
}

// countFailure adds a failed task of the rollout's revision to its count,
// unless it is counted already. Callers hold c.mu.
func (c *Core) countFailure(j *jobState, rec *model.Task) bool {
	r := j.rec.Rollout
	if r == nil || r.State != model.RolloutProgressing || rec.Revision != j.rec.Revision || r.To != j.rec.Revision {
		return false
	}
	if slices.Contains(r.FailedTasks, rec.ID) {
		return false
	}
	r.Failures++
	r.FailedTasks = append(slices.Clone(r.FailedTasks), rec.ID)
	if n := len(r.FailedTasks); n > maxFailedTasks {
		r.FailedTasks = r.FailedTasks[n-maxFailedTasks:]
	}
	r.LastFailure = fmt.Sprintf("task %s %s", rec.ID, rec.State)
	if rec.Reason != "" {
		r.LastFailure += " (" + rec.Reason
		if rec.Message != "" {
			r.LastFailure += ": " + clip(rec.Message, 120)
		}
		r.LastFailure += ")"
	}
	return true
}

// recountFailures is a new leader's count of a progressing rollout's
// failures: the record's, plus every failed task of the rollout's
// revision whose record ended since counting began and that the record
// does not name. The job's record and its tasks' are written behind (the
// flush loop) and not in one transaction: a leader killed right after a
// failure may leave the task's end written and the job's count not.
// Callers hold c.mu.
func (c *Core) recountFailures(j *jobState, recs []*model.Task) {
	r := j.rec.Rollout
	if r == nil || r.State != model.RolloutProgressing {
		return
	}
	since := r.Started
	if r.FailuresSince.After(since) {
		since = r.FailuresSince
	}
	var ended []*model.Task
	for _, rec := range recs {
		if rec.Revision == r.To && failedRun(rec) && !rec.Ended.Before(since) {
			ended = append(ended, rec)
		}
	}
	slices.SortFunc(ended, func(a, b *model.Task) int { return a.Ended.Compare(b.Ended) })
	n := 0
	for _, rec := range ended {
		if c.countFailure(j, rec) {
			n++
		}
	}
	if n > 0 {
		c.log.Warn("counted rollout failures the previous leader had not written", "job", j.rec.ID, "counted", n, "failures", r.Failures)
		c.st.SaveJob(j.rec)
	}
}

// rolloutFailures is the count of consecutive failures of new-revision
// tasks in the job's rollout. Callers hold c.mu.
func rolloutFailures(j *jobState) uint32 {
	if r := j.rec.Rollout; r != nil {
		return r.Failures
	}
	return 0
}

// resetFailures clears the count once a new-revision task serves.
// Callers hold c.mu.
func (c *Core) resetFailures(j *jobState, now time.Time) {
	if r := j.rec.Rollout; r != nil && r.Failures > 0 && r.State == model.RolloutProgressing {
		r.Failures, r.FailedTasks, r.FailuresSince = 0, nil, now
		c.st.SaveJob(j.rec)
	}
}

func clip(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// startReplace asks placement for a replacement of the slot's task.
func (c *Core) startReplace(j *jobState, sl *slot, now time.Time) {
	sl.replace = true
	c.q.enqueue(j, sl, now, now)
	c.poke()
}

// step moves one service job's rollout and drains forward. Callers hold c.mu.
func (c *Core) step(j *jobState, now time.Time) {
	if j.terminal() || j.batch() {
		return
	}
	svc := j.rec.Spec.Service
	desired := 0
	for _, sl := range j.slots {
		if sl.active {
			desired++
		}
	}
	// Replacements that are available take over; obsolete ones go.
	for _, sl := range j.slots {
		n := sl.next
		if n == nil {
			continue
		}
		if !sl.active || n.rec.Revision != j.rec.Revision {
			sl.replace = false
			c.stopTask(n)
			continue
		}
		if available(n) {
			old := sl.cur
			sl.cur, sl.next, sl.replace = n, nil, false
			c.resetFailures(j, now)
			if old != nil {
				c.stopTask(old)
			}
		}
	}
	avail, inflight := 0, 0
	for _, sl := range j.slots {
		if !sl.active {
			continue
		}
		if available(sl.cur) {
			avail++
			if sl.cur.rec.Revision == j.rec.Revision {
				c.resetFailures(j, now)
			}
		}
		if sl.replace {
			inflight++
		}
	}
	unavailable := desired - avail
	c.stepRollout(j, svc, desired, &unavailable, &inflight, now)
	c.stepDrain(j, svc.BudgetOf(desired), unavailable, inflight, now)
}

// stepRollout replaces tasks of another revision than the job's.
func (c *Core) stepRollout(j *jobState, svc *model.ServiceJob, desired int, unavailable, inflight *int, now time.Time) {
	r := j.rec.Rollout
	if r == nil || (r.State != model.RolloutProgressing && r.State != model.RolloutRolledBack) {
		return
	}
	surge, maxU, deadline, maxFail := svc.Strategy(desired)
	if r.State == model.RolloutProgressing {
		if int(r.Failures) >= maxFail {
			c.rollback(j, fmt.Sprintf("%d consecutive failures of tasks of revision %d, last: %s", r.Failures, j.rec.Revision, r.LastFailure), now)
			return
		}
		updated := 0
		var waiting *taskState
		for _, sl := range j.slots {
			for _, t := range []*taskState{sl.cur, sl.next} {
				if t == nil || !sl.active || t.rec.Revision != j.rec.Revision {
					continue
				}
				if available(t) {
					updated++
				} else if waiting == nil && !t.killWanted {
					waiting = t
				}
			}
		}
		// The deadline's clock is in the record: a new leader does not
		// restart it.
		if updated > int(r.ProgressUpdated) || r.ProgressAt.IsZero() {
			r.ProgressAt = now
			r.ProgressUpdated = uint32(updated)
			c.st.SaveJob(j.rec)
		} else if updated < int(r.ProgressUpdated) {
			r.ProgressUpdated = uint32(updated)
			c.st.SaveJob(j.rec)
		}
		if now.Sub(r.ProgressAt) > deadline && updated < desired {
			why := r.LastFailure
			if waiting != nil {
				why = "task " + waiting.rec.ID + " " + describe(waiting)
			}
			if why == "" {
				why = "no task of the new revision could be placed: " + j.queuedReason
			}
			c.rollback(j, fmt.Sprintf("no new task became available for %s (%s)", deadline, why), now)
			return
		}
	}
	var old []*slot
	done := true
	for _, sl := range j.slots {
		if !sl.active {
			continue
		}
		if sl.cur == nil || sl.cur.rec.Revision != j.rec.Revision || !available(sl.cur) {
			done = false
		}
		if sl.cur != nil && sl.cur.rec.Revision != j.rec.Revision && !sl.cur.killWanted && !sl.replace {
			old = append(old, sl)
		}
	}
	if done {
		if r.Ended.IsZero() {
			if r.State == model.RolloutProgressing {
				r.State = model.RolloutComplete
			}
			r.Ended = now
			j.gen++
			c.st.SaveJob(j.rec)
		}
		return
	}
	// Tasks that do not serve anyway go first.
	sort.SliceStable(old, func(a, b int) bool { return !available(old[a].cur) && available(old[b].cur) })
	surging := 0
	for _, sl := range j.slots {
		if sl.replace && sl.active && sl.cur != nil && sl.cur.rec.Revision != j.rec.Revision && !sl.cur.agent.drained {
			surging++
		}
	}
	for _, sl := range old {
		switch {
		case !available(sl.cur):
			c.stopTask(sl.cur) // replaced as it ends, at no cost to availability
		case surging < surge:
			c.startReplace(j, sl, now)
			surging++
			*inflight++
		case *unavailable < maxU:
			c.stopTask(sl.cur)
			*unavailable++
		default:
			return
		}
	}
}

// describe says where a task is, for a rollback's reason.
func describe(t *taskState) string {
	s := t.rec.State.String()
	if h := t.rec.Health; h != nil {
		s += ", " + h.Status.String()
		if h.Output != "" {
			s += ": " + clip(h.Output, 120)
		}
	}
	if t.lb.tracked {
		for _, r := range t.rec.Targets {
			name := r.ARN
			if _, n, ok := strings.Cut(r.ARN, ":targetgroup/"); ok {
				name = "targetgroup/" + n
			}
			switch {
			case r.State != model.TargetRegistered:
				s += fmt.Sprintf(", %s: %s", name, r.State)
				if r.Error != "" {
					s += " (" + clip(r.Error, 120) + ")"
				}
			case !lbServing(r):
				s += fmt.Sprintf(", %s: %s", name, cmp.Or(r.LBHealth, "health not read yet"))
				if r.LBHealthReason != "" {
					s += " (" + clip(r.LBHealthReason, 120) + ")"
				}
			}
		}
	}
	return s
}

// stepDrain moves the job's tasks off drained hosts, a replacement first,
// as many at once as the budget leaves (agent ls says what holds a move
// back: drainWhy).
func (c *Core) stepDrain(j *jobState, budget, unavailable, inflight int, now time.Time) {
	for _, sl := range j.slots {
		t := sl.cur
		if !sl.active || t == nil || !t.agent.drained || sl.replace || t.killWanted || t.committing {
			continue
		}
		if !available(t) {
			c.stopTask(t) // not serving: replaced as it ends
			continue
		}
		if unavailable+inflight >= budget {
			continue
		}
		c.startReplace(j, sl, now)
		inflight++
	}
}

// budgetUse is how much of its disruption budget a service job uses now
// (its unavailable tasks and the moves under way, as stepDrain counts
// them), the budget, and what the first of them waits for.
func budgetUse(j *jobState) (used, budget int, holder string) {
	desired := 0
	for _, sl := range j.slots {
		if !sl.active {
			continue
		}
		desired++
		switch {
		case sl.replace:
			used++
			if holder == "" {
				holder = moveWait(j, sl)
			}
		case !available(sl.cur):
			used++
			if holder == "" {
				if sl.cur == nil {
					holder = fmt.Sprintf("slot %d has no task", sl.index)
					if j.queuedReason != "" {
						holder += ": " + j.queuedReason
					}
				} else {
					holder = "task " + sl.cur.rec.ID + " " + describe(sl.cur)
				}
			}
		}
	}
	return used, j.rec.Spec.Service.BudgetOf(desired), holder
}

// moveWait says what the move of a slot's task (a replacement under way)
// waits for: its placement, or its replacement to serve.
func moveWait(j *jobState, sl *slot) string {
	cur := "the task"
	if sl.cur != nil {
		cur = "task " + sl.cur.rec.ID
	}
	n := sl.next
	if n == nil {
		s := "a replacement of " + cur + " to be placed"
		if j.queuedReason != "" {
			s += ": " + j.queuedReason
		}
		return s
	}
	return fmt.Sprintf("task %s (replacing %s) to serve: %s", n.rec.ID, strings.TrimPrefix(cur, "task "), describe(n))
}

// drainWhy says why a drained host still has service tasks to move: what
// the moves under way wait for (a replacement's placement, health, or
// registration and health in its load balancers), and the job whose
// disruption budget holds back the next move, with what uses it up.
// Callers hold c.mu.
func drainWhy(a *agentState) string {
	var moving, blocked string
	for _, id := range slices.Sorted(maps.Keys(a.tasks)) {
		t := a.tasks[id]
		j, sl := t.job, t.slot
		if j.batch() || j.terminal() || !sl.active || sl.cur != t || t.killWanted {
			continue
		}
		if sl.replace {
			if moving == "" {
				moving = "waiting for " + moveWait(j, sl)
			}
			continue
		}
		if blocked == "" {
			if used, budget, holder := budgetUse(j); used >= budget {
				blocked = fmt.Sprintf("blocked by budget of job %s: %d/%d unavailable", j.rec.ID, used, budget)
				if holder != "" {
					blocked += ", waiting for " + holder
				}
			}
		}
	}
	switch {
	case blocked == "":
		return moving
	case moving == "" || strings.Contains(blocked, moving[len("waiting for "):]):
		return blocked
	}
	return blocked + "; " + moving
}

// rollback returns a job to the revision its rollout came from. Callers hold c.mu.
func (c *Core) rollback(j *jobState, reason string, now time.Time) {
	r := j.rec.Rollout
	c.log.Warn("rolling back", "job", j.rec.ID, "from", j.rec.Revision, "to", r.From, "reason", reason)
	c.revert(j, model.RolloutRolledBack, "rolled back: "+reason, now)
}

// revert makes the rollout's previous template the job's again, as a new
// rollout from the current revision (a rollback or an undo). Callers hold c.mu.
func (c *Core) revert(j *jobState, state model.RolloutState, reason string, now time.Time) {
	r := j.rec.Rollout
	cur, curTGs := j.rec.Spec.Task, slices.Clone(j.rec.Spec.TargetGroups())
	j.rec.Spec.Task = r.Previous
	if r.PreviousTargetGroupsKnown && j.rec.Spec.Service != nil {
		// A new slice: views share the old one.
		svc := *j.rec.Spec.Service
		svc.TargetGroups = slices.Clone(r.PreviousTargetGroups)
		j.rec.Spec.Service = &svc
	}
	j.rec.Rollout = &model.Rollout{State: state, From: j.rec.Revision, To: r.From, Reason: reason, Started: now, Previous: cur,
		PreviousTargetGroups: curTGs, PreviousTargetGroupsKnown: true}
	j.rec.Revision = r.From
	c.retemplate(j)
	j.gen++
	c.st.SaveJob(j.rec)
	c.touched(j)
}

// retemplate rebuilds the job's template and demand from its spec, after
// an update or a rollback. Callers hold c.mu.
func (c *Core) retemplate(j *jobState) {
	j.tmpl = j.rec.Spec.Template()
	j.d.req, j.d.sgKey = model.TaskResources(j.tmpl), sgKey(j.tmpl)
	fp := footprintOf(&j.rec.Spec, j.d.req).Max(j.footprint)
	j.group.reserved = j.group.reserved.Sub(j.footprint).Add(fp)
	j.footprint = fp
	for _, sl := range j.slots {
		if sl.next != nil && sl.next.rec.Revision != j.rec.Revision {
			sl.replace = false
			c.stopTask(sl.next)
		} else if sl.replace && sl.next == nil && sl.cur != nil {
			sl.replace = false
			c.q.dequeue(j, sl)
		}
	}
	c.poke()
}
