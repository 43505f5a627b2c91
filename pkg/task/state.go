package task

import (
	"errors"
	"fmt"
	"time"
)

// State is where a task is in its life. States only move forward.
type State int

const (
	StateUnknown State = iota
	Accepted
	Preparing
	Starting
	Running
	Killing
	Finished
	Failed
	Killed
	Lost
)

var stateNames = [...]string{"Unknown", "Accepted", "Preparing", "Starting", "Running", "Killing", "Finished", "Failed", "Killed", "Lost"}

func (s State) String() string {
	if s < 0 || int(s) >= len(stateNames) {
		return fmt.Sprintf("State(%d)", int(s))
	}
	return stateNames[s]
}

// ParseState is the inverse of String.
func ParseState(v string) (State, error) {
	for i, n := range stateNames {
		if n == v {
			return State(i), nil
		}
	}
	return StateUnknown, fmt.Errorf("unknown task state %q", v)
}

// MarshalText makes states readable in the JSON state file.
func (s State) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText parses a state name.
func (s *State) UnmarshalText(b []byte) error {
	v, err := ParseState(string(b))
	*s = v
	return err
}

// Terminal reports whether no transition can leave s.
func (s State) Terminal() bool { return s >= Finished }

// Reason codes explain a transition. Platform reasons are the agent's fault,
// the others the task's or its owner's.
type Reason string

const (
	ReasonNone               Reason = ""
	ReasonAccepted           Reason = "Accepted"
	ReasonInvalidSpec        Reason = "InvalidSpec"
	ReasonImageNotFound      Reason = "ImageNotFound"
	ReasonImagePullFailed    Reason = "ImagePullFailed"
	ReasonNetworkSetupFailed Reason = "NetworkSetupFailed"
	// ReasonNoNetworkCapacity: the host had no IP or ENI left for the
	// task (the scheduler placed it on a stale view); nothing ran, and
	// the scheduler places it again at once, not counting a failure.
	ReasonNoNetworkCapacity Reason = "NoNetworkCapacity"
	// ReasonSubnetNotInZone: none of the task's subnets is in the host's
	// zone, so it cannot have an IP there; nothing ran, and the scheduler
	// places it again at once on a host of another zone, not counting a
	// failure (it learns the subnets' zones from the agents' reports).
	ReasonSubnetNotInZone Reason = "SubnetNotInZone"
	// ReasonHostDiskFull: preparing the task failed for lack of space on
	// the host (its state directory or the task's disk: ENOSPC); nothing
	// ran, and the scheduler places it again elsewhere, not counting a
	// failure, and takes the host as unhealthy until its next heartbeat.
	ReasonHostDiskFull         Reason = "HostDiskFull"
	ReasonDiskSetupFailed      Reason = "DiskSetupFailed"
	ReasonMetadataSetupFailed  Reason = "MetadataSetupFailed"
	ReasonStartFailed          Reason = "StartFailed"
	ReasonStarted              Reason = "Started"
	ReasonReadopted            Reason = "ReadoptedAfterAgentRestart" // Running: taken up by a restarted agent
	ReasonCompleted            Reason = "Completed"
	ReasonNonZeroExit          Reason = "NonZeroExit"
	ReasonOOMKilled            Reason = "OOMKilled"
	ReasonRuntimeLimitExceeded Reason = "RuntimeLimitExceeded"
	ReasonKilledByUser         Reason = "KilledByUser"
	ReasonKilledByScheduler    Reason = "KilledByScheduler" // e.g. a task unknown to the scheduler
	ReasonAgentRestartLost     Reason = "AgentRestartLost"
	ReasonAgentRestartExited   Reason = "ExitedWhileAgentDown"
	ReasonPlatformError        Reason = "PlatformError"
	// ReasonHealthCheckFailed: the scheduler replaced a task that stayed
	// Unhealthy past its job's policy (a user failure).
	ReasonHealthCheckFailed Reason = "HealthCheckFailed"
	// ReasonSecretUnavailable: a secret of the spec could not be fetched
	// with the task's role (denied, missing, too large); nothing was left.
	ReasonSecretUnavailable Reason = "SecretUnavailable"
)

// Transition is one recorded state change.
type Transition struct {
	State   State     `json:"state"`
	Reason  Reason    `json:"reason,omitempty"`
	Message string    `json:"message,omitempty"`
	Time    time.Time `json:"time"`
	// Steps are the launch steps (hooks, runtime steps) that ended since
	// the previous transition, in the order they ended: the Starting
	// transition carries the preparing hooks, Running the container's
	// create and start, a failure what was done before it.
	Steps []Step `json:"steps,omitempty"`
}

// Step is one timed step of a launch. Steps of a stage run in parallel,
// so their durations overlap and need not add up to the launch.
type Step struct {
	// Name is the hook ("image", "network", "disk", "metadata", ...) or
	// the runtime step within one ("container.create", "task.create",
	// "task.start").
	Name  string        `json:"name"`
	Start time.Time     `json:"start"`
	Took  time.Duration `json:"took"`
	// Failed is set when the step ended in an error.
	Failed bool `json:"failed,omitempty"`
}

// End is when the step ended.
func (s Step) End() time.Time { return s.Start.Add(s.Took) }

// Status is the state of one task with its history.
type Status struct {
	State       State        `json:"state"`
	Reason      Reason       `json:"reason,omitempty"`
	Message     string       `json:"message,omitempty"`
	ExitCode    int32        `json:"exitCode"`
	Pid         uint32       `json:"pid,omitempty"`
	Transitions []Transition `json:"transitions"`
	// Health is set while a task with a health check runs (and kept after).
	Health *Health `json:"health,omitempty"`
}

// ErrBackwardTransition is returned when a transition would move a task back.
var ErrBackwardTransition = errors.New("task state may only move forward")

// Advance moves the status to next. It refuses to move backward or to leave a
// terminal state; moving to the current state again is a no-op.
func (s *Status) Advance(next State, reason Reason, msg string, now time.Time) (Transition, error) {
	if next == s.State {
		return Transition{}, nil
	}
	if next < s.State || s.State.Terminal() {
		return Transition{}, fmt.Errorf("%w: %s -> %s", ErrBackwardTransition, s.State, next)
	}
	t := Transition{State: next, Reason: reason, Message: msg, Time: now.UTC()}
	s.State, s.Reason, s.Message = next, reason, msg
	s.Transitions = append(s.Transitions, t)
	return t, nil
}
