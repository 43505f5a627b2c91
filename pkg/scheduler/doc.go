// Package scheduler is the thin central scheduler: it accepts batch and
// service jobs (validated at the door, bounded queues, capacity groups),
// places their tasks on agents that keep a gRPC stream open to it, keeps
// service jobs at their desired size, retries failing tasks with backoff
// and reconciles with every agent on (re)connect.
//
// State lives in etcd (an embedded single member by default). Replicas
// elect a leader; only the leader schedules, and every write it makes is
// fenced on its election key's revision, so a deposed leader can never
// overcommit a host. The leader keeps the working set in memory and
// rebuilds it from etcd when it takes over.
package scheduler
