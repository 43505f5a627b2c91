package healthcheck

import (
	"time"

	"github.com/titus-agent/titus-agent/pkg/task"
)

// Result is one check's outcome.
type Result struct {
	OK bool
	// Output is what the check printed, or its error.
	Output string
}

// Tracker turns check results into a health status with the check's
// thresholds and start period. It is not safe for concurrent use.
type Tracker struct {
	check         task.HealthCheck
	started       time.Time
	health        task.Health
	passes, fails int32
}

// NewTracker starts tracking a task that started running at started.
// last is the health a previous agent recorded (nil: none): its status
// stands until the thresholds say otherwise.
func NewTracker(check task.HealthCheck, started time.Time, last *task.Health, now time.Time) *Tracker {
	t := &Tracker{check: check, started: started}
	if last != nil && last.Status != task.HealthNone {
		t.health = *last
	} else {
		t.health = task.Health{Status: task.HealthStarting, Since: now.UTC()}
	}
	return t
}

// Health is the current health.
func (t *Tracker) Health() task.Health { return t.health }

// Observe records one result and reports whether the status changed.
func (t *Tracker) Observe(r Result, now time.Time) (task.Health, bool) {
	now = now.UTC()
	t.health.Checked, t.health.OK, t.health.Output = now, r.OK, task.TruncateOutput(r.Output)
	next := t.health.Status
	if r.OK {
		t.passes, t.fails = min(t.passes+1, t.check.HealthyThreshold), 0
		if t.passes >= t.check.HealthyThreshold {
			next = task.HealthHealthy
		}
	} else {
		t.passes = 0
		if now.Sub(t.started) >= t.check.StartPeriod {
			t.fails = min(t.fails+1, t.check.UnhealthyThreshold)
		}
		if t.fails >= t.check.UnhealthyThreshold {
			next = task.HealthUnhealthy
		}
	}
	if next == t.health.Status {
		return t.health, false
	}
	t.health.Status, t.health.Since = next, now
	return t.health, true
}
