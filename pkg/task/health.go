package task

import (
	"encoding/json"
	"fmt"
	"time"
)

// HealthKind is how a health check probes a task.
type HealthKind string

// Health check kinds.
const (
	// HealthExec runs a command inside the task's container (its user,
	// namespaces and cgroup); exit code 0 is healthy.
	HealthExec HealthKind = "exec"
	// HealthHTTP sends GET path to the task's own IP and port, dialled from
	// inside the task's network namespace.
	HealthHTTP HealthKind = "http"
	// HealthTCP opens a TCP connection to the task's own IP and port, from
	// inside the task's network namespace.
	HealthTCP HealthKind = "tcp"
)

// HealthCheck says how and how often the agent checks a running task.
// Durations are written as Go durations ("10s") in spec files and records.
type HealthCheck struct {
	Kind HealthKind `json:"kind"`
	// Command is the exec check's argv.
	Command []string `json:"command,omitempty"`
	// Path is the http check's request path (default "/").
	Path string `json:"path,omitempty"`
	// Port is the http or tcp check's port on the task's IP.
	Port int32 `json:"port,omitempty"`
	// ExpectedStatus is the http status that counts as healthy; 0 means
	// any of 200-399.
	ExpectedStatus int32 `json:"expectedStatus,omitempty"`
	// Interval between the starts of two checks.
	Interval time.Duration `json:"-"`
	// Timeout of one check; at most Interval.
	Timeout time.Duration `json:"-"`
	// HealthyThreshold consecutive passes make the task Healthy;
	// UnhealthyThreshold consecutive failures make it Unhealthy.
	HealthyThreshold   int32 `json:"healthyThreshold"`
	UnhealthyThreshold int32 `json:"unhealthyThreshold"`
	// StartPeriod after the task starts: failures in it do not count
	// toward Unhealthy (a pass still makes the task Healthy).
	StartPeriod time.Duration `json:"-"`
}

// healthCheckJSON is HealthCheck with its durations as strings.
type healthCheckJSON struct {
	plainHealthCheck
	Interval    string `json:"interval"`
	Timeout     string `json:"timeout"`
	StartPeriod string `json:"startPeriod,omitempty"`
}

type plainHealthCheck HealthCheck

// MarshalJSON writes the durations as Go duration strings ("10s").
func (h HealthCheck) MarshalJSON() ([]byte, error) {
	out := healthCheckJSON{plainHealthCheck: plainHealthCheck(h), Interval: h.Interval.String(), Timeout: h.Timeout.String()}
	if h.StartPeriod != 0 {
		out.StartPeriod = h.StartPeriod.String()
	}
	return json.Marshal(out)
}

// UnmarshalJSON reads durations written as Go duration strings.
func (h *HealthCheck) UnmarshalJSON(b []byte) error {
	var in healthCheckJSON
	if err := json.Unmarshal(b, &in); err != nil {
		return err
	}
	*h = HealthCheck(in.plainHealthCheck)
	for _, d := range []struct {
		name string
		s    string
		dst  *time.Duration
	}{{"interval", in.Interval, &h.Interval}, {"timeout", in.Timeout, &h.Timeout}, {"startPeriod", in.StartPeriod, &h.StartPeriod}} {
		if d.s == "" {
			continue
		}
		v, err := time.ParseDuration(d.s)
		if err != nil {
			return fmt.Errorf("healthCheck.%s: want a duration like 10s: %w", d.name, err)
		}
		*d.dst = v
	}
	return nil
}

// HealthStatus is what the latest health checks say about a running task.
type HealthStatus int

// Health statuses. HealthNone: the task has no check (or never ran it).
const (
	HealthNone HealthStatus = iota
	HealthStarting
	HealthHealthy
	HealthUnhealthy
)

var healthNames = [...]string{"", "Starting", "Healthy", "Unhealthy"}

func (s HealthStatus) String() string {
	if s < 0 || int(s) >= len(healthNames) {
		return fmt.Sprintf("HealthStatus(%d)", int(s))
	}
	return healthNames[s]
}

// ParseHealthStatus is the inverse of String.
func ParseHealthStatus(v string) (HealthStatus, error) {
	for i, n := range healthNames {
		if n == v {
			return HealthStatus(i), nil
		}
	}
	return HealthNone, fmt.Errorf("unknown health status %q", v)
}

// MarshalText makes statuses readable in records.
func (s HealthStatus) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText parses a status name.
func (s *HealthStatus) UnmarshalText(b []byte) error {
	v, err := ParseHealthStatus(string(b))
	*s = v
	return err
}

// MaxHealthOutput caps the output or error kept of one check: what a
// tenant's check prints cannot grow records, events or heartbeats.
const MaxHealthOutput = 512

// Health is a task's health: its status, since when, and the latest
// check's result.
type Health struct {
	Status HealthStatus `json:"status"`
	// Since is when Status was entered.
	Since time.Time `json:"since"`
	// Checked is when the latest check ended; zero before the first.
	Checked time.Time `json:"checked,omitzero"`
	// OK and Output are the latest check's result: its output or error,
	// at most MaxHealthOutput bytes.
	OK     bool   `json:"ok,omitempty"`
	Output string `json:"output,omitempty"`
}

// TruncateOutput cuts s to MaxHealthOutput bytes on a UTF-8 boundary,
// marking the cut.
func TruncateOutput(s string) string {
	if len(s) <= MaxHealthOutput {
		return s
	}
	const mark = "…"
	cut := MaxHealthOutput - len(mark)
	for cut > 0 && s[cut]&0xC0 == 0x80 {
		cut--
	}
	return s[:cut] + mark
}
