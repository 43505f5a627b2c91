// Package metadataproxy answers the EC2 instance metadata service inside
// every task's network namespace, scoped to the task: its own IP, MAC,
// security groups and identity, and credentials for its own IAM role from
// STS. The agent opens one listener in each task's netns on
// 169.254.169.254:80 (and [fd00:ec2::254]:80), so the listener that accepted
// a connection identifies the task: no NAT, nothing to spoof, and no packet
// from a task ever reaches the host's own metadata service.
package metadataproxy
