package core

import (
	"fmt"
	"time"

	"github.com/titus-agent/titus-agent/pkg/scheduler/model"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// applyStatus applies what an agent says about one task. Callers hold c.mu.
func (c *Core) applyStatus(a *agentState, st model.TaskStatus, now time.Time) {
	t := c.tasks[st.TaskID]
	if t == nil || t.agent != a {
		if !st.State.Terminal() && !c.unreadableJob(st.TaskID) {
			// Not ours (any more): reconcile by killing it, saying why, so
			// the agent does not blame the task's user.
			if a.sess != nil {
				a.sess.send(Message{Kill: []string{st.TaskID}, KillReason: task.ReasonKilledByScheduler, KillMessage: "unknown to the scheduler"})
			}
		}
		return
	}
	if t.committing {
		a.resync = true // ask for it again once the write is done
		return
	}
	t.lb.heard = true
	if st.IP != "" && st.IP != t.rec.IP && !t.lb.tracked {
		t.rec.IP = st.IP
		c.st.SaveTask(t.rec)
	}
	c.trackTargets(t)
	if st.Health != nil && !sameHealth(t.rec.Health, st.Health) {
		t.rec.Health = st.Health
		c.touched(t.job) // a rollout or a drain may wait on it
	}
	defer c.checkHealth(t, now)
	next, cur := st.State, t.rec.State
	if next <= cur || cur.Terminal() {
		return
	}
	c.touched(t.job)
	t.rec.State, t.rec.Reason, t.rec.Message, t.rec.ExitCode = next, st.Reason, st.Message, st.ExitCode
	if next.Terminal() {
		c.end(t, next, st.Reason, st.Message, st.ExitCode, now)
		return
	}
	if next >= task.Running && t.rec.Started.IsZero() {
		t.rec.Started = now
		t.slot.refused = 0 // it had its IP
		if t.launching {
			t.launching = false
			a.launching--
		}
		c.st.SaveTask(t.rec)
	}
}

// end records a task's final state and settles its slot. Callers hold c.mu.
func (c *Core) end(t *taskState, state task.State, reason, msg string, exit int32, now time.Time) {
	if _, ok := c.tasks[t.rec.ID]; !ok {
		return
	}
	if t.healthFailed && state == task.Killed {
		// However the agent words the kill, the scheduler asked for it
		// because the task stayed Unhealthy: a failure of the task.
		reason = string(task.ReasonHealthCheckFailed)
		msg = t.healthMessage
	}
	t.rec.State, t.rec.Reason, t.rec.Message, t.rec.ExitCode, t.rec.Ended = state, reason, msg, exit, now
	c.targetsEnded(t)
	c.st.SaveTask(t.rec)
	a, j := t.agent, t.job
	a.detach(t)
	noIP := refusedForIP(reason)
	if noIP {
		a.refusedIP(t.d.sgKey) // it never had an IP to release
	} else {
		a.released(t.d.sgKey, now)
	}
	if reason == string(task.ReasonHostDiskFull) {
		// Its disk filled since the last heartbeat: take nothing more
		// until the next one tells whether the host is healthy again.
		a.healthy = false
	}
	j.spread.add(a, -1)
	j.live--
	if j.live == 0 && j.terminal() {
		j.settled = c.clock()
	}
	j.group.used = j.group.used.Sub(t.d.req)
	delete(c.tasks, t.rec.ID)
	if platformReason(reason) {
		a.recordFailure(now, c.opts.QuarantineFailures, c.opts.QuarantineWindow)
	}
	switch state {
	case task.Lost:
		j.rec.Counts.Lost++
	case task.Killed:
		if !t.healthFailed {
			j.rec.Counts.Killed++
		}
	}
	// A failure of the rollout's revision counts wherever the task stood
	// in its slot: a new leader may hear of it ending only once it holds
	// the slot's next attempt (see recountFailures).
	if failedRun(t.rec) {
		c.newFailure(j, t, now)
	}
	sl := t.slot
	switch {
	case sl.next == t:
		// A replacement ended before it took over: try again (after a
		// backoff when it failed), while the slot still wants one.
		sl.next = nil
		c.touched(j)
		if j.terminal() || !sl.active || !sl.replace {
			break
		}
		due := now
		switch {
		case refusal(reason):
			due = now.Add(sl.refusedAgain())
		case (state != task.Killed || t.healthFailed) && state != task.Lost:
			due = now.Add(retryDelay(j.rec.Spec.Retry(), min(rolloutFailures(j), 30), c.opts.CrashLoopBase, c.opts.CrashLoopCap))
		}
		c.q.enqueue(j, sl, due, now)
		c.poke()
	case sl.cur == t && sl.next != nil:
		// The task being replaced ended first: its replacement takes over.
		sl.cur, sl.next, sl.replace = sl.next, nil, false
		c.touched(j)
	case sl.cur == t:
		sl.cur = nil
		sl.replace = false
		c.touched(j)
		c.settle(j, sl, t.rec, now)
	}
	c.checkDone(j, now)
}

// refusedForIP reports whether an agent refused a task for want of an IP
// it could give it: none left (NoNetworkCapacity), or none of the task's
// subnets in the host's zone (SubnetNotInZone). Nothing ran; neither is the
// task's failure nor the host's (a tenant naming a subnet of one zone must
// not earn the hosts of the others quarantine strikes).
func refusedForIP(reason string) bool {
	switch task.Reason(reason) {
	case task.ReasonNoNetworkCapacity, task.ReasonSubnetNotInZone:
		return true
	}
	return false
}

// sameHealth reports whether two health reports say the same.
func sameHealth(a, b *task.Health) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Status == b.Status && a.OK == b.OK && a.Output == b.Output
}

