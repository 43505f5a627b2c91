package wire

import (
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// MaxLaunchBytes is the most a Launch message carries, encoded. It is
// well below every agent's receive limit (4 MiB for agents that predate
// schedlink.MaxMessageSize, 16 MiB since), so no launch batch, however
// large, ends an agent's session.
const MaxLaunchBytes = 2 << 20

// envelope is what a SchedulerMessage adds around its Launch: the oneof
// field's tag and length (at most 1 + 5 bytes).
const envelope = 8

// LaunchBatches converts specs into Launch messages in order, splitting
// them so that each SchedulerMessage carrying one encodes to at most limit
// bytes. A spec too large for limit on its own travels alone.
func LaunchBatches(specs []*task.Spec, limit int) []*schedv1.Launch {
	var out []*schedv1.Launch
	var cur *schedv1.Launch
	size := envelope
	for _, s := range specs {
		p := task.ToProto(s)
		n := entrySize(p)
		if cur != nil && size+n > limit {
			cur = nil
		}
		if cur == nil {
			cur = &schedv1.Launch{}
			out = append(out, cur)
			size = envelope
		}
		cur.Tasks = append(cur.Tasks, p)
		size += n
	}
	return out
}

// entrySize is what one spec adds to a Launch: field 1's tag, its length and the spec.
func entrySize(p *agentv1.TaskSpec) int {
	n := proto.Size(p)
	return protowire.SizeTag(1) + protowire.SizeBytes(n)
}
