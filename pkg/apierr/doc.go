// Package apierr is the one mapping from domain errors to gRPC status codes,
// shared by the agent's local API and the scheduler's API. Domain packages
// classify their errors with containerd's errdefs vocabulary (for example
// errdefs.ErrNotFound.WithMessage("task not found")); the gRPC edge calls
// ToGRPC. An error errdefs cannot classify is Internal.
package apierr
