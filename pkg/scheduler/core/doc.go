// Package core is the scheduler's working set and its rules: admission
// into bounded queues and capacity-group quotas, placement, the lifecycle
// of every task attempt (retries with backoff, replacement of lost and
// drained tasks), reconciliation with agents, and retention of ended jobs.
// It speaks package model's types; it holds no gRPC or etcd types, and
// persists through the small Store interface it defines.
//
// Locking, one concern each, always taken in this order:
//   - jobState.op orders the API's changes of one job (kill, scale), which
//     write the store without holding mu;
//   - Core.mu guards the working set: jobs, tasks, agents, groups, queues,
//     retention, the live-job counts and every field of their states;
//   - Core.badMu guards only the ids of jobs whose record could not be
//     read: a leaf, taken under mu (applyStatus) or alone (badRecord, from
//     the store's loader), never holding another lock;
//   - the store's write-behind set and each session's channel have their
//     own locks and never call back into the core.
//
// The working set stays under one lock on purpose: a placement pass reads
// the queues, the job and its group's quota and every agent's free
// capacity and spread together and commits to all of them at once, and
// reconciliation moves tasks between agents and slots; a lock per concern
// would be taken together on every such path. What must not wait on it
// does not take it: etcd round trips (jobState.op, write-behind), session
// sends (buffered, never blocking) and liveness (atomics).
//
// Counters (Stats) are atomics, and agentState.heard is written by stream
// readers without mu, so a busy core never mistakes its own delay for a
// silent agent.
package core
