// Package secrets fetches a task's secrets from AWS Secrets Manager and SSM
// Parameter Store with the task's own role credentials (never the host's),
// and keeps file secrets in a tmpfs of the task's own, so that a value
// never reaches a disk, the agent's state, its logs or its events.
//
// The AWS calls are behind API (AWS is the real one); the mounts behind
// Mounter (Tmpfs is the real one).
package secrets
