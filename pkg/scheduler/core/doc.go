// Package core is the scheduler's working set and its rules: admission
// into bounded queues and capacity-group quotas, placement, the lifecycle
// of every task attempt (retries with backoff, replacement of lost and
// drained tasks), reconciliation with agents, and retention of ended jobs.
// It speaks package model's types; it holds no gRPC or etcd types, and
// persists through the small Store interface it defines.
//
// Locking, one lock per concern, always taken in this order:
//   - jobState.op orders the API's changes of one job (kill, scale), which
//     write the store without holding mu;
//   - Core.mu (a RWMutex) guards the working set: jobs, tasks, agents,
//     groups, queues, retention, the live-job counts and every field of
//     their states. Whatever changes it (placement, reconciliation,
//     retries, admission) takes it to write; the API's reads (Job, Jobs,
//     JobOwner, Task, Tasks, Agents, Counts) take it to read, so queries
//     never serialize on each other;
//   - Core.badMu guards only the ids of jobs whose record could not be
//     read: a leaf, taken under mu (applyStatus) or alone (badRecord, from
//     the store's loader), never holding another lock;
//   - the leadership term (stepDown, stopped) is atomics: a refused fenced
//     write steps down at once, without waiting for a placement pass;
//   - liveness (agentState.heard) is atomics written by stream readers, so
//     a busy core never mistakes its own delay for a silent agent;
//   - the store's write-behind set and each session's channel have their
//     own locks and never call back into the core.
//
// The working set is one lock on purpose, not one per map: a placement
// pass reads the queues, the job and its group's quota and every agent's
// free capacity and spread together and commits to all of them at once,
// and reconciliation moves tasks between agents and slots, so a lock per
// map would be taken all together on every such path, in an order each
// path would have to get right. What must not wait on it does not take it:
// etcd round trips (jobState.op, write-behind), session sends (buffered,
// never blocking), liveness and the term (atomics).
//
// Counters (Stats) are atomics.
package core
