package taskrunner

import (
	"context"
	"time"

	"github.com/containerd/errdefs"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// transientFor is how long a hook keeps retrying while containerd is
// unreachable (e.g. restarting) before the launch fails.
const transientFor = 30 * time.Second

// transient reports whether err means the runtime is briefly unreachable.
func transient(err error) bool {
	return errdefs.IsUnavailable(err) || status.Code(err) == codes.Unavailable
}

// retryTransient runs fn until it succeeds, fails for another reason, or
// containerd has been unreachable for transientFor.
func retryTransient(ctx context.Context, fn func() error) error {
	deadline := time.Now().Add(transientFor)
	wait := 100 * time.Millisecond
	for {
		err := fn()
		if err == nil || !transient(err) || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
		wait = min(wait*2, 2*time.Second)
	}
}
