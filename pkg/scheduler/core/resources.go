package core

import (
	"slices"
	"strings"

	"github.com/titus-agent/titus-agent/pkg/scheduler/model"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// sgKey names a task's security-group set: tasks with the same set share ENIs.
func sgKey(s *task.Spec) string {
	sgs := slices.Clone(s.Network.SecurityGroupIDs)
	slices.Sort(sgs)
	return strings.Join(slices.Compact(sgs), ",")
}

// footprintOf is what a job reserves against its group's quota: every task
// of a batch job, the max of a service job.
func footprintOf(spec *model.JobSpec, req model.Resources) model.Resources {
	if b := spec.Batch; b != nil {
		return req.Times(int64(b.Size))
	}
	var n uint32
	if spec.Service != nil {
		n = spec.Service.Max
	}
	return req.Times(int64(n))
}
