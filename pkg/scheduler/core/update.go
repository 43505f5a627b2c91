package core

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"time"

	"github.com/titus-agent/titus-agent/pkg/scheduler/model"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// RolloutAction is what RolloutJob does.
type RolloutAction int

// Rollout actions, in the wire enum's order.
const (
	RolloutUnspecified RolloutAction = iota
	RolloutPause
	RolloutResume
	RolloutUndo
)

// UpdateJob changes a running service job's task template (and its
// retry, budget and update policies): the job gets a new revision and a
// rollout to it, persisted before it starts. Identity fields (name, owner,
// application, capacity group) must be empty or unchanged; sizes are kept.
// A spec whose task template is unchanged updates the policies only.
func (c *Core) UpdateJob(ctx context.Context, id string, spec model.JobSpec) (*model.Job, error) {
	if s := spec.Service; s != nil {
		if err := c.checkTargetGroupsExist(ctx, s.TargetGroups); err != nil {
			return nil, err
		}
	}
	return c.changeJob(ctx, id, func(rec *model.Job, now time.Time) error {
		ck := &task.Checker{}
		same := func(field, got, want string) {
			if got != "" && got != want {
				ck.Failf(field, "cannot change in an update (is %q, got %q)", want, got)
			}
		}
		same("name", spec.Name, rec.Spec.Name)
		same("owner_email", spec.OwnerEmail, rec.Spec.OwnerEmail)
		same("application", spec.Application, rec.Spec.Application)
		same("capacity_group", spec.CapacityGroup, rec.Spec.CapacityGroup)
		if spec.Batch != nil {
			ck.Failf("batch", "a service job stays a service job")
		}
		if spec.Task == nil {
			ck.Failf("task", "is required")
		}
		if f := ck.Fields(); len(f) > 0 {
			return &ValidationError{Fields: f}
		}
		prevTGs := slices.Clone(rec.Spec.TargetGroups())
		if s := spec.Service; s != nil {
			v := rec.Spec.Service
			v.Retry, v.UnhealthyReplaceAfterSeconds, v.Budget, v.Update = s.Retry, s.UnhealthyReplaceAfterSeconds, s.Budget, s.Update
			v.TargetGroups = slices.Clone(s.TargetGroups)
		}
		// New target groups are a new revision: its tasks join them, the
		// old ones leave theirs as the rollout replaces them.
		changed := !reflect.DeepEqual(spec.Task, rec.Spec.Task) || !slices.Equal(prevTGs, rec.Spec.TargetGroups())
		prev := rec.Spec.Task
		rec.Spec.Task = spec.Task
		if _, err := ValidateJob(rec.Spec); err != nil {
			return err
		}
		if err := c.checkTargetGroupsConfigured(rec.Spec); err != nil {
			return err
		}
		if !changed {
			return nil
		}
		next := rec.Revision + 1
		if r := rec.Rollout; r != nil {
			next = max(next, r.From+1, r.To+1)
		}
		rec.Rollout = &model.Rollout{State: model.RolloutProgressing, From: rec.Revision, To: next, Started: now, Previous: prev,
			PreviousTargetGroups: prevTGs, PreviousTargetGroupsKnown: true}
		rec.Revision = next
		return nil
	})
}

// RolloutJob pauses, resumes or undoes a service job's rollout. An undo
// rolls the job back to the revision its latest rollout came from, as a
// new rollout.
func (c *Core) RolloutJob(ctx context.Context, id string, action RolloutAction) (*model.Job, error) {
	return c.changeJob(ctx, id, func(rec *model.Job, now time.Time) error {
		r := rec.Rollout
		if r == nil {
			return fmt.Errorf("%w: job %s has had no update to roll out", model.ErrRolloutState, id)
		}
		rc := *r
		switch action {
		case RolloutPause:
			if r.State != model.RolloutProgressing {
				return fmt.Errorf("%w: the rollout is %s, only a progressing one can be paused", model.ErrRolloutState, r.State)
			}
			rc.State = model.RolloutPaused
		case RolloutResume:
			if r.State != model.RolloutPaused {
				return fmt.Errorf("%w: the rollout is %s, only a paused one can be resumed", model.ErrRolloutState, r.State)
			}
			rc.State = model.RolloutProgressing
			rc.ProgressAt = time.Time{} // the deadline counts from the resume
			// Failures while paused were not counted: a new leader's
			// recount (recountFailures) starts here too.
			rc.FailuresSince = now
		case RolloutUndo:
			if r.Previous == nil {
				return fmt.Errorf("%w: no previous revision to go back to", model.ErrRolloutState)
			}
			cur, curTGs := rec.Spec.Task, slices.Clone(rec.Spec.TargetGroups())
			rec.Spec.Task = r.Previous
			if r.PreviousTargetGroupsKnown && rec.Spec.Service != nil {
				rec.Spec.Service.TargetGroups = slices.Clone(r.PreviousTargetGroups)
			}
			rc = model.Rollout{State: model.RolloutProgressing, From: rec.Revision, To: r.From, Started: now, Previous: cur,
				PreviousTargetGroups: curTGs, PreviousTargetGroupsKnown: true,
				Reason: fmt.Sprintf("undo of revision %d", rec.Revision)}
			rec.Revision = r.From
		default:
			return errInvalidArgument("action: one of pause, resume or undo is required")
		}
		rec.Rollout = &rc
		return nil
	})
}

// changeJob applies change to a copy of a live service job's record,
// writes it (without c.mu, ordered by the job's operation lock) and, once
// written, makes it the job's: a new revision is rolled out from there.
func (c *Core) changeJob(ctx context.Context, id string, change func(rec *model.Job, now time.Time) error) (*model.Job, error) {
	j, unlock, err := c.lockJob(id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	now := time.Now()
	c.mu.Lock()
	if j.batch() || j.terminal() {
		c.mu.Unlock()
		return nil, fmt.Errorf("%w: only a running service job can be updated", model.ErrWrongJobKind)
	}
	rec := *j.rec
	rec.Spec = rec.Spec.Clone()
	if err := change(&rec, now); err != nil {
		c.mu.Unlock()
		return nil, err
	}
	// Both revisions run during the rollout: the job holds the larger of
	// its old and new footprints from the moment the update is admitted.
	fp := footprintOf(&rec.Spec, model.TaskResources(rec.Spec.Template())).Max(j.footprint)
	settle, err := c.hold(j, 0, fp)
	c.mu.Unlock()
	if err != nil {
		return nil, err
	}

	err = c.putJob(ctx, &rec)

	c.mu.Lock()
	defer c.mu.Unlock()
	settle(err == nil)
	if err != nil {
		return nil, err
	}
	if j.terminal() {
		c.st.SaveJob(j.rec) // ended during the write: memory holds the truth
		return c.view(j), nil
	}
	revised := rec.Revision != j.rec.Revision || !reflect.DeepEqual(rec.Spec.Task, j.rec.Spec.Task)
	j.rec.Spec, j.rec.Revision, j.rec.Rollout = rec.Spec, rec.Revision, rec.Rollout
	if revised {
		c.retemplate(j)
	}
	j.gen++
	c.st.SaveJob(j.rec) // after any write-behind of an older record
	c.touched(j)
	return c.view(j), nil
}
