package runtime

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/containerd/errdefs"
)

// ErrTaskNotLost means ReapLost found containerd tracking the task after
// all: the caller waits on it again.
var ErrTaskNotLost = errors.New("containerd has the task")

// ReapLost is for a task containerd answered NotFound for while the agent
// still runs it (containerd restarted and did not restore it): it checks
// that containerd really has no task of that id, kills what is left of it
// outside containerd (a shim of this containerd and namespace serving that
// id, with every process under it, and runc's state of its container) and
// says precisely what it found, for the task's final message. A task
// containerd does have is ErrTaskNotLost.
func (r *Runtime) ReapLost(ctx context.Context, id string) (string, error) {
	ctx = r.ctx(ctx)
	what := "containerd has no container of that id any more"
	if c, err := r.client.LoadContainer(ctx, id); err == nil {
		if _, err := c.Task(ctx, nil); err == nil {
			return "", ErrTaskNotLost
		} else if !errdefs.IsNotFound(err) {
			return "", fmt.Errorf("load task %s: %w", id, err)
		}
		what = "containerd has its container but no task (it did not restore the task's shim when it restarted)"
	} else if !errdefs.IsNotFound(err) {
		return "", fmt.Errorf("load container %s: %w", id, err)
	}
	var shims, procs int
	var errs []error
	for _, s := range findShims("/proc", r.cfg.Address, r.cfg.Namespace) {
		if s.ID != id {
			continue
		}
		killed, err := killShim("/proc", s)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		shims++
		procs += len(killed)
		errs = append(errs, removeShimState(shimSocketDir, s), removeRuncState(ctx, runcRoot, s, killed))
	}
	var msg strings.Builder
	msg.WriteString(what)
	switch {
	case shims > 0:
		fmt.Fprintf(&msg, "; killed what was left of it outside containerd: its shim and %d processes under it", procs)
	default:
		msg.WriteString("; nothing of it was left running")
	}
	return msg.String(), errors.Join(errs...)
}
