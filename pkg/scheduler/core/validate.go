package core

import (
	"errors"
	"maps"
	"net/mail"
	"slices"
	"strings"
	"time"

	"github.com/titus-agent/titus-agent/pkg/scheduler/constraint"
	"github.com/titus-agent/titus-agent/pkg/scheduler/model"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// Documented limits, checked at the door.
const (
	MaxTasksPerJob    = 10_000
	MaxJobNameLen     = 128
	MaxApplicationLen = 128
	MaxJobLabels      = 64
	MaxLabelKeyLen    = 128
	MaxLabelValueLen  = 1024
	MaxRetries        = 1000
	MaxRetryDelay     = time.Hour
	// MaxUnhealthyReplaceAfter bounds service.unhealthy_replace_after_seconds (a day).
	MaxUnhealthyReplaceAfter = 86400
)

// ValidationError lists every field of a job spec that breaks a rule.
type ValidationError struct{ Fields []*task.FieldError }

func (e *ValidationError) Error() string {
	parts := make([]string, len(e.Fields))
	for i, f := range e.Fields {
		parts[i] = f.Error()
	}
	return "invalid job: " + strings.Join(parts, "; ")
}

func (e *ValidationError) Unwrap() error { return model.ErrInvalidJob }

// ErrSpecRequired is the validation error of a submit without a spec.
var ErrSpecRequired error = &ValidationError{Fields: []*task.FieldError{{Field: "spec", Rule: "is required"}}}

// placeholderTaskID stands in for the id the scheduler assigns, so the task
// spec's own validation can run at the door.
const placeholderTaskID = "validate.0.0"

// ValidateJob checks a job spec and returns the task template it implies
// (normalized, with the job's owner). Errors are *ValidationError.
func ValidateJob(spec model.JobSpec) (*task.Spec, error) {
	c := &task.Checker{}
	if len(spec.Name) > MaxJobNameLen || (spec.Name != "" && !nameRE.MatchString(spec.Name)) {
		c.Failf("name", "must match %s and be at most %d characters", nameRE, MaxJobNameLen)
	}
	if spec.OwnerEmail == "" {
		c.Failf("owner_email", "is required")
	} else if a, err := mail.ParseAddress(spec.OwnerEmail); err != nil || a.Address != spec.OwnerEmail {
		c.Failf("owner_email", "must be a plain email address like team@example.com")
	}
	if spec.Application == "" {
		c.Failf("application", "is required")
	} else if len(spec.Application) > MaxApplicationLen || !nameRE.MatchString(spec.Application) {
		c.Failf("application", "must match %s and be at most %d characters", nameRE, MaxApplicationLen)
	}
	if g := spec.CapacityGroup; g != "" && !nameRE.MatchString(g) {
		c.Failf("capacity_group", "must match %s", nameRE)
	}
	if len(spec.Labels) > MaxJobLabels {
		c.Failf("labels", "must have at most %d entries", MaxJobLabels)
	}
	for _, k := range slices.Sorted(maps.Keys(spec.Labels)) {
		if k == "" || len(k) > MaxLabelKeyLen {
			c.Failf("labels", "key %.40q: must be 1 to %d bytes", k, MaxLabelKeyLen)
		}
		if v := spec.Labels[k]; len(v) > MaxLabelValueLen {
			c.Failf("labels."+clipKey(k), "value must be at most %d bytes, got %d", MaxLabelValueLen, len(v))
		}
	}
	switch {
	case spec.Batch != nil:
		b := spec.Batch
		if b.Size < 1 || b.Size > MaxTasksPerJob {
			c.Failf("batch.size", "must be between 1 and %d, got %d", MaxTasksPerJob, b.Size)
		}
		if b.RuntimeLimitSeconds < 0 || b.RuntimeLimitSeconds > int64(task.MaxRuntimeLimit/time.Second) {
			c.Failf("batch.runtime_limit_seconds", "must be between 0 (none) and %d", int64(task.MaxRuntimeLimit/time.Second))
		}
		checkRetry(c, "batch.retry", b.Retry)
	case spec.Service != nil:
		s := spec.Service
		if s.Max > MaxTasksPerJob {
			c.Failf("service.max", "must be at most %d, got %d", MaxTasksPerJob, s.Max)
		}
		if s.Min > s.Desired || s.Desired > s.Max {
			c.Failf("service.desired", "must satisfy min <= desired <= max, got %d <= %d <= %d", s.Min, s.Desired, s.Max)
		}
		checkRetry(c, "service.retry", s.Retry)
		if v := s.UnhealthyReplaceAfterSeconds; v < 0 || v > MaxUnhealthyReplaceAfter {
			c.Failf("service.unhealthy_replace_after_seconds", "must be between 0 and %d, got %d", MaxUnhealthyReplaceAfter, v)
		}
		checkDisruption(c, s)
		checkTargetGroups(c, s.TargetGroups)
	default:
		c.Failf("kind", "one of batch or service is required")
	}
	if _, err := constraint.Compile(spec.Placement); err != nil {
		var fe *constraint.FieldError
		if errors.As(err, &fe) {
			c.Failf(fe.Field, "%v", fe.Err)
		} else {
			c.Failf("placement", "%v", err)
		}
	}
	var tmpl *task.Spec
	if spec.Task == nil {
		c.Failf("task", "is required")
	} else {
		for k := range spec.Task.Labels {
			if strings.HasPrefix(k, task.LabelJobPrefix) {
				c.Failf("task.labels", "the %s prefix is reserved to the scheduler, got %.64q", task.LabelJobPrefix, k)
			}
		}
		tmpl = spec.Template()
		tmpl.ID = placeholderTaskID
		if err := tmpl.Validate(); err != nil {
			var ve *task.ValidationError
			if !errors.As(err, &ve) {
				c.Failf("task", "%v", err)
			} else {
				for _, f := range ve.Fields {
					if f.Field == "owner_email" && spec.Task.OwnerEmail == "" {
						continue // reported once, for the job
					}
					c.Failf("task."+f.Field, "%s", f.Rule)
				}
			}
		}
	}
	if fields := c.Fields(); len(fields) > 0 {
		return nil, &ValidationError{Fields: fields}
	}
	tmpl.ID = ""
	return tmpl, nil
}

// clipKey keeps an error about a long key short.
func clipKey(k string) string {
	if len(k) > 40 {
		return k[:40] + "…"
	}
	return k
}

func checkRetry(c *task.Checker, field string, r *model.RetryPolicy) {
	if r == nil {
		return
	}
	if r.MaxRetries > MaxRetries {
		c.Failf(field+".max_retries", "must be at most %d", MaxRetries)
	}
	maxMS := MaxRetryDelay.Milliseconds()
	if r.DelayMs < 0 || r.DelayMs > maxMS {
		c.Failf(field+".delay_ms", "must be between 0 and %d", maxMS)
	}
	if r.MaxDelayMs < 0 || r.MaxDelayMs > maxMS {
		c.Failf(field+".max_delay_ms", "must be between 0 and %d", maxMS)
	}
	if r.MaxDelayMs > 0 && r.MaxDelayMs < r.DelayMs {
		c.Failf(field+".max_delay_ms", "must be at least delay_ms")
	}
	if r.ResetAfterSeconds < 0 {
		c.Failf(field+".reset_after_seconds", "must not be negative")
	}
	if !r.Kind.Valid() {
		c.Failf(field+".kind", "unknown kind %d", r.Kind)
	}
}

// MaxProgressDeadline bounds a rollout's progress deadline.
const MaxProgressDeadline = 24 * time.Hour

func checkAmount(c *task.Checker, field, v string) (model.Amount, bool) {
	if v == "" {
		return model.Amount{}, false
	}
	a, err := model.ParseAmount(v)
	if err != nil {
		c.Failf(field, "%v", err)
		return model.Amount{}, false
	}
	return a, true
}

// checkDisruption checks a service job's disruption budget and update strategy.
func checkDisruption(c *task.Checker, s *model.ServiceJob) {
	if b := s.Budget; b != nil {
		if a, ok := checkAmount(c, "service.disruption_budget.max_unavailable", b.MaxUnavailable); ok && a.N == 0 {
			c.Failf("service.disruption_budget.max_unavailable", "must be at least 1 (or 1%%): a budget of 0 would block every drain")
		}
	}
	u := s.Update
	if u == nil {
		return
	}
	surge, okS := checkAmount(c, "service.update.max_surge", u.MaxSurge)
	unavail, okU := checkAmount(c, "service.update.max_unavailable", u.MaxUnavailable)
	if okS && okU && surge.N == 0 && unavail.N == 0 {
		c.Failf("service.update", "max_surge and max_unavailable cannot both be 0: the rollout could never replace a task")
	}
	if u.ProgressDeadlineSeconds < 0 || u.ProgressDeadlineSeconds > int64(MaxProgressDeadline/time.Second) {
		c.Failf("service.update.progress_deadline_seconds", "must be between 0 (default %s) and %d", model.DefaultProgressDeadline, int64(MaxProgressDeadline/time.Second))
	}
	if u.MaxFailures > MaxRetries {
		c.Failf("service.update.max_failures", "must be at most %d", MaxRetries)
	}
}
