package scheduler

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"
)

// ended is when a job ended (its creation for records without an end).
func (j *jobState) ended() time.Time {
	if f := j.rec.GetFinished(); f != nil {
		return f.AsTime()
	}
	return j.rec.GetCreated().AsTime()
}

// keepFinished adds an ended job to the retention queue. Callers hold s.mu.
func (s *Scheduler) keepFinished(j *jobState) {
	s.finished = append(s.finished, j)
}

// takePrunable removes from memory the ended jobs past the retention or
// beyond MaxFinishedJobs, oldest first, and returns their ids. A job that
// still has tasks on agents (killed, not yet confirmed) or an API call in
// flight is kept for a later round. Callers hold s.mu.
func (s *Scheduler) takePrunable(now time.Time) []string {
	excess := len(s.finished) - s.opts.MaxFinishedJobs
	var ids []string
	var kept []*jobState
	i := 0
	for ; i < len(s.finished); i++ {
		j := s.finished[i]
		if excess <= 0 && now.Sub(j.ended()) < s.opts.FinishedJobRetention {
			break
		}
		if s.jobs[j.rec.Id] != j {
			continue // no longer held (state reloaded)
		}
		if j.live > 0 || !j.op.TryLock() {
			kept = append(kept, j)
			continue
		}
		delete(s.jobs, j.rec.Id)
		j.op.Unlock() // a waiting call finds the job gone (lockJob)
		ids = append(ids, j.rec.Id)
		excess--
	}
	if i > 0 {
		s.finished = slices.Concat(kept, s.finished[i:])
	}
	return ids
}

// prune removes ended jobs past their retention from memory, then their
// records and every attempt of their tasks from etcd. It runs in the flush
// loop: their last records are flushed first, so no pending write brings
// a deleted key back. A failed delete is retried next round.
// Agents lost with no task left are forgotten after the same retention
// (an autoscaled fleet's instance ids never come back).
func (s *Scheduler) prune(ctx context.Context) {
	now := s.clock()
	s.mu.Lock()
	ids := append(s.unpruned, s.takePrunable(now)...)
	agents := append(s.unprunedAgents, s.takeLostAgents(now)...)
	s.unpruned, s.unprunedAgents = nil, nil
	s.mu.Unlock()
	if len(ids) == 0 && len(agents) == 0 {
		return
	}
	err := s.flush(ctx)
	if err == nil {
		err = s.st.deleteJobs(ctx, ids, agents)
	}
	if err != nil {
		s.fenceFailed(err)
		if !errors.Is(err, ErrNotLeader) && ctx.Err() == nil {
			s.log.Warn("prune ended jobs and lost agents", "jobs", len(ids), "agents", len(agents), "err", err)
			s.mu.Lock()
			s.unpruned = append(s.unpruned, ids...)
			s.unprunedAgents = append(s.unprunedAgents, agents...)
			s.mu.Unlock()
		}
		return
	}
	s.stats.pruned.Add(int64(len(ids)))
}

// takeLostAgents removes from memory the agents lost, with no task, for
// longer than the retention. Callers hold s.mu.
func (s *Scheduler) takeLostAgents(now time.Time) []string {
	var ids []string
	for id, a := range s.agents {
		if a.lost && a.sess == nil && len(a.tasks) == 0 && a.silentFor(now) >= s.opts.FinishedJobRetention {
			delete(s.agents, id)
			ids = append(ids, id)
		}
	}
	return ids
}

// jobNotFound is the error for a job this scheduler does not hold: never
// submitted, or ended and pruned.
func (s *Scheduler) jobNotFound(id string) error {
	return fmt.Errorf("%w: job %q: no such job (ended jobs are kept %s after they end, and at most the %d most recent; older ones are removed)",
		ErrNotFound, id, s.opts.FinishedJobRetention, s.opts.MaxFinishedJobs)
}
