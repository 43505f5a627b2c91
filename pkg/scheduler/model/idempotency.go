package model

import (
	"time"

	"github.com/containerd/errdefs"
)

// IdempotencyKey is what a submit's idempotency key maps to: the job the
// first call with it created. Scope and Key are hex SHA-256 digests of
// the caller's principal and of the key (one caller's keys are apart from
// every other's, and nothing a caller sends ends up in a store key).
type IdempotencyKey struct {
	Scope, Key string
	JobID      string
	// SpecDigest is a digest of the submitted spec: a retry must send the
	// same spec to get the same job.
	SpecDigest []byte
	Expires    time.Time
}

// ErrIdempotencyConflict: the caller's idempotency key already created a
// job from another spec.
var ErrIdempotencyConflict = errdefs.ErrAlreadyExists.WithMessage("idempotency key used with another spec")
