package scheduler

import (
	"errors"
	"fmt"
	"net/mail"
	"regexp"
	"strings"
	"time"

	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// ErrInvalidJob is wrapped by every job validation error.
var ErrInvalidJob = errors.New("invalid job")

// ValidationError lists every field of a job spec that breaks a rule.
type ValidationError struct{ Fields []*task.FieldError }

func (e *ValidationError) Error() string {
	parts := make([]string, len(e.Fields))
	for i, f := range e.Fields {
		parts[i] = f.Error()
	}
	return "invalid job: " + strings.Join(parts, "; ")
}

func (e *ValidationError) Unwrap() error { return ErrInvalidJob }

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)

type jobChecker struct{ errs []*task.FieldError }

func (c *jobChecker) failf(field, format string, a ...any) {
	c.errs = append(c.errs, &task.FieldError{Field: field, Rule: fmt.Sprintf(format, a...)})
}

// placeholderTaskID stands in for the id the scheduler assigns, so the task
// spec's own validation can run at the door.
const placeholderTaskID = "validate.0.0"

// ValidateJob checks a job spec and returns the task template it implies
// (normalized, with the job's owner). Errors are *ValidationError.
func ValidateJob(spec *schedv1.JobSpec) (*task.Spec, error) {
	c := &jobChecker{}
	if spec == nil {
		c.failf("spec", "is required")
		return nil, &ValidationError{Fields: c.errs}
	}
	if len(spec.GetName()) > MaxJobNameLen || (spec.GetName() != "" && !nameRE.MatchString(spec.GetName())) {
		c.failf("name", "must match %s and be at most %d characters", nameRE, MaxJobNameLen)
	}
	if spec.GetOwnerEmail() == "" {
		c.failf("owner_email", "is required")
	} else if a, err := mail.ParseAddress(spec.GetOwnerEmail()); err != nil || a.Address != spec.GetOwnerEmail() {
		c.failf("owner_email", "must be a plain email address like team@example.com")
	}
	if spec.GetApplication() == "" {
		c.failf("application", "is required")
	} else if len(spec.GetApplication()) > MaxApplicationLen || !nameRE.MatchString(spec.GetApplication()) {
		c.failf("application", "must match %s and be at most %d characters", nameRE, MaxApplicationLen)
	}
	if g := spec.GetCapacityGroup(); g != "" && !nameRE.MatchString(g) {
		c.failf("capacity_group", "must match %s", nameRE)
	}
	if len(spec.GetLabels()) > MaxJobLabels {
		c.failf("labels", "must have at most %d entries", MaxJobLabels)
	}
	switch k := spec.GetKind().(type) {
	case *schedv1.JobSpec_Batch:
		b := k.Batch
		if b.GetSize() < 1 || b.GetSize() > MaxTasksPerJob {
			c.failf("batch.size", "must be between 1 and %d, got %d", MaxTasksPerJob, b.GetSize())
		}
		if b.GetRuntimeLimitSeconds() < 0 || b.GetRuntimeLimitSeconds() > int64(task.MaxRuntimeLimit/time.Second) {
			c.failf("batch.runtime_limit_seconds", "must be between 0 (none) and %d", int64(task.MaxRuntimeLimit/time.Second))
		}
		checkRetry(c, "batch.retry", b.GetRetry())
	case *schedv1.JobSpec_Service:
		s := k.Service
		if s.GetMax() > MaxTasksPerJob {
			c.failf("service.max", "must be at most %d, got %d", MaxTasksPerJob, s.GetMax())
		}
		if s.GetMin() > s.GetDesired() || s.GetDesired() > s.GetMax() {
			c.failf("service.desired", "must satisfy min <= desired <= max, got %d <= %d <= %d", s.GetMin(), s.GetDesired(), s.GetMax())
		}
		checkRetry(c, "service.retry", s.GetRetry())
	default:
		c.failf("kind", "one of batch or service is required")
	}
	var tmpl *task.Spec
	if spec.GetTask() == nil {
		c.failf("task", "is required")
	} else {
		tmpl = task.FromProto(spec.GetTask())
		tmpl.ID = placeholderTaskID
		if tmpl.OwnerEmail == "" {
			tmpl.OwnerEmail = spec.GetOwnerEmail()
		}
		if b := spec.GetBatch(); b != nil && b.GetRuntimeLimitSeconds() > 0 {
			tmpl.MaxRuntime = time.Duration(b.GetRuntimeLimitSeconds()) * time.Second
		}
		tmpl.Normalize()
		if err := tmpl.Validate(); err != nil {
			var ve *task.ValidationError
			if !errors.As(err, &ve) {
				c.failf("task", "%v", err)
			} else {
				for _, f := range ve.Fields {
					if f.Field == "owner_email" && spec.GetTask().GetOwnerEmail() == "" {
						continue // reported once, for the job
					}
					c.failf("task."+f.Field, "%s", f.Rule)
				}
			}
		}
	}
	if len(c.errs) > 0 {
		return nil, &ValidationError{Fields: c.errs}
	}
	tmpl.ID = ""
	return tmpl, nil
}

func checkRetry(c *jobChecker, field string, r *schedv1.RetryPolicy) {
	if r == nil {
		return
	}
	if r.GetMaxRetries() > MaxRetries {
		c.failf(field+".max_retries", "must be at most %d", MaxRetries)
	}
	maxMS := MaxRetryDelay.Milliseconds()
	if r.GetDelayMs() < 0 || r.GetDelayMs() > maxMS {
		c.failf(field+".delay_ms", "must be between 0 and %d", maxMS)
	}
	if r.GetMaxDelayMs() < 0 || r.GetMaxDelayMs() > maxMS {
		c.failf(field+".max_delay_ms", "must be between 0 and %d", maxMS)
	}
	if r.GetMaxDelayMs() > 0 && r.GetMaxDelayMs() < r.GetDelayMs() {
		c.failf(field+".max_delay_ms", "must be at least delay_ms")
	}
	if r.GetResetAfterSeconds() < 0 {
		c.failf(field+".reset_after_seconds", "must not be negative")
	}
	if _, ok := schedv1.RetryPolicy_Kind_name[int32(r.GetKind())]; !ok {
		c.failf(field+".kind", "unknown kind %d", r.GetKind())
	}
}
