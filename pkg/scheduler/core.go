package scheduler

import (
	"github.com/titus-agent/titus-agent/pkg/metrics"

	"cmp"
	"context"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// placeSample is how many feasible hosts placement compares per task.
const placeSample = 16

// TaskID names attempt attempt of slot index of a job.
func TaskID(jobID string, index, attempt uint32) string {
	return jobID + "." + strconv.FormatUint(uint64(index), 10) + "." + strconv.FormatUint(uint64(attempt), 10)
}

// placeInFlight is how many placement rounds may be committing at once:
// the next round is planned while earlier ones are written (their tasks
// already count against their hosts in memory, so rounds never overcommit).
const placeInFlight = 3

func (s *Scheduler) placeLoop(ctx context.Context) {
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
		case <-s.kick:
		}
		for {
			select {
			case slots <- struct{}{}:
			case <-ctx.Done():
				return
			}
			batch, puts, start := s.planRound()
			if len(batch) == 0 {
				<-slots
				break
			}
			wg.Go(func() {
				defer func() { <-slots }()
				if err := s.commitRound(ctx, batch, puts, start); err != nil {
					s.fenceFailed(err)
					if ctx.Err() == nil {
						s.log.Warn("placement round", "err", err)
					}
				}
			})
			if len(batch) < s.opts.PlaceBatch {
				break
			}
		}
	}
}

// planRound picks hosts for up to PlaceBatch pending tasks and accounts
// them in memory (committing); commitRound writes and launches them.
func (s *Scheduler) planRound() ([]*taskState, []put, time.Time) {
	s.mu.Lock()
	now := time.Now()
	s.promoteDue(now)
	s.observeLocked()
	if len(s.waiting) == 0 {
		s.mu.Unlock()
		return nil, nil, now
	}
	agents := make([]*agentState, 0, len(s.agents))
	for _, a := range s.agents {
		agents = append(agents, a)
	}
	p := newPlacer(agents, placeSample, s.opts.MaxLaunchingPerHost, now)
	jobs := make([]*jobState, 0, len(s.waiting))
	for j := range s.waiting {
		jobs = append(jobs, j)
	}
	// Critical groups first, then oldest job first.
	slices.SortFunc(jobs, func(a, b *jobState) int {
		if c := cmp.Compare(tierRank(a.group.cfg.Tier), tierRank(b.group.cfg.Tier)); c != 0 {
			return c
		}
		return a.created.Compare(b.created)
	})
	var batch []*taskState
	var puts []put
	for _, j := range jobs {
		for len(j.queue) > 0 && len(batch) < s.opts.PlaceBatch {
			sl := j.queue[0]
			if !sl.queued || sl.cur != nil || !sl.active || sl.done || sl.due.After(now) || j.terminal() {
				j.queue = j.queue[1:]
				continue
			}
			if j.group.cfg.Tier == TierFlex && j.group.overQuota(j.d.req, j.group.used) {
				j.queuedReason = quotaReason(j.group, j.d.req) // queued until the group's usage drops
				break
			}
			a := p.pick(j.d, j.spread)
			if a == nil {
				j.queuedReason = noRoomReason(j.d.req, len(agents))
				break
			}
			j.queue = j.queue[1:]
			j.queuedReason = ""
			t := s.newTask(j, sl, a, now)
			batch = append(batch, t)
			puts = append(puts, put{key: s.st.taskKey(j.rec.Id, t.rec.Id), val: t.marshal(), create: true})
		}
		if len(j.queue) == 0 {
			j.queue, j.queuedReason = nil, ""
			delete(s.waiting, j)
		}
		if len(batch) >= s.opts.PlaceBatch {
			break
		}
	}
	s.mu.Unlock()
	return batch, puts, now
}

