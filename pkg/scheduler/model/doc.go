// Package model is the scheduler's domain: jobs and their specs, task
// attempts, agents and capacity groups, as plain Go values. It knows no
// wire or storage format; package wire converts to and from the protos
// the API and the store use, at their edges. A task's own spec is the
// agent's domain type, task.Spec, shared by both binaries.
package model
