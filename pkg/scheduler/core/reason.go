package core

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/titus-agent/titus-agent/pkg/scheduler/constraint"
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

// explain says why none of a job's tasks could be placed this round: the
// hard constraint that excluded the most hosts when none is left, else
// what keeps the hosts the job may use from taking a task. It counts host
// attributes and the job's own tasks only: nothing of other tenants.
func (p *placer) explain(j *jobState, agents int) string {
	d := &j.d
	if len(p.all) == 0 {
		return noRoomReason(d.req, agents)
	}
	c := p.candidatesOf(j)
	var worst constraint.Exclusion
	var hasWorst bool
	n := len(p.all)
	if d.place != nil && len(d.place.Hard) > 0 {
		h := p.hostsOf(j)
		worst, hasWorst, n = h.worst, h.hasWorst, h.known
	}
	if c.count == 0 && hasWorst && len(p.hostsOf(j).allowed) == 0 {
		var why []string
		if worst.Lacking > 0 {
			why = append(why, fmt.Sprintf("%s of %s hosts lack the attribute", thousands(worst.Lacking), thousands(n)))
		}
		if worst.Other > 0 {
			why = append(why, fmt.Sprintf("%s of %s hosts have another %s", thousands(worst.Other), thousands(n), worst.Constraint.Attr))
		}
		s := fmt.Sprintf("no host with %s: %s", worst.Constraint, strings.Join(why, ", "))
		if worst.Total() < n {
			s += fmt.Sprintf("; with the job's other constraints no host of %s is left", thousands(n))
		}
		return s
	}
	prefix := ""
	if hasWorst {
		prefix = fmt.Sprintf("%s of %s hosts match the job's constraints (%s excludes %s); ",
			thousands(c.count), thousands(n), worst.Constraint, thousands(worst.Total()))
	}
	// Why the hosts the job may use cannot take a task, the commonest first.
	var launchCap, perHost, full, noIP, zoneFits, wrongZone int
	wrongAZs := map[string]bool{}
	var minAZs map[string]bool
	if d.zone == constraint.ZoneHard {
		minAZs = map[string]bool{}
		for _, az := range minZones(c.azs, j.spread) {
			minAZs[az] = true
		}
	}
	for _, a := range p.candidateHosts(j) {
		{
			switch {
			case !a.zoneFits(d.subnets, p.zones):
				wrongZone++
				wrongAZs[a.az] = true
			case a.launching >= p.maxLaunching:
				launchCap++
			case d.maxPerHost > 0 && j.spread.onHost[a.id] >= d.maxPerHost:
				perHost++
			case !d.req.FitsIn(a.capacity.Sub(a.used)):
				full++
			case !a.ipFits(d.sgKey, p.now):
				noIP++
			case minAZs != nil && !minAZs[a.az]:
				zoneFits++
			}
		}
	}
	switch m := max(launchCap, perHost, full, noIP, zoneFits, wrongZone); {
	case m == 0:
		return prefix + noRoomReason(d.req, agents)
	case m == wrongZone:
		return prefix + fmt.Sprintf("subnet zone: none of subnets [%s] is in the zone of %s of the %s hosts the job may use (%s; found by their agents); a task takes its IP in a subnet of its host's zone",
			strings.Join(d.subnets, ", "), thousands(wrongZone), thousands(c.count), strings.Join(slices.Sorted(maps.Keys(wrongAZs)), ", "))
	case m == zoneFits:
		azs := slices.Sorted(maps.Keys(minAZs))
		return prefix + fmt.Sprintf("zoneBalance hard: the job's tasks must go to %s (fewest of its tasks, %d) where no host can take one now; %s hosts in other zones could",
			strings.Join(azs, ", "), j.spread.perAZ[azs[0]], thousands(zoneFits))
	case m == perHost:
		return prefix + fmt.Sprintf("maxPerHost %d: %s of the %s hosts the job may use already run %d of its tasks",
			d.maxPerHost, thousands(perHost), thousands(c.count), d.maxPerHost)
	case m == noIP:
		return prefix + fmt.Sprintf("no free IP: %s of the %s hosts the job may use have room but no IP for %s (every ENI is held by other security-group sets, or its IPs are in use or cooling down)",
			thousands(noIP), thousands(c.count), describeSGKey(d.sgKey))
	case m == launchCap:
		return prefix + fmt.Sprintf("%s of the %s hosts the job may use are at their launch cap (%d tasks starting); waiting for launches to finish",
			thousands(launchCap), thousands(c.count), p.maxLaunching)
	}
	return prefix + noRoomReason(d.req, agents)
}

// thousands writes n with thousands separators: 4,980.
func thousands(n int) string {
	s := strconv.Itoa(n)
	if n < 0 {
		return "-" + thousands(-n)
	}
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}
