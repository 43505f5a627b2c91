// Package logship ships task logs off the host: every rotated log file of a
// task, and its last one when the task ends, is uploaded to S3 under the key
// layout of Key (docs/logs.md). Upload state lives in the agent's bbolt
// store, so an agent killed in the middle of an upload resumes it and neither
// loses a file nor uploads one twice. Under disk pressure it removes the
// files already shipped first.
package logship
