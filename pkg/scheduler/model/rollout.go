package model

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/titus-agent/titus-agent/pkg/task"
)

// Amount is a count of tasks or a percent of a job's desired size, as
// written in a job file: "1" or "10%".
type Amount struct {
	N       uint32
	Percent bool
}

// ParseAmount reads "N" or "N%" (a percent at most 100).
func ParseAmount(s string) (Amount, error) {
	v, pct := strings.CutSuffix(strings.TrimSpace(s), "%")
	n, err := strconv.ParseUint(v, 10, 32)
	if err != nil {
		return Amount{}, fmt.Errorf("must be a count like 1 or a percent like 10%%, got %.32q", s)
	}
	if pct && n > 100 {
		return Amount{}, fmt.Errorf("a percent must be at most 100%%, got %d%%", n)
	}
	return Amount{N: uint32(n), Percent: pct}, nil
}

func (a Amount) String() string {
	if a.Percent {
		return strconv.FormatUint(uint64(a.N), 10) + "%"
	}
	return strconv.FormatUint(uint64(a.N), 10)
}

// Of is the amount for a job of desired tasks: a percent rounded up or down.
func (a Amount) Of(desired int, roundUp bool) int {
	if !a.Percent {
		return int(a.N)
	}
	p := desired * int(a.N)
	if roundUp {
		return (p + 99) / 100
	}
	return p / 100
}

// DisruptionBudget bounds the tasks of a service job voluntary
// disruptions may make unavailable at once.
type DisruptionBudget struct {
	// MaxUnavailable is an Amount as written ("" = DefaultBudget).
	MaxUnavailable string
}

// DefaultBudget is a service job's budget when it names none.
const DefaultBudget = "10%"

// UpdateStrategy is how a rollout replaces old tasks by new ones.
type UpdateStrategy struct {
	// MaxSurge and MaxUnavailable are Amounts as written ("": default).
	MaxSurge, MaxUnavailable string
	ProgressDeadlineSeconds  int64
	MaxFailures              uint32
}

// Rollout defaults.
const (
	DefaultProgressDeadline = 300 * time.Second
	DefaultMaxFailures      = 3
)

// BudgetOf is how many of desired tasks voluntary disruptions may take away
// at once: at least 1.
func (s *ServiceJob) BudgetOf(desired int) int {
	v := DefaultBudget
	if s.Budget != nil && s.Budget.MaxUnavailable != "" {
		v = s.Budget.MaxUnavailable
	}
	a, err := ParseAmount(v)
	if err != nil {
		return 1
	}
	return max(a.Of(desired, false), 1)
}

// Strategy is the update strategy with defaults filled for desired tasks:
// how many new tasks may run above desired, how many old ones may be
// stopped before their replacement is available, the deadline and the
// failures that roll back.
func (s *ServiceJob) Strategy(desired int) (surge, unavailable int, deadline time.Duration, failures int) {
	u := &UpdateStrategy{}
	if s.Update != nil {
		u = s.Update
	}
	unavailable = s.BudgetOf(desired)
	if u.MaxUnavailable != "" {
		if a, err := ParseAmount(u.MaxUnavailable); err == nil {
			unavailable = a.Of(desired, false)
		}
	}
	switch {
	case u.MaxSurge != "":
		if a, err := ParseAmount(u.MaxSurge); err == nil {
			surge = a.Of(desired, true)
		}
	case u.MaxUnavailable == "":
		surge = 1
	}
	if surge == 0 && unavailable == 0 {
		unavailable = 1 // refused at the door; never stall
	}
	deadline = time.Duration(u.ProgressDeadlineSeconds) * time.Second
	if deadline <= 0 {
		deadline = DefaultProgressDeadline
	}
	failures = int(u.MaxFailures)
	if failures <= 0 {
		failures = DefaultMaxFailures
	}
	return surge, unavailable, deadline, failures
}

// RolloutState is where a rollout is.
type RolloutState int

// Rollout states, in the wire enum's order.
const (
	RolloutNone RolloutState = iota
	RolloutProgressing
	RolloutPaused
	RolloutComplete
	RolloutRolledBack
)

var rolloutNames = [...]string{"None", "Progressing", "Paused", "Complete", "RolledBack"}

func (s RolloutState) String() string {
	if s < 0 || int(s) >= len(rolloutNames) {
		return fmt.Sprintf("RolloutState(%d)", int(s))
	}
	return rolloutNames[s]
}

// Rollout is a service job's move from one revision to another. It lives
// in the job's record, so a new leader continues it.
type Rollout struct {
	State    RolloutState
	From, To uint64
	// Reason says why it rolled back (or was undone).
	Reason         string
	Started, Ended time.Time
	// Previous is the template of revision From (as submitted).
	Previous *task.Spec
	// PreviousTargetGroups are revision From's target groups;
	// PreviousTargetGroupsKnown is false in records written before an
	// update could change them (the job's own groups then).
	PreviousTargetGroups      []TargetGroup
	PreviousTargetGroupsKnown bool
	// Failures counts consecutive failures of tasks of revision To, the
	// last described by LastFailure; ProgressAt is when the count of its
	// available tasks last grew (to ProgressUpdated). Kept in the record so
	// a new leader goes on from there (the automatic rollback's clock and
	// count survive a failover).
	Failures        uint32
	LastFailure     string
	ProgressAt      time.Time
	ProgressUpdated uint32
	// FailedTasks are the tasks counted in Failures (a task is counted
	// once, whichever leader sees it end); FailuresSince is when counting
	// began: the rollout's start, or when a new-revision task last served.
	// A new leader also counts the failed tasks of revision To whose
	// records ended since then (see Core.recountFailures).
	FailedTasks   []string
	FailuresSince time.Time
	// Views only: available tasks of the job's revision, live tasks of
	// another, and desired minus available.
	Updated, Old, Unavailable uint32
}
