package metadataproxy

import (
	"context"

	"github.com/titus-agent/titus-agent/pkg/task"
)

// Prefetch starts the role session of a task that is being prepared (its
// first AssumeRole under way), so that STS's round trip overlaps the
// task's network and disk set-up instead of following them: Start then
// serves that session. It returns at once. A task without a role is left
// alone. Forget (or Stop) ends a session whose task never reaches Start.
func (s *Service) Prefetch(ctx context.Context, spec *task.Spec) {
	if spec == nil || spec.IAMRoleARN == "" {
		return
	}
	s.session(spec)
}

// Forget ends the role session Prefetch started unless the task's
// listener serves it. Idempotent.
func (s *Service) Forget(taskID string) { s.ReleaseCredentials(taskID) }
