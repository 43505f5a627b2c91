package core

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/titus-agent/titus-agent/pkg/scheduler/model"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// agentState is the leader's view of one agent.
type agentState struct {
	id, instanceType, az string
	labels               map[string]string
	capacity             model.Resources
	enis, ipsPerENI      int
	used                 model.Resources
	sgSets               map[string]int
	net                  agentNet
	// attributes are what the agent said it is; attrs the map constraints
	// read (instance type, zone, labels and attributes).
	attributes       model.HostAttributes
	attrs            map[string]string
	launching        int
	tasks            map[string]*taskState
	sess             *Session
	healthy, drained bool
	lost             bool
	lastSeen         time.Time
	// heard is when the stream last delivered a heartbeat (unix ns), set
	// without c.mu so a busy scheduler never mistakes its own delay for a
	// silent agent.
	heard            atomic.Int64
	failures         []time.Time
	quarantinedUntil time.Time
	// unhealthy are the running tasks Unhealthy for less than their
	// job's policy allows: every heartbeat checks them (checkHealth).
	unhealthy map[*taskState]struct{}
	// resync: a status the agent sent was not applied; ask it for every
	// task (its heartbeats may list only changes).
	resync bool
}

func newAgent(id string) *agentState {
	return &agentState{id: id, sgSets: map[string]int{}, tasks: map[string]*taskState{}}
}

// silentFor is how long the agent has not been heard from.
func (a *agentState) silentFor(now time.Time) time.Duration {
	last := a.lastSeen
	if h := a.heard.Load(); h > last.UnixNano() {
		last = time.Unix(0, h)
	}
	return now.Sub(last)
}

func (a *agentState) schedulable(now time.Time) bool {
	return a.sess != nil && a.healthy && !a.drained && !a.lost && !now.Before(a.quarantinedUntil)
}

func (a *agentState) attach(t *taskState) {
	a.tasks[t.rec.ID] = t
	a.used = a.used.Add(t.d.req)
	a.sgSets[t.d.sgKey]++
	if a.net.report != nil && !t.inReport {
		a.net.unreported[t.d.sgKey]++
	}
}

func (a *agentState) detach(t *taskState) {
	if _, ok := a.tasks[t.rec.ID]; !ok {
		return
	}
	delete(a.tasks, t.rec.ID)
	delete(a.unhealthy, t)
	a.used = a.used.Sub(t.d.req)
	sg := t.d.sgKey
	a.sgSets[sg]--
	// A task the last report did not know stays in unreported until a
	// report made after it took its IP: the agent holds that IP until its
	// network is torn down and then cools down from there, longer than
	// the scheduler's own cool-down from the final state.
	a.endedUnreported(t)
	if a.sgSets[sg] == 0 {
		delete(a.sgSets, sg)
	}
	if t.launching {
		t.launching = false
		a.launching--
	}
}

// recordFailure counts a platform failure and quarantines the host once it
// has had too many within the window.
func (a *agentState) recordFailure(now time.Time, n int, window time.Duration) {
	keep := a.failures[:0]
	for _, f := range a.failures {
		if now.Sub(f) < window {
			keep = append(keep, f)
		}
	}
	a.failures = append(keep, now)
	if len(a.failures) >= n {
		a.quarantinedUntil = now.Add(window)
		a.failures = nil
	}
}

// view is the agent as the API shows it at now (its record, with now zero).
func (a *agentState) view(now time.Time) *model.Agent {
	v := a.record(now)
	if a.drained && !now.IsZero() {
		for _, t := range a.tasks {
			if sl := t.slot; !t.job.batch() && !t.job.terminal() && sl.active && sl.cur == t {
				v.DrainRemaining++
			}
		}
		if v.DrainRemaining > 0 {
			v.DrainBlocked = drainWhy(a)
		}
	}
	return v
}

func (a *agentState) record(now time.Time) *model.Agent {
	return &model.Agent{
		ID: a.id, InstanceType: a.instanceType, AZ: a.az, Labels: a.labels,
		Capacity:   model.Capacity{Resources: a.capacity, ENIs: a.enis, IPsPerENI: a.ipsPerENI, IPReuseCooldown: a.net.cooldown},
		Used:       model.Capacity{Resources: a.used, ENIs: a.heldENIs(now)},
		Attributes: a.attributes,
		Network:    a.net.report,
		Connected:  a.sess != nil, Healthy: a.healthy, Drained: a.drained, Lost: a.lost,
		Quarantined:   now.Before(a.quarantinedUntil),
		Tasks:         uint32(len(a.tasks)),
		LastHeartbeat: a.lastSeen,
	}
}

