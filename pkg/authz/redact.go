package authz

import (
	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
)

// Redacted replaces an environment value a caller may not read.
const Redacted = "<redacted>"

// RedactEnv replaces every environment value of job by Redacted, keeping
// the names: in its template and in every other template it carries (the
// previous one of a rollout, what an undo returns to). Each redacted
// environment is a new map: the maps job shared with the core's record
// are never written.
func RedactEnv(job *schedv1.Job) {
	redact(job.GetSpec().GetTask())
	redact(job.GetRollout().GetPreviousTask())
}

func redact(t *agentv1.TaskSpec) {
	if t == nil || len(t.Env) == 0 {
		return
	}
	env := make(map[string]string, len(t.Env))
	for k := range t.Env {
		env[k] = Redacted
	}
	t.Env = env
}
