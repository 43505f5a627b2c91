package model

import (
	"maps"
	"slices"
	"time"

	"github.com/titus-agent/titus-agent/pkg/scheduler/constraint"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// JobState is where a job is: accepted (live) or one of its ends.
type JobState int

// Job states, in the wire enum's order.
const (
	JobUnspecified JobState = iota
	JobAccepted
	JobFinished
	JobFailed
	JobKilled
)

// Terminal reports whether the job has ended.
func (s JobState) Terminal() bool { return s != JobAccepted }

// RetryKind is how a failed task is retried.
type RetryKind int32

// Retry kinds, in the wire enum's order.
const (
	RetryUnspecified RetryKind = iota // immediate
	RetryImmediate
	RetryDelayed
	RetryExponential
)

// Valid reports whether k is a known kind.
func (k RetryKind) Valid() bool { return k >= RetryUnspecified && k <= RetryExponential }

// RetryPolicy says how a job's failed tasks are retried. Durations keep
// the units of the job file so that validation sees what the user wrote.
type RetryPolicy struct {
	Kind              RetryKind
	MaxRetries        uint32
	DelayMs           int64
	MaxDelayMs        int64
	ResetAfterSeconds int64
}

// BatchJob runs Size tasks to completion.
type BatchJob struct {
	Size                uint32
	RuntimeLimitSeconds int64
	Retry               *RetryPolicy
}

// ServiceJob keeps Desired tasks running, between Min and Max.
type ServiceJob struct {
	Min, Desired, Max uint32
	Retry             *RetryPolicy
	// UnhealthyReplaceAfterSeconds: a task Unhealthy this long is replaced
	// (HealthCheckFailed, a failure of its slot); 0 = at once.
	UnhealthyReplaceAfterSeconds int64
	// Budget bounds voluntary disruptions (nil: the default, 10%).
	Budget *DisruptionBudget
	// Update is how a new revision replaces the old tasks (nil: defaults).
	Update *UpdateStrategy
	// TargetGroups each task joins once Running and healthy and leaves
	// before it is stopped. An update that changes them is a new revision.
	TargetGroups []TargetGroup
}

// JobSpec is what a user submits. Exactly one of Batch and Service is set
// in a valid spec; Task is the task template as submitted (not normalized).
type JobSpec struct {
	Name          string
	OwnerEmail    string
	Application   string
	CapacityGroup string
	Batch         *BatchJob
	Service       *ServiceJob
	Task          *task.Spec
	Labels        map[string]string
	// Placement constrains and steers where the job's tasks go.
	Placement constraint.Spec
	// Submitter is the authenticated principal that submitted the job,
	// set by the API from the caller, never from the request.
	Submitter string
}

// Clone copies s deeply enough that changing the clone's kind (a scale)
// leaves s alone.
func (s JobSpec) Clone() JobSpec {
	if s.Batch != nil {
		b := *s.Batch
		s.Batch = &b
	}
	if s.Service != nil {
		v := *s.Service
		v.TargetGroups = slices.Clone(v.TargetGroups)
		s.Service = &v
	}
	s.Labels = maps.Clone(s.Labels)
	s.Placement = s.Placement.Clone()
	return s
}

// Size is how many task slots the spec asks for now.
func (s *JobSpec) Size() int {
	if s.Batch != nil {
		return int(s.Batch.Size)
	}
	if s.Service != nil {
		return int(s.Service.Desired)
	}
	return 0
}

// Retry is the spec's retry policy (a service retries exponentially by default).
func (s *JobSpec) Retry() RetryPolicy {
	var r *RetryPolicy
	switch {
	case s.Batch != nil:
		r = s.Batch.Retry
	case s.Service != nil:
		r = s.Service.Retry
		if r == nil {
			return RetryPolicy{Kind: RetryExponential}
		}
	}
	if r == nil {
		return RetryPolicy{}
	}
	return *r
}

// Template is the task spec every task of the job is launched from:
// normalized, with the batch runtime limit and the job's owner.
func (s *JobSpec) Template() *task.Spec {
	var t task.Spec
	if s.Task != nil {
		t = *s.Task
	}
	if s.Batch != nil && s.Batch.RuntimeLimitSeconds > 0 {
		t.MaxRuntime = time.Duration(s.Batch.RuntimeLimitSeconds) * time.Second
	}
	if t.OwnerEmail == "" {
		t.OwnerEmail = s.OwnerEmail
	}
	t.Normalize()
	return &t
}

// JobCounts summarise a job's tasks.
type JobCounts struct {
	Pending, Launched, Running              uint32
	Finished, Failed, Killed, Lost, Retries uint32
}

// Job is one submitted job.
type Job struct {
	ID       string
	Spec     JobSpec
	State    JobState
	Created  time.Time
	Finished time.Time // zero while the job is live
	Counts   JobCounts
	// QueuedReason says why pending tasks are not placed (views only).
	QueuedReason string
	// Revision is the revision of Spec.Task; each update adds one (a
	// rollback returns to an earlier one).
	Revision uint64
	// Rollout is the latest rollout (nil before the first update).
	Rollout *Rollout
}

// TargetGroups are the job's target groups (none for a batch job).
func (s *JobSpec) TargetGroups() []TargetGroup {
	if s.Service == nil {
		return nil
	}
	return s.Service.TargetGroups
}

// Owner is who a job belongs to, for authorization.
type Owner struct {
	Email       string
	Application string
}

// Owner returns the job's owner.
func (j *Job) Owner() Owner { return Owner{Email: j.Spec.OwnerEmail, Application: j.Spec.Application} }
