package core

import (
	"fmt"

	"github.com/containerd/errdefs"

	"github.com/titus-agent/titus-agent/pkg/scheduler/model"
)

func errInvalidArgument(msg string) error { return errdefs.ErrInvalidArgument.WithMessage(msg) }

// JobNotFound is the error for a job this scheduler does not hold: never
// submitted, or ended and pruned. The API answers it, word for word, to a
// caller who may not read a job that exists.
func (c *Core) JobNotFound(id string) error { return c.jobNotFound(id) }

// TaskNotFound is the error for a task attempt that does not exist; the
// API answers it to a caller who may not read a task that exists.
func TaskNotFound(id string) error { return fmt.Errorf("%w: task %q", model.ErrNotFound, id) }

func (c *Core) jobNotFound(id string) error {
	return fmt.Errorf("%w: job %q: no such job (ended jobs are kept %s after they end, and at most the %d most recent; older ones are removed)",
		model.ErrNotFound, id, c.opts.FinishedJobRetention, c.opts.MaxFinishedJobs)
}
