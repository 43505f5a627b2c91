package core

import (
	"fmt"

	"github.com/containerd/errdefs"

	"github.com/titus-agent/titus-agent/pkg/scheduler/model"
)

func errInvalidArgument(msg string) error { return errdefs.ErrInvalidArgument.WithMessage(msg) }

// jobNotFound is the error for a job this scheduler does not hold: never
// submitted, or ended and pruned.
func (c *Core) jobNotFound(id string) error {
	return fmt.Errorf("%w: job %q: no such job (ended jobs are kept %s after they end, and at most the %d most recent; older ones are removed)",
		model.ErrNotFound, id, c.opts.FinishedJobRetention, c.opts.MaxFinishedJobs)
}