func (s *Scheduler) commitRound(ctx context.Context, batch []*taskState, puts []put, start time.Time) error {
	err := s.st.commit(ctx, puts)

	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	if err != nil {
		for _, t := range batch {
			s.unplace(t, now)
		}
		return err
	}
	launches := map[*agentState][]*agentv1.TaskSpec{}
	for _, t := range batch {
		t.committing = false
		if t.slot.cur != t || t.job.terminal() || t.killWanted || t.agent.lost {
			// Killed or lost while the write was in flight: it never ran.
			s.end(t, agentv1.TaskState_TASK_STATE_KILLED, string(task.ReasonKilledByUser), "killed before launch", 0, now)
			continue
		}
		spec := *t.job.tmpl
		spec.ID = t.rec.Id
		launches[t.agent] = append(launches[t.agent], task.ToProto(&spec))
	}
	for a, specs := range launches {
		if a.sess != nil {
			a.sess.send(&schedv1.SchedulerMessage{Msg: &schedv1.SchedulerMessage_Launch{Launch: &schedv1.Launch{Tasks: specs}}})
			s.stats.launchesSent.Add(int64(len(specs)))
		}
		// A disconnected agent learns nothing; on reconnect it does not
		// report these tasks and they are replaced.
	}
	s.stats.placed.Add(int64(len(batch)))
	if m := s.opts.Metrics; m != nil {
		took := time.Since(start).Seconds() / float64(len(batch))
		for range batch {
			m.PlacementDuration.WithLabelValues(metrics.PlacementPlaced).Observe(took)
		}
	}
	return nil
}

