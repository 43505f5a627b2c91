// Package schedlink is the agent's side of the scheduler stream: it dials
// the scheduler, registers the host (capacity, AZ, labels and every task it
// knows, so both sides reconcile), heartbeats, applies launch and kill
// messages to the local task manager and reports every task transition.
// It reconnects with exponential backoff and jitter until its context ends.
//
// It depends on neither daemon, only on the wire protocol and pkg/task, so
// the agent uses it and so does the scheduler's load harness
// (test/schedload), whose simulated agents speak the real stream.
package schedlink
