package model

import (
	"strconv"
	"time"

	"github.com/titus-agent/titus-agent/pkg/task"
)

// TaskID names attempt attempt of slot index of a job.
func TaskID(jobID string, index, attempt uint32) string {
	return jobID + "." + strconv.FormatUint(uint64(index), 10) + "." + strconv.FormatUint(uint64(attempt), 10)
}

// Task is one placed attempt of a job's task slot.
type Task struct {
	ID       string
	JobID    string
	Index    uint32
	Attempt  uint32
	AgentID  string
	AZ       string
	State    task.State
	Reason   string
	Message  string
	ExitCode int32
	// Failures is the slot's consecutive failures when this attempt was placed.
	Failures uint32
	Placed   time.Time
	Started  time.Time // zero until running
	Ended    time.Time // zero until ended
	// Revision is the job revision whose template launched the task.
	Revision uint64
	// Health is as the agent last reported it (nil: no check).
	Health *task.Health
	// IP is the task's VPC IPv4 address, as its agent reported it.
	IP string
	// Targets are its registrations in its job's target groups.
	Targets []TargetRegistration
}

// TaskStatus is what an agent reports about one task.
type TaskStatus struct {
	TaskID   string
	State    task.State
	Reason   string
	Message  string
	ExitCode int32
	// Health is the task's health (nil without a check).
	Health *task.Health
	// IP is the task's VPC IPv4 address ("" until it has one).
	IP string
}