// settle decides what a slot does after its task ended: done, replaced now,
// or retried after a backoff.
func (c *Core) settle(j *jobState, sl *slot, rec *model.Task, now time.Time) {
	if j.terminal() || !sl.active || sl.done {
		return
	}
	state := rec.State
	if refusal(rec.Reason) {
		// The host had no IP for it (placement's view was stale, or
		// the host had not yet found its subnets outside its zone) or
		// its disk filled: nothing ran, so place it again, elsewhere,
		// counting no failure: at once the first time, then backing off
		// (refusedAgain).
		c.q.enqueue(j, sl, now.Add(sl.refusedAgain()), now)
		c.poke()
		return
	}
	sl.refused = 0
	if state == task.Lost {
		// The host's fault: replace at once, unless the slot's tasks keep
		// getting lost without running a while (a launch that ends the
		// agent's session, a flapping host): then back off, with jitter.
		if !rec.Started.IsZero() && rec.Ended.Sub(rec.Started) >= lostResetAfter {
			sl.lost = 0
		}
		sl.lost++
		c.q.enqueue(j, sl, now.Add(lostDelay(sl.lost)), now)
		c.poke()
		return
	}
	if j.batch() {
		switch {
		case state == task.Finished && rec.ExitCode == 0:
			sl.done, sl.result = true, state
			j.rec.Counts.Finished++
			return
		case state == task.Killed:
			sl.done, sl.result = true, state
			return
		}
	} else if state == task.Killed && rec.Reason != string(task.ReasonHealthCheckFailed) {
		c.q.enqueue(j, sl, now, now) // killed by an operator: replace
		c.poke()
		return
	}
	policy := j.rec.Spec.Retry()
	if !rec.Started.IsZero() && !rec.Ended.IsZero() && rec.Ended.Sub(rec.Started) >= resetAfter(policy) {
		sl.failures = 0
	}
	sl.failures++
	if j.batch() && sl.failures > policy.MaxRetries {
		sl.done, sl.result = true, task.Failed
		j.rec.Counts.Failed++
		return
	}
	j.rec.Counts.Retries++
	c.q.enqueue(j, sl, now.Add(retryDelay(policy, sl.failures, c.opts.CrashLoopBase, c.opts.CrashLoopCap)), now)
	c.poke()
}

