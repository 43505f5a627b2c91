// Package task defines what a task is to the agent: its spec and the rules
// that validate it, its forward-only state machine with reason codes, and the
// conversions to and from the wire API.
package task
