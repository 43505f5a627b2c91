// Package metrics holds the Prometheus collectors of the agent and the
// scheduler and the loopback HTTP endpoint that serves them.
//
// Each binary builds its own registry (NewRegistry), creates its collectors
// with New/NewScheduler, hands the fields to the code that measures, and
// serves the registry with Serve. docs/slo.md says how to read them.
package metrics
