package scheduler

import (
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// agentState is the leader's view of one agent.
type agentState struct {
	id, instanceType, az string
	labels               map[string]string
	capacity             resources
	enis, ipsPerENI      int
	used                 resources
	sgSets               map[string]int
	enisUsed             int
	launching            int
	tasks                map[string]*taskState
	sess                 *session
	healthy, drained     bool
	lost                 bool
	lastSeen             time.Time
	// heard is when the stream last delivered a message (unix ns), set
	// without s.mu so a busy scheduler never mistakes its own delay for a
	// silent agent.
	heard            atomic.Int64
	failures         []time.Time
	quarantinedUntil time.Time
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

// ipFits reports whether a task with this security-group set can get an IP:
// on an ENI already carrying the set with a free IP, or on a free ENI.
// Agents that report no ENI capacity are not limited.
func (a *agentState) ipFits(sg string) bool {
	if a.enis <= 0 || a.ipsPerENI <= 0 {
		return true
	}
	if n := a.sgSets[sg]; n%a.ipsPerENI != 0 {
		return true
	}
	return a.enisUsed < a.enis
}

func (a *agentState) attach(t *taskState) {
	a.tasks[t.rec.Id] = t
	a.used = a.used.add(t.job.d.req)
	sg := t.job.d.sgKey
	if a.ipsPerENI > 0 && a.sgSets[sg]%a.ipsPerENI == 0 {
		a.enisUsed++
	}
	a.sgSets[sg]++
}

func (a *agentState) detach(t *taskState) {
	if _, ok := a.tasks[t.rec.Id]; !ok {
		return
	}
	delete(a.tasks, t.rec.Id)
	a.used = a.used.sub(t.job.d.req)
	sg := t.job.d.sgKey
	a.sgSets[sg]--
	if a.ipsPerENI > 0 && a.sgSets[sg]%a.ipsPerENI == 0 {
		a.enisUsed--
	}
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

func (a *agentState) proto(now time.Time) *schedv1.Agent {
	out := &schedv1.Agent{
		Id: a.id, InstanceType: a.instanceType, Az: a.az, Labels: a.labels,
		Capacity:  a.capacity.proto(),
		Used:      a.used.proto(),
		Connected: a.sess != nil, Healthy: a.healthy, Drained: a.drained, Lost: a.lost,
		Quarantined: now.Before(a.quarantinedUntil),
		Tasks:       uint32(len(a.tasks)),
	}
	out.Capacity.Enis, out.Capacity.IpsPerEni = int32(a.enis), int32(a.ipsPerENI)
	out.Used.Enis = int32(a.enisUsed)
	if !a.lastSeen.IsZero() {
		out.LastHeartbeat = timestamppb.New(a.lastSeen)
	}
	return out
}

// record is what survives a failover: registration and drain state.
func (a *agentState) record() *schedv1.Agent {
	r := a.proto(time.Time{})
	r.Used, r.Connected, r.Healthy, r.Lost, r.Quarantined, r.Tasks, r.LastHeartbeat = nil, false, false, false, false, 0, nil
	return r
}

// jobState is one job and its task slots.
type jobState struct {
	rec       *schedv1.Job
	tmpl      *task.Spec
	d         demand
	group     *groupState
	slots     []*slot
	queue     []*slot
	spread    spreadState
	live      int
	created   time.Time
	footprint resources // reserved against a critical group's quota
	// op orders the API's changes of this job (kill, scale): each writes
	// etcd without s.mu, one at a time. gen counts changes of the job's
	// state or spec (under s.mu), so an operation sees whether anything
	// else changed the job while its write was in flight.
	op  sync.Mutex
	gen uint64
	// queuedReason says why pending tasks are not placed (set by placement).
	queuedReason string
}

func (j *jobState) terminal() bool { return j.rec.GetState() != schedv1.JobState_JOB_STATE_ACCEPTED }
func (j *jobState) batch() bool    { return j.rec.GetSpec().GetBatch() != nil }

func (j *jobState) retry() *schedv1.RetryPolicy {
	if b := j.rec.GetSpec().GetBatch(); b != nil {
		return b.GetRetry()
	}
	r := j.rec.GetSpec().GetService().GetRetry()
	if r == nil {
		return &schedv1.RetryPolicy{Kind: schedv1.RetryPolicy_KIND_EXPONENTIAL}
	}
	return r
}

// slot is one task position of a job (batch index or service instance).
type slot struct {
	index, attempt, failures uint32
	cur                      *taskState
	active                   bool // batch: always; service: index < desired
	done                     bool // batch: reached its final result
	result                   agentv1.TaskState
	queued                   bool // counted as pending: in the job's queue or waiting out a backoff
	due                      time.Time
}

// taskState is one placed attempt of a slot.
type taskState struct {
	rec        *schedv1.Task
	job        *jobState
	slot       *slot
	agent      *agentState
	launching  bool // sent, not yet running
	committing bool // placement write in flight
	killWanted bool
}

func (t *taskState) marshal() []byte {
	b, _ := proto.Marshal(t.rec)
	return b
}

type groupState struct {
	cfg      *Group
	pending  int
	used     resources
	reserved resources
}

func (g *groupState) overQuota(extra resources, r resources) bool {
	q := g.cfg
	return (q.CPUMillicores > 0 && r.CPU+extra.CPU > q.CPUMillicores) || (q.MemoryMiB > 0 && r.Mem+extra.Mem > q.MemoryMiB)
}

func terminalState(s agentv1.TaskState) bool { return s >= agentv1.TaskState_TASK_STATE_FINISHED }

// platformReason says whether a failure is the host's fault, not the task's.
func platformReason(r string) bool {
	switch task.Reason(r) {
	case task.ReasonPlatformError, task.ReasonNetworkSetupFailed, task.ReasonDiskSetupFailed,
		task.ReasonMetadataSetupFailed, task.ReasonStartFailed, task.ReasonImagePullFailed:
		return true
	}
	return false
}
