package scheduler

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// Errors callers branch on; mapped to gRPC codes at the edge (grpcError).
var (
	ErrQueueFull     = errors.New("queue full")
	ErrQuotaExceeded = errors.New("capacity group quota exceeded")
	ErrNotFound      = errors.New("not found")
	ErrUnknownGroup  = errors.New("unknown capacity group")
	ErrWrongJobKind  = errors.New("wrong job kind")
)

func grpcError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrInvalidJob), errors.Is(err, ErrUnknownGroup), errors.Is(err, ErrWrongJobKind):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, ErrQueueFull), errors.Is(err, ErrQuotaExceeded):
		return status.Error(codes.ResourceExhausted, err.Error())
	case errors.Is(err, ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, ErrNotLeader):
		return status.Error(codes.Unavailable, err.Error())
	}
	return status.Error(codes.Internal, err.Error())
}

// newJobState builds a job's in-memory state (no slot queued yet).
func (s *Scheduler) newJobState(rec *schedv1.Job, tmpl *task.Spec) *jobState {
	name := rec.GetSpec().GetCapacityGroup()
	if name == "" {
		name = DefaultGroup
	}
	g := s.gstate[name]
	if g == nil {
		// The group was removed from the configuration: keep the job running under default.
		g = s.gstate[DefaultGroup]
	}
	if rec.Counts == nil {
		rec.Counts = &schedv1.JobCounts{}
	}
	j := &jobState{rec: rec, tmpl: tmpl, group: g, spread: newSpread(), created: rec.GetCreated().AsTime()}
	j.d = demand{req: taskResources(tmpl), sgKey: sgKey(tmpl), spread: !j.batch()}
	n := j.size()
	j.slots = make([]*slot, n)
	for i := range j.slots {
		j.slots[i] = &slot{index: uint32(i), active: true}
	}
	return j
}

// size is how many task slots a job has now.
func (j *jobState) size() int {
	if b := j.rec.GetSpec().GetBatch(); b != nil {
		return int(b.GetSize())
	}
	return int(j.rec.GetSpec().GetService().GetDesired())
}

// footprintOf is what a job reserves against its group's quota: every task
// of a batch job, the max of a service job.
func footprintOf(spec *schedv1.JobSpec, req resources) resources {
	if b := spec.GetBatch(); b != nil {
		return req.times(int64(b.GetSize()))
	}
	return req.times(int64(spec.GetService().GetMax()))
}

// admit checks a group's bounded queue and quota for n more tasks. Callers hold s.mu.
func (s *Scheduler) admit(g *groupState, n int, footprint resources) error {
	if g.pending+n > g.cfg.MaxPending {
		return fmt.Errorf("%w: capacity group %q has %d tasks queued, limit %d; submit again later", ErrQueueFull, g.cfg.Name, g.pending, g.cfg.MaxPending)
	}
	if s.pendingTotal+n > s.opts.MaxPendingTotal {
		return fmt.Errorf("%w: the scheduler has %d tasks queued, limit %d; submit again later", ErrQueueFull, s.pendingTotal, s.opts.MaxPendingTotal)
	}
	if g.cfg.Tier == TierCritical && g.overQuota(footprint, g.reserved) {
		return fmt.Errorf("%w: critical capacity group %q: job needs cpu=%dm mem=%dMiB, group has cpu=%dm mem=%dMiB of quota cpu=%dm mem=%dMiB reserved",
			ErrQuotaExceeded, g.cfg.Name, footprint.CPU, footprint.Mem, g.reserved.CPU, g.reserved.Mem, g.cfg.CPUMillicores, g.cfg.MemoryMiB)
	}
	return nil
}

