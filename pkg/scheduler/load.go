package scheduler

import (
	"context"
	"fmt"
	"slices"
	"time"

	"google.golang.org/protobuf/proto"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// load rebuilds the leader's working set from etcd. Agents get a fresh TTL
// to reconnect; tasks of agents that do not come back are then lost and replaced.
func (s *Scheduler) load(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	s.jobs, s.tasks, s.agents = map[string]*jobState{}, map[string]*taskState{}, map[string]*agentState{}
	s.waiting, s.backoff, s.pendingTotal = map[*jobState]struct{}{}, nil, 0
	s.gstate = map[string]*groupState{}
	s.finished, s.unpruned, s.unprunedAgents = nil, nil, nil
	for name, g := range s.groups {
		s.gstate[name] = &groupState{cfg: g}
	}
	err := s.st.getPrefix(ctx, s.opts.Prefix+"agents/", func(_ string, v []byte) error {
		r := &schedv1.Agent{}
		if err := proto.Unmarshal(v, r); err != nil {
			return err
		}
		a := newAgent(r.Id)
		a.instanceType, a.az, a.labels, a.drained = r.InstanceType, r.Az, r.Labels, r.Drained
		a.capacity, a.enis, a.ipsPerENI = capacityResources(r.Capacity), int(r.GetCapacity().GetEnis()), int(r.GetCapacity().GetIpsPerEni())
		a.lastSeen = now
		s.agents[a.id] = a
		return nil
	})
	if err != nil {
		return err
	}
	var active []*schedv1.Job
	err = s.st.getPrefix(ctx, s.opts.Prefix+"jobs/", func(_ string, v []byte) error {
		r := &schedv1.Job{}
		if err := proto.Unmarshal(v, r); err != nil {
			return err
		}
		tmpl := task.FromProto(r.GetSpec().GetTask())
		tmpl.Normalize()
		if r.GetState() != schedv1.JobState_JOB_STATE_ACCEPTED {
			j := &jobState{rec: r, tmpl: tmpl, group: s.gstate[DefaultGroup], spread: newSpread()}
			s.jobs[r.Id] = j
			s.keepFinished(j)
			return nil
		}
		active = append(active, r)
		return nil
	})
	if err != nil {
		return err
	}
	slices.SortStableFunc(s.finished, func(a, b *jobState) int { return a.ended().Compare(b.ended()) })
	for _, r := range active {
		if err := s.loadJob(ctx, r, now); err != nil {
			return fmt.Errorf("job %s: %w", r.Id, err)
		}
	}
	return nil
}

func (s *Scheduler) loadJob(ctx context.Context, r *schedv1.Job, now time.Time) error {
	tmpl := task.FromProto(r.GetSpec().GetTask())
	if b := r.GetSpec().GetBatch(); b != nil && b.GetRuntimeLimitSeconds() > 0 {
		tmpl.MaxRuntime = time.Duration(b.GetRuntimeLimitSeconds()) * time.Second
	}
	if tmpl.OwnerEmail == "" {
		tmpl.OwnerEmail = r.GetSpec().GetOwnerEmail()
	}
	tmpl.Normalize()
	r.Counts = &schedv1.JobCounts{}
	j := s.newJobState(r, tmpl)
	j.footprint = footprintOf(r.Spec, j.d.req)
	j.group.reserved = j.group.reserved.add(j.footprint)
	s.jobs[r.Id] = j
	latest := map[uint32]*schedv1.Task{}
	err := s.st.getPrefix(ctx, s.st.jobTasksPrefix(r.Id), func(_ string, v []byte) error {
		t := &schedv1.Task{}
		if err := proto.Unmarshal(v, t); err != nil {
			return err
		}
		if l := latest[t.Index]; l == nil || t.Attempt > l.Attempt {
			latest[t.Index] = t
		}
		return nil
	})
	if err != nil {
		return err
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
				s.enqueue(j, sl, now, now)
			}
			continue
		}
		sl.attempt, sl.failures = rec.Attempt, rec.Failures
		if !terminalState(rec.State) {
			a := s.agents[rec.AgentId]
			if a == nil {
				a = newAgent(rec.AgentId)
				a.lastSeen = now
				s.agents[a.id] = a
			}
			t := &taskState{rec: rec, job: j, slot: sl, agent: a}
			sl.cur = t
			a.attach(t)
			if rec.State < agentv1.TaskState_TASK_STATE_RUNNING {
				t.launching = true
				a.launching++
			}
			j.spread.add(a, 1)
			j.live++
			j.group.used = j.group.used.add(j.d.req)
			s.tasks[rec.Id] = t
			if !sl.active {
				t.killWanted = true
			}
			continue
		}
		s.settle(j, sl, rec, now)
	}
	s.checkDone(j, now)
	return nil
}
