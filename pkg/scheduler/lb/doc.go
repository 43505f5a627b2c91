// Package lb is the scheduler's side of AWS Elastic Load Balancing v2: it
// registers and deregisters task IPs in target groups of target type ip
// (RegisterTargets, DeregisterTargets), reads a group's targets
// (DescribeTargetHealth) and its deregistration delay
// (DescribeTargetGroupAttributes). It implements core.LoadBalancers; the
// rules (when a task joins and leaves, reconciliation) live in core.
//
// Every call is idempotent from the caller's side: registering a target
// already there and deregistering one that is not are not errors.
// Throttled and 5xx answers are retried by the SDK's standard retryer with
// exponential backoff and jitter (package backoff), paced by one shared
// client-side token bucket.
package lb
