package authz

import schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"

// Redacted replaces an environment value a caller may not read.
const Redacted = "<redacted>"

// RedactEnv replaces every environment value of job (in place) by
// Redacted, keeping the names. Callers pass a copy.
func RedactEnv(job *schedv1.Job) {
	env := job.GetSpec().GetTask().GetEnv()
	for k := range env {
		env[k] = Redacted
	}
}
