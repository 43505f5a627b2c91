package store

import (
	"context"
	"errors"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/titus-agent/titus-agent/pkg/backoff"
)

// transientError is an etcd error a later attempt may not see: the
// cluster had no leader, changed it, timed a request out (as right after a
// member was killed), or the connection to a member broke. It keeps the
// etcd error's text and classifies as errdefs.ErrUnavailable, so the gRPC
// edge answers Unavailable and clients retry, instead of Internal.
type transientError struct{ err error }

func (e *transientError) Error() string { return e.err.Error() }
func (e *transientError) Unwrap() error { return e.err }

// Unavailable makes errdefs (and so apierr) classify it as ErrUnavailable.
func (e *transientError) Unavailable() {}

// IsTransient reports whether err is an etcd error worth retrying.
func IsTransient(err error) bool {
	var t *transientError
	return errors.As(err, &t)
}

// classify marks etcd's transient errors (see transientError); others,
// and nil, pass unchanged.
func classify(err error) error {
	if err == nil || IsTransient(err) {
		return err
	}
	var ee rpctypes.EtcdError
	if errors.As(err, &ee) {
		if ee.Code() == codes.Unavailable || errors.Is(ee, rpctypes.ErrTooManyRequests) {
			return &transientError{err}
		}
		return err
	}
	if st, ok := status.FromError(err); ok && st.Code() == codes.Unavailable {
		return &transientError{err}
	}
	return err
}

// retryPolicy spaces the attempts of an idempotent etcd call that failed
// transiently: a killed member's requests time out after about a second
// and a new etcd leader is elected within a few, so five attempts over
// about three seconds ride out one member's loss.
var retryPolicy = backoff.Policy{Base: 100 * time.Millisecond, Max: 1500 * time.Millisecond, Jitter: backoff.Equal}

const retryAttempts = 5

// retry runs op, an idempotent etcd call (a read, or a fenced write of
// whole records with no create-only condition, whose repeat after an
// ambiguous timeout writes the same thing again), up to retryAttempts
// times while it fails transiently and ctx lives. The last error is
// returned, classified.
func retry(ctx context.Context, op func(context.Context) error) error {
	var err error
	for attempt := 0; ; attempt++ {
		err = classify(op(ctx))
		if err == nil || !IsTransient(err) || attempt+1 >= retryAttempts {
			return err
		}
		t := time.NewTimer(retryPolicy.Delay(attempt))
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
	}
}
