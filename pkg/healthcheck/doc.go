// Package healthcheck runs tasks' health checks: http and tcp probes that
// dial the task's own IP from inside its network namespace, exec probes
// that run inside its container, and the thresholds that turn results
// into a health status. The agent wires it into a task's life through
// the task runner's health hook.
package healthcheck
