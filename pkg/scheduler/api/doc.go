// Package api is the scheduler's gRPC service: thin handlers over
// package core. Each handler checks that this replica leads (a standby
// answers Unavailable with the leader's address), converts the request to
// package model's types (package wire), calls the core, and maps the
// core's errors to status codes with the shared mapper (pkg/apierr).
//
// Authorization plugs in here: an interceptor on the gRPC server (built in
// package scheduler) puts the caller's identity in the context, and the
// handlers that act on one job check it against the job's owner
// (Core.JobOwner) before they call the core.
package api
