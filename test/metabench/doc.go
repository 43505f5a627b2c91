// Package metabench measures the metadata proxy as a task sees it: request
// latency and rate from inside a task's network namespace. The bench
// (test/bench) calls it; it is no part of the agent binary.
package metabench
