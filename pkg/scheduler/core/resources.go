package core

import (
	"slices"
	"strings"

	"github.com/titus-agent/titus-agent/pkg/scheduler/model"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// sgKey names a task's network set: its security groups (sorted,
// de-duplicated, comma-joined; none = the agent's default) and, after a
// "|", its subnets as named (order matters: the agent takes the first in
// its zone; none = the agent's default subnet). The agent gives tasks of
// one security-group set and subnet the same ENIs (network.go).
func sgKey(s *task.Spec) string {
	sgs := slices.Clone(s.Network.SecurityGroupIDs)
	slices.Sort(sgs)
	return strings.Join(slices.Compact(sgs), ",") + "|" + strings.Join(s.Network.SubnetIDs, ",")
}

// splitSGKey undoes sgKey. Ids never hold "|" or "," (task validation).
// A key without "|" (tests, older records) is security groups only.
func splitSGKey(key string) (groups string, subnets []string) {
	groups, sn, _ := strings.Cut(key, "|")
	if sn != "" {
		subnets = strings.Split(sn, ",")
	}
	return groups, subnets
}

// describeSGKey says what an sgKey asks for, for a queue reason.
func describeSGKey(key string) string {
	groups, subnets := splitSGKey(key)
	out := "security groups [" + groups + "]"
	if groups == "" {
		out = "the agent's default security groups"
	}
	if len(subnets) > 0 {
		out += " in subnets [" + strings.Join(subnets, ", ") + "]"
	}
	return out
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
