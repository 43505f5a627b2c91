// Package agent wires the titus-agent daemon: configuration, durable task
// state, the task manager that owns one runner per task and re-adopts tasks
// after a restart, and the gRPC control API on the local unix socket.
package agent
