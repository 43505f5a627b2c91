package taskrunner

import (
	"context"
	"time"

	"github.com/containerd/errdefs"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/titus-agent/titus-agent/pkg/backoff"
)

// transientFor is how long a hook keeps retrying while containerd is
// unreachable (e.g. restarting) before the launch fails.
const transientFor = 30 * time.Second

// transientBackoff paces retries against a restarting containerd (local:
// no jitter needed).
var transientBackoff = backoff.Policy{Base: 100 * time.Millisecond, Max: 2 * time.Second}

// transient reports whether err means the runtime is briefly unreachable.
func transient(err error) bool {
	return errdefs.IsUnavailable(err) || status.Code(err) == codes.Unavailable
}

// retryTransient runs fn until it succeeds, fails for another reason, or
// containerd has been unreachable for transientFor.
func retryTransient(ctx context.Context, fn func() error) error {
	deadline := time.Now().Add(transientFor)
	b := backoff.New(transientBackoff)
	for {
		err := fn()
		if err == nil || !transient(err) || time.Now().After(deadline) {
			return err
		}
		if !b.Wait(ctx) {
			return err
		}
	}
}
