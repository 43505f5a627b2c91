// Package taskrunner runs one task: a single goroutine owns the task, moves its
// state forward, and runs its lifecycle hooks — small, ordered, one per file,
// each with an idempotent Stop that runs in reverse order at teardown.
//
// Two contexts are kept apart: killing a task (Runner.Kill) tears it down;
// the agent shutting down (cancelling the context given to Run) only detaches,
// so an agent restart never kills a task.
package taskrunner
