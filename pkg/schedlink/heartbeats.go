package schedlink

import (
	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// fullEvery: with changes-only heartbeats, every fullEvery-th heartbeat of
// a session still lists every task, so that whatever the scheduler may
// have missed is repaired within a bounded time at a bounded cost.
const fullEvery = 60

// heartbeats decides what one session's heartbeats list. Registration
// lists every task the agent knows; then, if the scheduler said it takes
// them (Registered.changes_only), a heartbeat lists only the tasks whose
// status changed since the previous one, and every task again when the
// scheduler asks (SendAllTasks) and every fullEvery-th time. A heartbeat
// listing every task of a host costs both sides of the stream CPU in
// proportion to the tasks the agent keeps, finished ones included, while
// most heartbeats have nothing new to say: the scheduler learns of
// transitions from the updates sent as they happen, and a heartbeat
// repeats what changed in case one was missed.
type heartbeats struct {
	changesOnly bool
	// sent is what the session last told of each task, with the round
	// it was last seen in (to forget tasks the agent no longer lists).
	sent    map[string]sentStatus
	round   uint32
	count   int
	wantAll chan struct{}
	// ver is the Tasks version (verKnown: it has one) read before the
	// last List, and free the capacity left by the tasks it listed.
	ver      uint64
	verKnown bool
	free     Capacity
}

// sentStatus is what a heartbeat says of a task that the scheduler acts on.
type sentStatus struct {
	state      task.State
	reason     task.Reason
	message    string
	exit       int32
	ip         string
	health     task.HealthStatus
	healthOK   bool
	healthText string
	hasHealth  bool
	round      uint32
}

func newHeartbeats() *heartbeats {
	return &heartbeats{sent: map[string]sentStatus{}, wantAll: make(chan struct{}, 1)}
}

func statusKey(v *task.View) sentStatus {
	s := sentStatus{state: v.Status.State, reason: v.Status.Reason, message: v.Status.Message, exit: v.Status.ExitCode, ip: viewIP(v)}
	if h := v.Status.Health; h != nil {
		s.hasHealth, s.health, s.healthOK, s.healthText = true, h.Status, h.OK, h.Output
	}
	return s
}

// requestAll makes the next heartbeat list every task, and sends it now.
func (h *heartbeats) requestAll() {
	select {
	case h.wantAll <- struct{}{}:
	default:
	}
}

// quiet reports whether the next heartbeat has nothing to list: changes
// only, none asked for all, and the tasks' version unchanged.
func (h *heartbeats) quiet(ver uint64, known, all bool) bool {
	if !h.changesOnly || all || !known || !h.verKnown || ver != h.ver || (h.count+1)%fullEvery == 0 {
		return false
	}
	h.count++
	return true
}

// all lists every task and remembers what it said.
func (h *heartbeats) all(views []task.View) []*schedv1.TaskStatus {
	h.round++
	clear(h.sent)
	out := make([]*schedv1.TaskStatus, 0, len(views))
	for i := range views {
		v := &views[i]
		k := statusKey(v)
		k.round = h.round
		h.sent[v.Spec.ID] = k
		out = append(out, statusOf(v))
	}
	return out
}

// next is what the next heartbeat lists (every task when all is set),
// and whether only changes.
func (h *heartbeats) next(views []task.View, all bool) ([]*schedv1.TaskStatus, bool) {
	h.count++
	if !h.changesOnly || all || h.count%fullEvery == 0 {
		return h.all(views), false
	}
	h.round++
	var out []*schedv1.TaskStatus
	for i := range views {
		v := &views[i]
		k := statusKey(v)
		k.round = h.round
		prev, ok := h.sent[v.Spec.ID]
		h.sent[v.Spec.ID] = k
		if prev.round = k.round; ok && prev == k {
			continue
		}
		out = append(out, statusOf(v))
	}
	if len(h.sent) > len(views) {
		for id, s := range h.sent {
			if s.round != h.round {
				delete(h.sent, id)
			}
		}
	}
	return out, true
}
