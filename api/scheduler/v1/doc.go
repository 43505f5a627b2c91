// Package schedulerv1 holds the generated code of the scheduler's gRPC API
// (api/scheduler/v1/scheduler.proto): the job, task and agent API and the
// agent stream. Regenerate with `make generate`.
package schedulerv1
