package core

import (
	"fmt"
	"strings"
	"time"

	"github.com/titus-agent/titus-agent/pkg/scheduler/model"
)

// Why a job's pending tasks are not placed: shown by job get and job ls
// (Job.queued_reason), set by placement, cleared once they are placed.

// quotaReason: a flex group's usage leaves no room for another task.
func quotaReason(g *groupState, need model.Resources) string {
	q := g.cfg
	var full []string
	if q.CPUMillicores > 0 && g.used.CPU+need.CPU > q.CPUMillicores {
		full = append(full, fmt.Sprintf("%s/%s CPU cores in use", model.Cores(g.used.CPU), model.Cores(q.CPUMillicores)))
	}
	if q.MemoryMiB > 0 && g.used.Mem+need.Mem > q.MemoryMiB {
		full = append(full, fmt.Sprintf("%d/%d MiB memory in use", g.used.Mem, q.MemoryMiB))
	}
	return fmt.Sprintf("capacity group %q (%s) full: %s; a task needs %s; queued until the group's tasks end",
		q.Name, q.Tier, strings.Join(full, ", "), need.Describe())
}

// noRoomReason: no schedulable agent can take a task now.
func noRoomReason(need model.Resources, agents int) string {
	return fmt.Sprintf("no agent can take a task now (a task needs %s; %d agents known: full, unhealthy, drained, quarantined, disconnected or at their launch cap)",
		need.Describe(), agents)
}

// backoffReason: the pending tasks wait out a retry delay.
func backoffReason(j *jobState, now time.Time) string {
	var next time.Time
	for _, sl := range j.slots {
		if sl.queued && sl.cur == nil && sl.due.After(now) && (next.IsZero() || sl.due.Before(next)) {
			next = sl.due
		}
	}
	if next.IsZero() {
		return ""
	}
	return fmt.Sprintf("retry backoff after repeated failures: next attempt in %s", next.Sub(now).Round(time.Second))
}
