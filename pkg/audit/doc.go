// Package audit keeps the scheduler's audit trail: one Record per mutating
// call (who, what, which job, the result), written to etcd under
// <prefix>audit/ and to a structured log. Records are written in groups
// (one etcd transaction for the calls that end together) and the caller
// waits for its record to be durable. Retention is bounded by age and by
// count; the oldest records go first.
package audit
