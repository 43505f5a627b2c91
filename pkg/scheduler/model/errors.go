package model

import "github.com/containerd/errdefs"

// Errors callers branch on, classified in containerd's errdefs vocabulary
// so the API maps them to status codes with one mapper (pkg/apierr).
var (
	ErrInvalidJob    = errdefs.ErrInvalidArgument.WithMessage("invalid job")
	ErrUnknownGroup  = errdefs.ErrInvalidArgument.WithMessage("unknown capacity group")
	ErrWrongJobKind  = errdefs.ErrInvalidArgument.WithMessage("wrong job kind")
	ErrQueueFull     = errdefs.ErrResourceExhausted.WithMessage("queue full")
	ErrQuotaExceeded = errdefs.ErrResourceExhausted.WithMessage("capacity group quota exceeded")
	ErrTooManyJobs   = errdefs.ErrResourceExhausted.WithMessage("too many live jobs")
	ErrNotFound      = errdefs.ErrNotFound.WithMessage("not found")
	ErrRolloutState  = errdefs.ErrFailedPrecondition.WithMessage("rollout state")
	// ErrNotLeader: this replica is not (or no longer) the leader; a
	// fenced write was refused.
	ErrNotLeader = errdefs.ErrUnavailable.WithMessage("not the leader")
)
