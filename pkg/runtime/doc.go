// Package runtime is the agent's thin layer over the containerd 2.x client:
// it pulls and unpacks images, turns a ContainerSpec into an OCI spec, and
// creates, starts, waits for, kills, deletes and execs into task containers.
// Every container it makes carries the label titus.agent/managed=true, lives
// in one containerd namespace ("titus" by default) and logs through a
// containerd binary log driver (cmd/titus-logger) owned by the shim, so a running
// task keeps logging and can be re-adopted (Wait, Status) after the agent
// restarts.
package runtime
