// Package store keeps the scheduler's state in etcd: the key layout
// (prefix + jobs/, tasks/<job>/, agents/, leader), the leader election,
// and transactions fenced on the leader's term, so a deposed leader's
// writes fail instead of overcommitting hosts. It also runs the embedded
// single-member etcd used when no cluster is configured. Records are
// encoded with package wire; callers deal in package model's types.
package store