// observeLocked publishes queue depth and agents by health. Caller holds s.mu.
func (s *Scheduler) observeLocked() {
	m := s.opts.Metrics
	if m == nil {
		return
	}
	depth := 0
	for j := range s.waiting {
		depth += len(j.queue)
	}
	m.QueueDepth.Set(float64(depth))
	counts := map[string]int{metrics.AgentHealthy: 0, metrics.AgentUnhealthy: 0, metrics.AgentDraining: 0, metrics.AgentLost: 0}
	for _, a := range s.agents {
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

func tierRank(t Tier) int {
	if t == TierCritical {
		return 0
	}
	return 1
}

// newTask makes the next attempt of a slot on agent a (not yet committed).
func (s *Scheduler) newTask(j *jobState, sl *slot, a *agentState, now time.Time) *taskState {
	s.dequeue(j, sl)
	sl.attempt++
	t := &taskState{job: j, slot: sl, agent: a, launching: true, committing: true}
	t.rec = &schedv1.Task{
		Id: TaskID(j.rec.Id, sl.index, sl.attempt), JobId: j.rec.Id, Index: sl.index, Attempt: sl.attempt,
		AgentId: a.id, Az: a.az, State: agentv1.TaskState_TASK_STATE_UNSPECIFIED, Failures: sl.failures,
		Placed: timestamppb.New(now),
	}
	sl.cur = t
	a.attach(t)
	a.launching++
	j.spread.add(a, 1)
	j.live++
	j.group.used = j.group.used.add(j.d.req)
	s.tasks[t.rec.Id] = t
	return t
}

// unplace undoes newTask after a failed commit: the slot is pending again.
func (s *Scheduler) unplace(t *taskState, now time.Time) {
	t.agent.detach(t)
	j := t.job
	j.spread.add(t.agent, -1)
	j.live--
	j.group.used = j.group.used.sub(j.d.req)
	delete(s.tasks, t.rec.Id)
	if t.slot.cur == t {
		t.slot.cur = nil
		if !j.terminal() && t.slot.active {
			s.enqueue(j, t.slot, now, now)
		}
	}
}

// applyStatus applies what an agent says about one task. Callers hold s.mu.
func (s *Scheduler) applyStatus(a *agentState, st *schedv1.TaskStatus, now time.Time) {
	t := s.tasks[st.GetTaskId()]
	if t == nil || t.agent != a {
		if !terminalState(st.GetState()) {
			s.sendKill(a, st.GetTaskId()) // not ours (any more): reconcile by killing it
		}
		return
	}
	if t.committing {
		return
	}
	next, cur := st.GetState(), t.rec.GetState()
	if next <= cur || terminalState(cur) {
		return
	}
	t.rec.State, t.rec.Reason, t.rec.Message, t.rec.ExitCode = next, st.GetReason(), st.GetMessage(), st.GetExitCode()
	if terminalState(next) {
		s.end(t, next, st.GetReason(), st.GetMessage(), st.GetExitCode(), now)
		return
	}
	if next >= agentv1.TaskState_TASK_STATE_RUNNING && t.rec.Started == nil {
		t.rec.Started = timestamppb.New(now)
		if t.launching {
			t.launching = false
			a.launching--
		}
		s.dirty.set(s.st.taskKey(t.job.rec.Id, t.rec.Id), t.marshal())
	}
}

// end records a task's final state and settles its slot. Callers hold s.mu.
func (s *Scheduler) end(t *taskState, state agentv1.TaskState, reason, msg string, exit int32, now time.Time) {
	if _, ok := s.tasks[t.rec.Id]; !ok {
		return
	}
	t.rec.State, t.rec.Reason, t.rec.Message, t.rec.ExitCode, t.rec.Ended = state, reason, msg, exit, timestamppb.New(now)
	s.dirty.set(s.st.taskKey(t.job.rec.Id, t.rec.Id), t.marshal())
	a, j := t.agent, t.job
	a.detach(t)
	j.spread.add(a, -1)
	j.live--
	j.group.used = j.group.used.sub(j.d.req)
	delete(s.tasks, t.rec.Id)
	if platformReason(reason) {
		a.recordFailure(now, s.opts.QuarantineFailures, s.opts.QuarantineWindow)
	}
	switch state {
	case agentv1.TaskState_TASK_STATE_LOST:
		j.rec.Counts.Lost++
	case agentv1.TaskState_TASK_STATE_KILLED:
		j.rec.Counts.Killed++
	}
	if t.slot.cur == t {
		t.slot.cur = nil
		s.settle(j, t.slot, t.rec, now)
	}
	s.checkDone(j, now)
}

// settle decides what a slot does after its task ended: done, replaced now,
// or retried after a backoff.
func (s *Scheduler) settle(j *jobState, sl *slot, rec *schedv1.Task, now time.Time) {
	if j.terminal() || !sl.active || sl.done {
		return
	}
	state := rec.GetState()
	if state == agentv1.TaskState_TASK_STATE_LOST {
		s.enqueue(j, sl, now, now) // the host's fault: replace at once
		s.poke()
		return
	}
	if j.batch() {
		switch {
		case state == agentv1.TaskState_TASK_STATE_FINISHED && rec.GetExitCode() == 0:
			sl.done, sl.result = true, state
			j.rec.Counts.Finished++
			return
		case state == agentv1.TaskState_TASK_STATE_KILLED:
			sl.done, sl.result = true, state
			return
		}
	} else if state == agentv1.TaskState_TASK_STATE_KILLED {
		s.enqueue(j, sl, now, now) // killed by an operator: replace
		s.poke()
		return
	}
	policy := j.retry()
	if rec.Started != nil && rec.Ended != nil && rec.Ended.AsTime().Sub(rec.Started.AsTime()) >= resetAfter(policy) {
		sl.failures = 0
	}
	sl.failures++
	if j.batch() && sl.failures > policy.GetMaxRetries() {
		sl.done, sl.result = true, agentv1.TaskState_TASK_STATE_FAILED
		j.rec.Counts.Failed++
		return
	}
	j.rec.Counts.Retries++
	s.enqueue(j, sl, now.Add(retryDelay(policy, sl.failures, s.opts.CrashLoopBase, s.opts.CrashLoopCap)), now)
	s.poke()
}

// checkDone ends a batch job once every slot is done and nothing runs.
func (s *Scheduler) checkDone(j *jobState, now time.Time) {
	if j.terminal() || !j.batch() || j.live > 0 {
		return
	}
	state := schedv1.JobState_JOB_STATE_FINISHED
	for _, sl := range j.slots {
		if !sl.done {
			return
		}
		if sl.result != agentv1.TaskState_TASK_STATE_FINISHED {
			state = schedv1.JobState_JOB_STATE_FAILED
		}
	}
	s.finishJob(j, state, now)
}

func (s *Scheduler) finishJob(j *jobState, state schedv1.JobState, now time.Time) {
	j.gen++
	j.rec.State = state
	j.rec.Finished = timestamppb.New(now)
	j.rec.Counts = s.counts(j)
	j.group.reserved = j.group.reserved.sub(j.footprint)
	j.footprint = resources{}
	for _, sl := range j.slots {
		s.dequeue(j, sl)
	}
	// Tasks still ending keep their own slot; the job needs no more.
	j.slots, j.queue, j.queuedReason = nil, nil, ""
	delete(s.waiting, j)
	b, _ := proto.Marshal(j.rec)
	s.dirty.set(s.st.jobKey(j.rec.Id), b)
	s.keepFinished(j)
}

// counts summarises a job's slots.
func (s *Scheduler) counts(j *jobState) *schedv1.JobCounts {
	c := proto.Clone(j.rec.Counts).(*schedv1.JobCounts)
	if j.terminal() {
		return c
	}
	c.Pending, c.Launched, c.Running = 0, 0, 0
	for _, sl := range j.slots {
		switch {
		case sl.cur != nil && sl.cur.rec.GetState() >= agentv1.TaskState_TASK_STATE_RUNNING:
			c.Running++
		case sl.cur != nil:
			c.Launched++
		case sl.queued:
			c.Pending++
		}
	}
	return c
}

// sendKill asks an agent to kill tasks. Callers hold s.mu.
func (s *Scheduler) sendKill(a *agentState, ids ...string) {
	if a.sess != nil && len(ids) > 0 {
		a.sess.send(&schedv1.SchedulerMessage{Msg: &schedv1.SchedulerMessage_Kill{Kill: &schedv1.Kill{TaskIds: ids}}})
	}
}

// killTask kills a placed task; it stays accounted to its host until the
// agent confirms. Callers hold s.mu.
func (s *Scheduler) killTask(t *taskState) {
	t.killWanted = true
	if !t.committing {
		s.sendKill(t.agent, t.rec.Id)
	}
}

// agentLost marks a silent agent lost and its tasks lost. Callers hold s.mu.
func (s *Scheduler) agentLost(a *agentState, now time.Time) {
	a.lost = true
	s.stats.lostAgents.Add(1)
	if a.sess != nil {
		a.sess.close()
		a.sess = nil
	}
	s.log.Warn("agent lost", "agent", a.id, "silent", a.silentFor(now).Round(time.Millisecond), "tasks", len(a.tasks))
	for _, t := range a.tasks {
		if t.committing {
			continue // finished (as killed) when its commit returns
		}
		s.end(t, agentv1.TaskState_TASK_STATE_LOST, "AgentLost", fmt.Sprintf("agent %s missed heartbeats for %s", a.id, s.opts.AgentTTL), 0, now)
	}
}

// register (re)attaches an agent's session and reconciles both sides.
// Callers hold s.mu.
func (s *Scheduler) register(reg *schedv1.Register, sess *session, now time.Time) *agentState {
	a := s.agents[reg.GetInstanceId()]
	if a == nil {
		a = newAgent(reg.GetInstanceId())
		s.agents[a.id] = a
	}
	if a.sess != nil && a.sess != sess {
		a.sess.close()
	}
	c := reg.GetCapacity()
	a.instanceType, a.az, a.labels = reg.GetInstanceType(), reg.GetAz(), reg.GetLabels()
	a.capacity, a.enis, a.ipsPerENI = capacityResources(c), int(c.GetEnis()), int(c.GetIpsPerEni())
	a.sess, a.lost, a.healthy, a.lastSeen = sess, false, true, now
	sess.send(&schedv1.SchedulerMessage{Msg: &schedv1.SchedulerMessage_Registered{Registered: &schedv1.Registered{
		AgentId: a.id, HeartbeatIntervalMs: s.opts.HeartbeatInterval.Milliseconds()}}})

	reported := make(map[string]bool, len(reg.GetTasks()))
	for _, st := range reg.GetTasks() {
		reported[st.GetTaskId()] = true
		s.applyStatus(a, st, now)
	}
	var kills []string
	for id, t := range a.tasks {
		switch {
		case t.committing:
		case !reported[id]:
			s.end(t, agentv1.TaskState_TASK_STATE_LOST, "LostOnAgent", "the agent no longer has this task", 0, now)
		case t.killWanted:
			kills = append(kills, id)
		}
	}
	s.sendKill(a, kills...)
	b, _ := proto.Marshal(a.record())
	s.dirty.set(s.st.agentKey(a.id), b)
	s.poke()
	return a
}
