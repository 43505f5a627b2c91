package core

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/titus-agent/titus-agent/pkg/scheduler/model"
)

// retention is the ended jobs still kept, oldest end first, and what was
// pruned from memory but whose delete from the store is to be retried.
// Guarded by Core.mu.
type retention struct {
	finished       []*jobState
	unpruned       []string
	unprunedAgents []string
}

// keep adds an ended job to the retention queue.
func (r *retention) keep(j *jobState) { r.finished = append(r.finished, j) }

// ended is when a job ended (its creation for records without an end).
func (j *jobState) ended() time.Time {
	if !j.rec.Finished.IsZero() {
		return j.rec.Finished
	}
	return j.rec.Created
}

// takePrunable removes from memory the ended jobs past the retention or
// beyond MaxFinishedJobs, oldest first, and returns their ids. A job that
// still has tasks on agents (killed, not yet confirmed) or an API call in
// flight is kept for a later round, and one whose last task ended after
// it did is kept for the retention from then, so that the final state of
// every task can be read after it ended (a killed job's tasks end once
// their agents confirm, which can be long after the kill). Callers hold
// c.mu.
func (c *Core) takePrunable(now time.Time) []string {
	r := &c.ret
	excess := len(r.finished) - c.opts.MaxFinishedJobs
	var ids []string
	var kept []*jobState
	i := 0
	for ; i < len(r.finished); i++ {
		j := r.finished[i]
		if excess <= 0 && now.Sub(j.ended()) < c.opts.FinishedJobRetention {
			break
		}
		if c.jobs[j.rec.ID] != j {
			continue // no longer held (state reloaded)
		}
		if j.live > 0 || (excess <= 0 && now.Sub(j.settled) < c.opts.FinishedJobRetention) || !j.op.TryLock() {
			kept = append(kept, j)
			continue
		}
		delete(c.jobs, j.rec.ID)
		j.op.Unlock() // a waiting call finds the job gone (lockJob)
		ids = append(ids, j.rec.ID)
		excess--
	}
	if i > 0 {
		r.finished = slices.Concat(kept, r.finished[i:])
	}
	return ids
}

// prune removes ended jobs past their retention from memory, then their
// records and every attempt of their tasks from the store. It runs in the
// flush loop: their last records are flushed first, so no pending write
// brings a deleted key back. A failed delete is retried next round.
// Agents lost with no task left are forgotten after the same retention
// (an autoscaled fleet's instance ids never come back).
func (c *Core) prune(ctx context.Context) {
	now := c.clock()
	c.pruneKeys(ctx, now)
	c.mu.Lock()
	ids := append(c.ret.unpruned, c.takePrunable(now)...)
	agents := append(c.ret.unprunedAgents, c.takeLostAgents(now)...)
	c.ret.unpruned, c.ret.unprunedAgents = nil, nil
	c.mu.Unlock()
	if len(ids) == 0 && len(agents) == 0 {
		return
	}
	err := c.Flush(ctx)
	if err == nil {
		err = c.st.Delete(ctx, ids, agents)
	}
	if err != nil {
		c.fenceFailed(err)
		if !errors.Is(err, model.ErrNotLeader) && ctx.Err() == nil {
			c.log.Warn("prune ended jobs and lost agents", "jobs", len(ids), "agents", len(agents), "err", err)
			c.mu.Lock()
			c.ret.unpruned = append(c.ret.unpruned, ids...)
			c.ret.unprunedAgents = append(c.ret.unprunedAgents, agents...)
			c.mu.Unlock()
		}
		return
	}
	c.stats.pruned.Add(int64(len(ids)))
}

// takeLostAgents removes from memory the agents lost, with no task, for
// longer than the retention. Callers hold c.mu.
func (c *Core) takeLostAgents(now time.Time) []string {
	var ids []string
	for id, a := range c.agents {
		if a.lost && a.sess == nil && len(a.tasks) == 0 && a.silentFor(now) >= c.opts.FinishedJobRetention {
			delete(c.agents, id)
			c.hostGen++
			ids = append(ids, id)
		}
	}
	return ids
}
