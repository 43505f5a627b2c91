// Package schedload drives a real scheduler (embedded etcd, real gRPC on
// loopback) with many lightweight simulated agents that speak the real
// agent stream through pkg/schedlink. Tests use its Agent; the bench
// calls Run.
package schedload