// checkDone ends a batch job once every slot is done and nothing runs.
func (c *Core) checkDone(j *jobState, now time.Time) {
	if j.terminal() || !j.batch() || j.live > 0 {
		return
	}
	state := model.JobFinished
	for _, sl := range j.slots {
		if !sl.done {
			return
		}
		if sl.result != task.Finished {
			state = model.JobFailed
		}
	}
	c.finishJob(j, state, now)
}

func (c *Core) finishJob(j *jobState, state model.JobState, now time.Time) {
	j.gen++
	if !j.rec.State.Terminal() && state.Terminal() {
		c.live.add(j.rec.Spec.Application, -1)
	}
	j.rec.State = state
	j.rec.Finished = now
	j.rec.Counts = counts(j)
	j.group.reserved = j.group.reserved.Sub(j.footprint)
	j.footprint = model.Resources{}
	for _, sl := range j.slots {
		c.q.dequeue(j, sl)
	}
	// Tasks still ending keep their own slot; the job needs no more.
	j.slots, j.queue, j.queuedReason = nil, nil, ""
	delete(c.q.waiting, j)
	c.st.SaveJob(j.rec)
	c.ret.keep(j)
}

// counts summarises a job's slots.
func counts(j *jobState) model.JobCounts {
	n := j.rec.Counts
	if j.terminal() {
		return n
	}
	n.Pending, n.Launched, n.Running = 0, 0, 0
	for _, sl := range j.slots {
		switch {
		case sl.cur != nil && sl.cur.rec.State >= task.Running:
			n.Running++
		case sl.cur != nil:
			n.Launched++
		case sl.queued:
			n.Pending++
		}
	}
	return n
}

// sendKill asks an agent to kill tasks. Callers hold c.mu.
func (c *Core) sendKill(a *agentState, ids ...string) {
	if a.sess != nil && len(ids) > 0 {
		a.sess.send(Message{Kill: ids})
	}
}

// killTask kills a placed task; it stays accounted to its host until the
// agent confirms. Callers hold c.mu.
func (c *Core) killTask(t *taskState) {
	t.killWanted = true
	if !t.committing {
		c.sendKill(t.agent, t.rec.ID)
	}
}

// checkHealth replaces a running service task that has stayed Unhealthy
// past its job's policy: it is killed with reason HealthCheckFailed and its
// slot counts a failure (retry policy and backoff), once it has ended.
// Callers hold c.mu.
func (c *Core) checkHealth(t *taskState, now time.Time) {
	j := t.job
	delete(t.agent.unhealthy, t)
	if j.batch() || j.terminal() || t.killWanted || t.rec.State != task.Running {
		return // (first: every heartbeat checks the tasks it lists and those waiting here)
	}
	if _, ok := c.tasks[t.rec.ID]; !ok {
		return
	}
	h := t.rec.Health
	if h == nil || h.Status != task.HealthUnhealthy {
		t.unhealthySince = time.Time{}
		return
	}
	if t.unhealthySince.IsZero() {
		t.unhealthySince = now
	}
	after := time.Duration(j.rec.Spec.Service.UnhealthyReplaceAfterSeconds) * time.Second
	if now.Sub(t.unhealthySince) < after {
		// Checked again on every heartbeat, listed or not (changes-only
		// heartbeats do not repeat it), until it recovers or is replaced.
		if t.agent.unhealthy == nil {
			t.agent.unhealthy = map[*taskState]struct{}{}
		}
		t.agent.unhealthy[t] = struct{}{}
		return
	}
	t.healthFailed = true
	t.healthMessage = fmt.Sprintf("unhealthy since %s; last check: %s", h.Since.UTC().Format(time.RFC3339), h.Output)
	t.killWanted = true
	if !t.committing && t.agent.sess != nil {
		t.agent.sess.send(Message{Kill: []string{t.rec.ID}, KillReason: task.ReasonHealthCheckFailed, KillMessage: t.healthMessage})
	}
}
