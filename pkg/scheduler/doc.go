// Package scheduler is the thin central scheduler: it accepts batch and
// service jobs (validated at the door, bounded queues, capacity groups),
// places their tasks on agents that keep a gRPC stream open to it, keeps
// service jobs at their desired size, retries failing tasks with backoff
// and reconciles with every agent on (re)connect.
//
// This package wires one replica from its layers:
//   - model: the domain (jobs, tasks, agents, capacity groups);
//   - core: admission, placement, task lifecycle, retries, queues and
//     reconciliation over an in-memory working set;
//   - store: etcd keys, the leader election and fenced transactions;
//   - api: the gRPC handlers, leader checks and error mapping;
//   - wire: conversions between the model and the protos.
//
// State lives in etcd (an embedded single member by default). Replicas
// elect a leader; only the leader schedules, and every write it makes is
// fenced on its election key's revision, so a deposed leader can never
// overcommit a host. The leader keeps the working set in memory and
// rebuilds it from etcd when it takes over.
package scheduler
