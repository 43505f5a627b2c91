package audit

import (
	"fmt"
	"time"
)

// Record is one audited call.
type Record struct {
	// ID orders records by time; it is also the page token of List.
	ID        string    `json:"id"`
	Time      time.Time `json:"time"`
	Principal string    `json:"principal"`
	// Method is the RPC's short name (SubmitJob); Action the policy's (job.submit).
	Method      string `json:"method"`
	Action      string `json:"action,omitempty"`
	Application string `json:"application,omitempty"`
	JobID       string `json:"jobId,omitempty"`
	TaskID      string `json:"taskId,omitempty"`
	AgentID     string `json:"agentId,omitempty"`
	// Code is the gRPC status code's name (OK, PermissionDenied, ...).
	Code    string `json:"code"`
	Message string `json:"message,omitempty"`
	// Peer is the caller's network address.
	Peer string `json:"peer,omitempty"`
	// Command and ExitCode are an exec session's (ExitCode -1: it was
	// ended before its command exited); Ended is when it ended, Time when
	// it began.
	Command  []string  `json:"command,omitempty"`
	ExitCode *int32    `json:"exitCode,omitempty"`
	Ended    time.Time `json:"ended,omitzero"`
	// Count > 0: the record stands for Count refusals of Principal, from
	// Time to Ended, that were beyond its limit and not stored one by one
	// (Method is AggregateMethod).
	Count int `json:"count,omitempty"`
}

// Field bounds: a record's size is bounded whatever the caller sends.
const (
	maxField   = 256
	maxMessage = 1024
)

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

func (r *Record) clip() {
	for _, f := range []*string{&r.Principal, &r.Method, &r.Action, &r.Application, &r.JobID, &r.TaskID, &r.AgentID, &r.Code, &r.Peer} {
		*f = clip(*f, maxField)
	}
	r.Message = clip(r.Message, maxMessage)
	// The command is bounded as a whole: at most maxMessage bytes of it,
	// each argument counting one more (a million empty arguments are not
	// an empty command).
	n := 0
	for i, a := range r.Command {
		if n+len(a)+1 > maxMessage {
			r.Command = append(r.Command[:i:i], clip(a, max(0, maxMessage-n-1)))
			break
		}
		n += len(a) + 1
	}
}

// idOf is a record's key suffix: its time in nanoseconds, zero-padded so
// keys sort by time, and a sequence number breaking ties.
func idOf(t time.Time, seq uint64) string {
	return fmt.Sprintf("%020d-%08x", t.UnixNano(), seq&0xffffffff)
}