// jobState is one job and its task slots.
type jobState struct {
	rec     *model.Job
	tmpl    *task.Spec
	d       demand
	group   *groupState
	slots   []*slot
	queue   []*slot
	spread  spreadState
	live    int
	created time.Time
	// settled is when the last task of an ended job ended, if after the
	// job did (a kill confirmed later): the retention runs from then too.
	settled   time.Time
	footprint model.Resources // reserved against a critical group's quota
	// op orders the API's changes of this job (kill, scale): each writes
	// the store without c.mu, one at a time. gen counts changes of the
	// job's state or spec (under c.mu), so an operation sees whether
	// anything else changed the job while its write was in flight.
	op  sync.Mutex
	gen uint64
	// hosts is what the job's constraints make of the known hosts (placement).
	hosts *jobHosts
	// queuedReason says why pending tasks are not placed (set by placement).
	queuedReason string
	// The rollout's failure count and progress clock live in its record
	// (model.Rollout), so that a new leader goes on from them.
}

func (j *jobState) terminal() bool { return j.rec.State.Terminal() }
func (j *jobState) batch() bool    { return j.rec.Spec.Batch != nil }

// slot is one task position of a job (batch index or service instance).
type slot struct {
	index, attempt, failures uint32
	lost                     uint32 // consecutive attempts lost without running lostResetAfter
	refused                  uint32 // consecutive attempts refused NoNetworkCapacity
	cur                      *taskState
	// next is cur's replacement being started (a rollout's surge, a
	// drain's migration): once it is available, cur is stopped and next
	// becomes cur. replace asks placement for next rather than cur.
	next    *taskState
	replace bool
	active  bool // batch: always; service: index < desired
	done    bool // batch: reached its final result
	result  task.State
	queued  bool // counted as pending: in the job's queue or waiting out a backoff
	due     time.Time
}

// open reports whether placement may place a task in the slot: it has
// none, or it asks for a replacement of its task and has none yet.
func (sl *slot) open() bool { return sl.cur == nil || (sl.replace && sl.next == nil) }

// holds reports whether t is the slot's task or its replacement.
func (sl *slot) holds(t *taskState) bool { return sl.cur == t || sl.next == t }

// taskState is one placed attempt of a slot.
type taskState struct {
	rec       *model.Task
	job       *jobState
	d         demand // what it was placed with (a later revision may ask more)
	checked   bool   // its template has a health check
	slot      *slot
	agent     *agentState
	launching bool // sent, not yet running
	// inReport: the agent's last network report was made knowing this task
	// (it listed it), so the report counts its IP.
	inReport   bool
	committing bool // placement write in flight
	killWanted bool
	// unhealthySince is when the agent first reported the task Unhealthy
	// (zero while it is not); healthFailed is set once the scheduler
	// kills it for that, with healthMessage saying why.
	unhealthySince time.Time
	healthFailed   bool
	healthMessage  string
	// lb is its standing in its job's target groups.
	lb taskTargets
}

type groupState struct {
	cfg      *model.Group
	pending  int
	used     model.Resources
	reserved model.Resources
}

func (g *groupState) overQuota(extra model.Resources, r model.Resources) bool {
	q := g.cfg
	return (q.CPUMillicores > 0 && r.CPU+extra.CPU > q.CPUMillicores) || (q.MemoryMiB > 0 && r.Mem+extra.Mem > q.MemoryMiB)
}

// platformReason says whether a failure is the host's fault, not the task's.
// refusal reports whether a task ended with reason r was refused by its
// host before anything ran, for want of an IP there (refusedForIP) or for
// its full disk: the scheduler places it again elsewhere, counting no
// failure.
func refusal(r string) bool {
	return refusedForIP(r) || r == string(task.ReasonHostDiskFull)
}

func platformReason(r string) bool {
	switch task.Reason(r) {
	case task.ReasonPlatformError, task.ReasonNetworkSetupFailed, task.ReasonDiskSetupFailed,
		task.ReasonMetadataSetupFailed, task.ReasonStartFailed, task.ReasonImagePullFailed:
		return true
	}
	return false
}
