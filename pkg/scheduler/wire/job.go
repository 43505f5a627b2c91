package wire

import (
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
	"github.com/titus-agent/titus-agent/pkg/scheduler/constraint"
	"github.com/titus-agent/titus-agent/pkg/scheduler/model"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// JobSpecFromProto converts a submitted spec (nil gives the zero spec).
func JobSpecFromProto(p *schedv1.JobSpec) model.JobSpec {
	s := model.JobSpec{
		Name: p.GetName(), OwnerEmail: p.GetOwnerEmail(), Application: p.GetApplication(),
		CapacityGroup: p.GetCapacityGroup(), Labels: p.GetLabels(), Submitter: p.GetSubmitter(),
	}
	switch k := p.GetKind().(type) {
	case *schedv1.JobSpec_Batch:
		b := k.Batch
		s.Batch = &model.BatchJob{Size: b.GetSize(), RuntimeLimitSeconds: b.GetRuntimeLimitSeconds(), Retry: retryFromProto(b.GetRetry())}
	case *schedv1.JobSpec_Service:
		v := k.Service
		s.Service = &model.ServiceJob{Min: v.GetMin(), Desired: v.GetDesired(), Max: v.GetMax(), Retry: retryFromProto(v.GetRetry()),
			UnhealthyReplaceAfterSeconds: v.GetUnhealthyReplaceAfterSeconds()}
		if b := v.GetDisruptionBudget(); b != nil {
			s.Service.Budget = &model.DisruptionBudget{MaxUnavailable: b.GetMaxUnavailable()}
		}
		if u := v.GetUpdate(); u != nil {
			s.Service.Update = &model.UpdateStrategy{MaxSurge: u.GetMaxSurge(), MaxUnavailable: u.GetMaxUnavailable(),
				ProgressDeadlineSeconds: u.GetProgressDeadlineSeconds(), MaxFailures: u.GetMaxFailures()}
		}
		for _, tg := range v.GetTargetGroups() {
			s.Service.TargetGroups = append(s.Service.TargetGroups, model.TargetGroup{ARN: tg.GetArn(), Port: tg.GetPort()})
		}
	}
	if t := p.GetTask(); t != nil {
		s.Task = task.FromProto(t)
	}
	if pl := p.GetPlacement(); pl != nil {
		s.Placement = constraint.Spec{Constraints: pl.GetConstraints(), MaxPerHost: pl.GetMaxPerHost(), UniqueHost: pl.GetUniqueHost(),
			ZoneBalance: constraint.ZoneBalance(pl.GetZoneBalance()), InstanceFamilies: pl.GetInstanceFamilies()}
		for _, pr := range pl.GetPreferences() {
			s.Placement.Preferences = append(s.Placement.Preferences, constraint.PreferenceSpec{Constraint: pr.GetConstraint(), Weight: pr.GetWeight()})
		}
	}
	return s
}

// PlacementToProto converts a job's placement (nil when it asks nothing).
func PlacementToProto(s constraint.Spec) *schedv1.Placement {
	if s.Empty() {
		return nil
	}
	p := &schedv1.Placement{Constraints: s.Constraints, MaxPerHost: s.MaxPerHost, UniqueHost: s.UniqueHost,
		ZoneBalance: schedv1.ZoneBalance(s.ZoneBalance), InstanceFamilies: s.InstanceFamilies}
	for _, pr := range s.Preferences {
		p.Preferences = append(p.Preferences, &schedv1.Preference{Constraint: pr.Constraint, Weight: pr.Weight})
	}
	return p
}

// JobSpecToProto is the inverse of JobSpecFromProto.
func JobSpecToProto(s model.JobSpec) *schedv1.JobSpec {
	p := &schedv1.JobSpec{
		Name: s.Name, OwnerEmail: s.OwnerEmail, Application: s.Application,
		CapacityGroup: s.CapacityGroup, Labels: s.Labels, Submitter: s.Submitter,
	}
	switch {
	case s.Batch != nil:
		p.Kind = &schedv1.JobSpec_Batch{Batch: &schedv1.BatchJob{Size: s.Batch.Size, RuntimeLimitSeconds: s.Batch.RuntimeLimitSeconds, Retry: retryToProto(s.Batch.Retry)}}
	case s.Service != nil:
		v := s.Service
		sp := &schedv1.ServiceJob{Min: v.Min, Desired: v.Desired, Max: v.Max, Retry: retryToProto(v.Retry),
			UnhealthyReplaceAfterSeconds: v.UnhealthyReplaceAfterSeconds}
		if b := v.Budget; b != nil {
			sp.DisruptionBudget = &schedv1.DisruptionBudget{MaxUnavailable: b.MaxUnavailable}
		}
		if u := v.Update; u != nil {
			sp.Update = &schedv1.UpdateStrategy{MaxSurge: u.MaxSurge, MaxUnavailable: u.MaxUnavailable,
				ProgressDeadlineSeconds: u.ProgressDeadlineSeconds, MaxFailures: u.MaxFailures}
		}
		for _, tg := range v.TargetGroups {
			sp.TargetGroups = append(sp.TargetGroups, &schedv1.TargetGroup{Arn: tg.ARN, Port: tg.Port})
		}
		p.Kind = &schedv1.JobSpec_Service{Service: sp}
	}
	if s.Task != nil {
		p.Task = TaskSpecToProto(s.Task)
	}
	p.Placement = PlacementToProto(s.Placement)
	return p
}

// TaskSpecToProto converts a task spec as submitted: parts left out stay
// out (task.ToProto always fills resources and network).
func TaskSpecToProto(s *task.Spec) *agentv1.TaskSpec {
	p := task.ToProto(s)
	if s.Resources == (task.Resources{}) {
		p.Resources = nil
	}
	if len(s.Network.SecurityGroupIDs) == 0 && len(s.Network.SubnetIDs) == 0 && !s.Network.IPv6 {
		p.Network = nil
	}
	return p
}

func retryFromProto(p *schedv1.RetryPolicy) *model.RetryPolicy {
	if p == nil {
		return nil
	}
	return &model.RetryPolicy{Kind: model.RetryKind(p.GetKind()), MaxRetries: p.GetMaxRetries(), DelayMs: p.GetDelayMs(),
		MaxDelayMs: p.GetMaxDelayMs(), ResetAfterSeconds: p.GetResetAfterSeconds()}
}

func retryToProto(r *model.RetryPolicy) *schedv1.RetryPolicy {
	if r == nil {
		return nil
	}
	return &schedv1.RetryPolicy{Kind: schedv1.RetryPolicy_Kind(r.Kind), MaxRetries: r.MaxRetries, DelayMs: r.DelayMs,
		MaxDelayMs: r.MaxDelayMs, ResetAfterSeconds: r.ResetAfterSeconds}
}

// JobFromProto converts a job record.
func JobFromProto(p *schedv1.Job) *model.Job {
	c := p.GetCounts()
	return &model.Job{
		ID: p.GetId(), Spec: JobSpecFromProto(p.GetSpec()), State: model.JobState(p.GetState()),
		Created: timeFromProto(p.GetCreated()), Finished: timeFromProto(p.GetFinished()),
		Counts: model.JobCounts{Pending: c.GetPending(), Launched: c.GetLaunched(), Running: c.GetRunning(), Finished: c.GetFinished(),
			Failed: c.GetFailed(), Killed: c.GetKilled(), Lost: c.GetLost(), Retries: c.GetRetries()},
		QueuedReason: p.GetQueuedReason(), Revision: p.GetRevision(), Rollout: rolloutFromProto(p.GetRollout()),
	}
}

func rolloutFromProto(p *schedv1.Rollout) *model.Rollout {
	if p == nil {
		return nil
	}
	r := &model.Rollout{State: model.RolloutState(p.GetState()), From: p.GetFromRevision(), To: p.GetToRevision(), Reason: p.GetReason(),
		Started: timeFromProto(p.GetStarted()), Ended: timeFromProto(p.GetEnded()),
		Updated: p.GetUpdated(), Old: p.GetOld(), Unavailable: p.GetUnavailable(),
		Failures: p.GetFailures(), LastFailure: p.GetLastFailure(), ProgressAt: timeFromProto(p.GetProgressAt()), ProgressUpdated: p.GetProgressUpdated(),
		FailedTasks: p.GetFailedTasks(), FailuresSince: timeFromProto(p.GetFailuresSince())}
	if t := p.GetPreviousTask(); t != nil {
		r.Previous = task.FromProto(t)
	}
	if l := p.GetPreviousTargetGroups(); l != nil {
		r.PreviousTargetGroupsKnown = true
		for _, tg := range l.GetGroups() {
			r.PreviousTargetGroups = append(r.PreviousTargetGroups, model.TargetGroup{ARN: tg.GetArn(), Port: tg.GetPort()})
		}
	}
	return r
}

func rolloutToProto(r *model.Rollout) *schedv1.Rollout {
	if r == nil {
		return nil
	}
	p := &schedv1.Rollout{State: schedv1.Rollout_State(r.State), FromRevision: r.From, ToRevision: r.To, Reason: r.Reason,
		Started: timeToProto(r.Started), Ended: timeToProto(r.Ended), Updated: r.Updated, Old: r.Old, Unavailable: r.Unavailable,
		Failures: r.Failures, LastFailure: r.LastFailure, ProgressAt: timeToProto(r.ProgressAt), ProgressUpdated: r.ProgressUpdated,
		FailedTasks: r.FailedTasks, FailuresSince: timeToProto(r.FailuresSince)}
	if r.Previous != nil {
		p.PreviousTask = TaskSpecToProto(r.Previous)
	}
	if r.PreviousTargetGroupsKnown {
		l := &schedv1.TargetGroupList{}
		for _, tg := range r.PreviousTargetGroups {
			l.Groups = append(l.Groups, &schedv1.TargetGroup{Arn: tg.ARN, Port: tg.Port})
		}
		p.PreviousTargetGroups = l
	}
	return p
}

// JobToProto converts a job.
func JobToProto(j *model.Job) *schedv1.Job {
	c := j.Counts
	return &schedv1.Job{
		Id: j.ID, Spec: JobSpecToProto(j.Spec), State: schedv1.JobState(j.State),
		Created: timeToProto(j.Created), Finished: timeToProto(j.Finished),
		Counts: &schedv1.JobCounts{Pending: c.Pending, Launched: c.Launched, Running: c.Running, Finished: c.Finished,
			Failed: c.Failed, Killed: c.Killed, Lost: c.Lost, Retries: c.Retries},
		QueuedReason: j.QueuedReason, Revision: j.Revision, Rollout: rolloutToProto(j.Rollout),
	}
}

func timeFromProto(t *timestamppb.Timestamp) time.Time {
	if t == nil {
		return time.Time{}
	}
	return t.AsTime()
}

func timeToProto(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}
