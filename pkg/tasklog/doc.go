// Package tasklog is the task log driver: the small program (cmd/titus-logger)
// that containerd's shim starts once per task as its binary log driver. It
// copies the task's stdout and stderr, line by line, into
// <log dir>/<task id>/stdout.log with size-based rotation, and stderr alone
// into stderr.log beside it (rotated the same way). It is owned by the
// shim, not the agent, so a task keeps logging while the agent restarts.
//
// The package imports only the standard library and lumberjack: the driver
// starts on every launch, before the task's process runs, so its start-up
// time is launch latency.
package tasklog
