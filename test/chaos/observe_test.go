package chaos

import (
	"testing"
	"time"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
)

// TestObserverKeepsFinalRecords: a task's final record is never replaced
// by an older live one (the live list and the history are read apart),
// and a job the scheduler pruned before its end was seen is not done.
func TestObserverKeepsFinalRecords(t *testing.T) {
	l := &load{jobs: map[string]*jobInfo{"j": {id: "j", kind: "short"}, "k": {id: "k", kind: "service"}}}
	o := newObserver(nil, l)
	o.record(&schedv1.Task{Id: "j.0.1", JobId: "j", State: agentv1.TaskState_TASK_STATE_FAILED, Reason: "NetworkSetupFailed"})
	o.record(&schedv1.Task{Id: "j.0.1", JobId: "j", State: agentv1.TaskState_TASK_STATE_RUNNING})
	if got := o.tasks["j.0.1"]; got.State != agentv1.TaskState_TASK_STATE_FAILED || got.Reason != "NetworkSetupFailed" {
		t.Fatalf("final record replaced by a live one: %v", got)
	}
	o.record(&schedv1.Task{Id: "j.0.2", JobId: "j", State: agentv1.TaskState_TASK_STATE_STARTING})
	o.record(&schedv1.Task{Id: "j.0.2", JobId: "j", State: agentv1.TaskState_TASK_STATE_FINISHED})
	if got := o.tasks["j.0.2"].State; got != agentv1.TaskState_TASK_STATE_FINISHED {
		t.Fatalf("live record not replaced by the final one: %v", got)
	}
	o.done["j"] = true
	o.pruned["k"] = time.Now()
	if done, left := o.allDone(); done || left != 1 {
		t.Fatalf("allDone = %v, %d left; want a pruned job unseen ended to stay open", done, left)
	}
}