// SubmitJob implements the API.
func (s *Scheduler) SubmitJob(ctx context.Context, req *schedv1.SubmitJobRequest) (*schedv1.SubmitJobResponse, error) {
	if err := s.checkLeader(); err != nil {
		return nil, err
	}
	tmpl, err := ValidateJob(req.GetSpec())
	if err != nil {
		return nil, grpcError(err)
	}
	spec := proto.Clone(req.GetSpec()).(*schedv1.JobSpec)
	if spec.CapacityGroup == "" {
		spec.CapacityGroup = DefaultGroup
	}
	s.mu.Lock()
	g := s.gstate[spec.CapacityGroup]
	if g == nil {
		s.mu.Unlock()
		return nil, grpcError(fmt.Errorf("%w: capacity_group: %q is not configured", ErrUnknownGroup, spec.CapacityGroup))
	}
	req0 := taskResources(tmpl)
	fp := footprintOf(spec, req0)
	n := int(spec.GetBatch().GetSize())
	if spec.GetService() != nil {
		n = int(spec.GetService().GetDesired())
	}
	if err := s.admit(g, n, fp); err != nil {
		s.mu.Unlock()
		return nil, grpcError(err)
	}
	// Hold the job's place in the queue and quota while it is written, but
	// not the lock: heartbeats and placement go on during the etcd round trip.
	g.reserved = g.reserved.add(fp)
	g.pending += n
	s.pendingTotal += n
	s.mu.Unlock()

	id, err := uuid.NewV7()
	now := time.Now()
	rec := &schedv1.Job{Id: id.String(), Spec: spec, State: schedv1.JobState_JOB_STATE_ACCEPTED, Created: timestamppb.New(now), Counts: &schedv1.JobCounts{}}
	if err == nil {
		err = s.putJob(ctx, rec)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	g.pending -= n
	s.pendingTotal -= n
	if err != nil {
		g.reserved = g.reserved.sub(fp)
		return nil, grpcError(err)
	}
	j := s.newJobState(rec, tmpl)
	j.footprint = fp
	s.jobs[rec.Id] = j
	for _, sl := range j.slots {
		s.enqueue(j, sl, now, now)
	}
	s.poke()
	return &schedv1.SubmitJobResponse{JobId: rec.Id}, nil
}

// putJob writes a job record now (fenced). Callers do not hold s.mu.
func (s *Scheduler) putJob(ctx context.Context, rec *schedv1.Job) error {
	b, err := proto.Marshal(rec)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	err = s.st.txn(ctx, []put{{key: s.st.jobKey(rec.Id), val: b}})
	if errors.Is(err, ErrNotLeader) {
		go s.fenceFailed(err)
	}
	return err
}

func (s *Scheduler) jobView(j *jobState) *schedv1.Job {
	out := proto.Clone(j.rec).(*schedv1.Job)
	out.Counts = s.counts(j)
	if out.Counts.Pending > 0 {
		out.QueuedReason = j.queuedReason
		if out.QueuedReason == "" {
			out.QueuedReason = backoffReason(j, s.clock())
		}
	}
	return out
}

// GetJob implements the API.
func (s *Scheduler) GetJob(_ context.Context, req *schedv1.GetJobRequest) (*schedv1.Job, error) {
	if err := s.checkLeader(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	j := s.jobs[req.GetId()]
	if j == nil {
		return nil, grpcError(s.jobNotFound(req.GetId()))
	}
	return s.jobView(j), nil
}

// ListJobs implements the API.
func (s *Scheduler) ListJobs(_ context.Context, req *schedv1.ListJobsRequest) (*schedv1.ListJobsResponse, error) {
	if err := s.checkLeader(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	out := &schedv1.ListJobsResponse{}
	for _, j := range s.jobs {
		if req.GetAll() || !j.terminal() {
			out.Jobs = append(out.Jobs, s.jobView(j))
		}
	}
	sort.Slice(out.Jobs, func(a, b int) bool { return out.Jobs[a].Id < out.Jobs[b].Id })
	return out, nil
}

// lockJob takes job id's operation lock (see jobState.op). The caller
// must not hold s.mu and must call unlock.
func (s *Scheduler) lockJob(id string) (j *jobState, unlock func(), err error) {
	s.mu.Lock()
	j = s.jobs[id]
	s.mu.Unlock()
	if j == nil {
		return nil, nil, s.jobNotFound(id)
	}
	j.op.Lock()
	s.mu.Lock()
	cur := s.jobs[id]
	s.mu.Unlock()
	if cur != j { // pruned (or state reloaded) while we waited
		j.op.Unlock()
		return nil, nil, s.jobNotFound(id)
	}
	return j, j.op.Unlock, nil
}

// KillJob implements the API. The killed record is written without s.mu
// (placement and heartbeats go on during the etcd round trip); kills and
// scales of one job are ordered by its operation lock, and a job that
// ended on its own during the write keeps its own end.
func (s *Scheduler) KillJob(ctx context.Context, req *schedv1.KillJobRequest) (*schedv1.Job, error) {
	if err := s.checkLeader(); err != nil {
		return nil, err
	}
	j, unlock, err := s.lockJob(req.GetId())
	if err != nil {
		return nil, grpcError(err)
	}
	defer unlock()
	s.mu.Lock()
	if j.terminal() {
		defer s.mu.Unlock()
		return s.jobView(j), nil
	}
	rec := proto.Clone(j.rec).(*schedv1.Job)
	rec.State, rec.Finished, rec.Counts = schedv1.JobState_JOB_STATE_KILLED, timestamppb.Now(), s.counts(j)
	gen := j.gen
	s.mu.Unlock()

	err = s.putJob(ctx, rec)

	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		return nil, grpcError(err)
	}
	if j.gen != gen {
		// The job ended on its own while the killed record was written:
		// memory holds the truth, write it again so etcd follows.
		b, _ := proto.Marshal(j.rec)
		s.dirty.set(s.st.jobKey(j.rec.Id), b)
		return s.jobView(j), nil
	}
	var live []*taskState
	for _, sl := range j.slots {
		if sl.cur != nil {
			live = append(live, sl.cur)
		}
	}
	s.finishJob(j, schedv1.JobState_JOB_STATE_KILLED, time.Now())
	for _, t := range live {
		s.killTask(t)
	}
	return s.jobView(j), nil
}

// ScaleJob implements the API. Like KillJob it writes without s.mu: the
// larger of the old and new quota footprints and the queue room of the
// new tasks are held while the record is written, and released if the
// write fails.
func (s *Scheduler) ScaleJob(ctx context.Context, req *schedv1.ScaleJobRequest) (*schedv1.Job, error) {
	if err := s.checkLeader(); err != nil {
		return nil, err
	}
	j, unlock, err := s.lockJob(req.GetId())
	if err != nil {
		return nil, grpcError(err)
	}
	defer unlock()
	s.mu.Lock()
	if j.batch() || j.terminal() {
		s.mu.Unlock()
		return nil, grpcError(fmt.Errorf("%w: only a running service job can be scaled", ErrWrongJobKind))
	}
	rec := proto.Clone(j.rec).(*schedv1.Job)
	svc := rec.Spec.GetService()
	svc.Min, svc.Desired, svc.Max = req.GetMin(), req.GetDesired(), req.GetMax()
	if _, err := ValidateJob(rec.Spec); err != nil {
		s.mu.Unlock()
		return nil, grpcError(err)
	}
	g := j.group
	grow := max(int(svc.Desired)-j.size(), 0)
	fp := footprintOf(rec.Spec, j.d.req)
	g.reserved = g.reserved.sub(j.footprint)
	err = s.admit(g, grow, fp)
	g.reserved = g.reserved.add(j.footprint)
	if err != nil {
		s.mu.Unlock()
		return nil, grpcError(err)
	}
	prev := j.footprint
	hold := prev.max(fp)
	g.reserved = g.reserved.sub(prev).add(hold)
	j.footprint = hold
	g.pending += grow
	s.pendingTotal += grow
	s.mu.Unlock()

	err = s.putJob(ctx, rec)

	s.mu.Lock()
	defer s.mu.Unlock()
	g.pending -= grow
	s.pendingTotal -= grow
	if err != nil {
		g.reserved = g.reserved.sub(hold).add(prev)
		j.footprint = prev
		return nil, grpcError(err)
	}
	g.reserved = g.reserved.sub(hold).add(fp)
	j.footprint = fp
	j.rec.Spec = rec.Spec
	j.gen++
	s.resize(j, time.Now())
	return s.jobView(j), nil
}

// resize activates or retires service slots to match desired. Callers hold s.mu.
func (s *Scheduler) resize(j *jobState, now time.Time) {
	want := j.size()
	for i := len(j.slots); i < want; i++ {
		j.slots = append(j.slots, &slot{index: uint32(i)})
	}
	for i, sl := range j.slots {
		switch {
		case i < want && !sl.active:
			sl.active = true
			if sl.cur == nil {
				s.enqueue(j, sl, now, now)
			}
		case i >= want && sl.active:
			sl.active = false
			s.dequeue(j, sl)
			if sl.cur != nil {
				s.killTask(sl.cur)
			}
		}
	}
	s.poke()
}

// ListTasks implements the API: live tasks from memory; with all and a job,
// every attempt from the store.
func (s *Scheduler) ListTasks(ctx context.Context, req *schedv1.ListTasksRequest) (*schedv1.ListTasksResponse, error) {
	if err := s.checkLeader(); err != nil {
		return nil, err
	}
	out := &schedv1.ListTasksResponse{}
	if req.GetAll() && req.GetJobId() != "" {
		err := s.st.getPrefix(ctx, s.st.jobTasksPrefix(req.GetJobId()), func(_ string, v []byte) error {
			t := &schedv1.Task{}
			if err := proto.Unmarshal(v, t); err != nil {
				return err
			}
			out.Tasks = append(out.Tasks, t)
			return nil
		})
		if err != nil {
			return nil, grpcError(err)
		}
		// Live state in memory is newer than what was last flushed.
		s.mu.Lock()
		for i, t := range out.Tasks {
			if live := s.tasks[t.Id]; live != nil {
				out.Tasks[i] = proto.Clone(live.rec).(*schedv1.Task)
			}
		}
		s.mu.Unlock()
	} else {
		s.mu.Lock()
		for _, t := range s.tasks {
			if req.GetJobId() == "" || t.rec.JobId == req.GetJobId() {
				out.Tasks = append(out.Tasks, proto.Clone(t.rec).(*schedv1.Task))
			}
		}
		s.mu.Unlock()
	}
	sort.Slice(out.Tasks, func(a, b int) bool { return out.Tasks[a].Id < out.Tasks[b].Id })
	return out, nil
}

// GetTask implements the API.
func (s *Scheduler) GetTask(ctx context.Context, req *schedv1.GetTaskRequest) (*schedv1.Task, error) {
	if err := s.checkLeader(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	if t := s.tasks[req.GetId()]; t != nil {
		defer s.mu.Unlock()
		return proto.Clone(t.rec).(*schedv1.Task), nil
	}
	s.mu.Unlock()
	jobID, _, ok := strings.Cut(req.GetId(), ".")
	if !ok {
		return nil, grpcError(fmt.Errorf("%w: task %q", ErrNotFound, req.GetId()))
	}
	v, err := s.st.get(ctx, s.st.taskKey(jobID, req.GetId()))
	if err != nil {
		return nil, grpcError(err)
	}
	if v == nil {
		return nil, grpcError(fmt.Errorf("%w: task %q", ErrNotFound, req.GetId()))
	}
	t := &schedv1.Task{}
	if err := proto.Unmarshal(v, t); err != nil {
		return nil, grpcError(err)
	}
	return t, nil
}

// KillTask implements the API.
func (s *Scheduler) KillTask(_ context.Context, req *schedv1.KillTaskRequest) (*schedv1.Task, error) {
	if err := s.checkLeader(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.tasks[req.GetId()]
	if t == nil {
		return nil, grpcError(fmt.Errorf("%w: no live task %q", ErrNotFound, req.GetId()))
	}
	s.killTask(t)
	return proto.Clone(t.rec).(*schedv1.Task), nil
}

// ListAgents implements the API.
func (s *Scheduler) ListAgents(context.Context, *schedv1.ListAgentsRequest) (*schedv1.ListAgentsResponse, error) {
	if err := s.checkLeader(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	out := &schedv1.ListAgentsResponse{}
	for _, a := range s.agents {
		out.Agents = append(out.Agents, a.proto(now))
	}
	sort.Slice(out.Agents, func(a, b int) bool { return out.Agents[a].Id < out.Agents[b].Id })
	return out, nil
}

// DrainAgent implements the API: no new placements on the selected agents,
// and their service tasks are replaced elsewhere.
func (s *Scheduler) DrainAgent(_ context.Context, req *schedv1.DrainAgentRequest) (*schedv1.ListAgentsResponse, error) {
	return s.setDrain(req, true)
}

// UndrainAgent implements the API.
func (s *Scheduler) UndrainAgent(_ context.Context, req *schedv1.DrainAgentRequest) (*schedv1.ListAgentsResponse, error) {
	return s.setDrain(req, false)
}

func (s *Scheduler) setDrain(req *schedv1.DrainAgentRequest, drain bool) (*schedv1.ListAgentsResponse, error) {
	if err := s.checkLeader(); err != nil {
		return nil, err
	}
	if req.GetId() == "" && len(req.GetLabels()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "id or labels: one is required")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	out := &schedv1.ListAgentsResponse{}
	for _, a := range s.agents {
		if !selects(req, a) {
			continue
		}
		a.drained = drain
		b, _ := proto.Marshal(a.record())
		s.dirty.set(s.st.agentKey(a.id), b)
		if drain {
			for _, t := range a.tasks {
				j, sl := t.job, t.slot
				if j.batch() || sl.cur != t || j.terminal() {
					continue
				}
				sl.cur = nil
				s.enqueue(j, sl, now, now) // replacement first, then the kill
				s.killTask(t)
			}
		}
		out.Agents = append(out.Agents, a.proto(now))
	}
	if len(out.Agents) == 0 {
		return nil, grpcError(fmt.Errorf("%w: no agent matches", ErrNotFound))
	}
	s.poke()
	sort.Slice(out.Agents, func(a, b int) bool { return out.Agents[a].Id < out.Agents[b].Id })
	return out, nil
}

func selects(req *schedv1.DrainAgentRequest, a *agentState) bool {
	if req.GetId() != "" {
		return a.id == req.GetId()
	}
	for k, v := range req.GetLabels() {
		if a.labels[k] != v {
			return false
		}
	}
	return true
}
