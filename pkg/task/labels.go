package task

// Labels the scheduler sets on every task it launches, from the job it
// belongs to. A tenant cannot set them: the scheduler refuses them at
// submit and overwrites them at launch. The agent passes them to STS as
// session tags, so a role's trust policy can require them.
const (
	// LabelJobPrefix is the reserved prefix of the labels below.
	LabelJobPrefix = "titus.job/"
	// LabelApplication is the job's application.
	LabelApplication = LabelJobPrefix + "application"
	// LabelJobID is the id of the job the task belongs to.
	LabelJobID = LabelJobPrefix + "id"
	// LabelSubmitter is the principal that submitted the job, as the
	// scheduler authenticated it (absent when authentication is off).
	LabelSubmitter = LabelJobPrefix + "submitter"
)
