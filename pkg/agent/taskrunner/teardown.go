package taskrunner

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/titus-agent/titus-agent/pkg/backoff"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// finish records the final state first (so the exit code is never lost),
// then tears down, then records that teardown completed.
func (r *Runner) finish(s task.State, reason task.Reason, msg string, code int32) {
	// The final state goes to disk before anything is torn down: if it
	// cannot be written (a full state disk), it is tried again until it
	// can, and an agent shutting down meanwhile leaves the container for
	// the next agent, which reads the same exit status from it.
	recorded := r.untilDone("record the final state", func() error {
		err := r.advance(s, reason, msg, func(rec *Record) { rec.Status.ExitCode = code })
		if errors.Is(err, task.ErrBackwardTransition) {
			return nil // already final
		}
		return err
	})
	if !recorded {
		return
	}
	r.teardown()
}

// teardown runs every stop hook in reverse stage order on a context that no
// agent shutdown cancels, again and again while any fails, until all
// succeed or the agent shuts down.
func (r *Runner) teardown() {
	if !r.untilDone("teardown", r.stopHooks) {
		return
	}
	if err := r.save(func(rec *Record) { rec.CleanedUp = true }); err != nil {
		r.log.Error("persist cleanup", "err", err)
	}
}

// untilDone calls fn until it succeeds, waiting TeardownRetry, doubling up
// to a minute, between tries. It gives up (false) when the agent shuts down:
// the next agent start takes it up from the record.
func (r *Runner) untilDone(what string, fn func() error) bool {
	b := backoff.New(backoff.Policy{Base: r.cfg.TeardownRetry, Max: time.Minute})
	for {
		err := fn()
		if err == nil {
			return true
		}
		if r.agentCtx == nil || r.agentCtx.Err() != nil {
			r.log.Error(what+" failed; the next agent start retries", "err", err)
			return false
		}
		wait := b.Next()
		r.log.Error(what+" failed; retrying", "err", err, "in", wait)
		if !backoff.Sleep(r.agentCtx, wait) {
			r.log.Error(what+" failed; the next agent start retries", "err", err)
			return false
		}
	}
}

// stopHooks runs every stop hook once, in reverse stage order.
func (r *Runner) stopHooks() error {
	ctx, cancel := context.WithTimeout(context.Background(), r.cfg.TeardownTimeout)
	defer cancel()
	r.mu.Lock()
	spec, res := r.rec.Spec, r.rec.Resources
	r.mu.Unlock()
	var errs []error
	if err := r.stopPoststart(ctx); err != nil {
		errs = append(errs, err)
	}
	for i := len(r.cfg.Stages) - 1; i >= 0; i-- {
		stage := r.cfg.Stages[i]
		for j := len(stage) - 1; j >= 0; j-- {
			h, ok := stage[j].(StopHook)
			if !ok {
				continue
			}
			if err := h.Stop(ctx, &StopRequest{Spec: &spec, Resources: &res}); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", h.Name(), err))
			}
		}
	}
	return errors.Join(errs...)
}
