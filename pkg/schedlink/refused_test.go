package schedlink

import (
	"errors"
	"fmt"
	"io/fs"
	"syscall"
	"testing"

	"github.com/titus-agent/titus-agent/pkg/task"
)

// TestRefusedLaunchReason: a launch the agent refuses because its state
// disk is full (ENOSPC anywhere in the chain) is HostDiskFull, which the
// scheduler places elsewhere without a failure; a bad spec stays the
// task's fault, anything else the platform's.
func TestRefusedLaunchReason(t *testing.T) {
	full := &fs.PathError{Op: "write", Path: "/state/tasks.db", Err: syscall.ENOSPC}
	tests := []struct {
		err  error
		want task.Reason
	}{
		{fmt.Errorf("record task: agent state disk full: %w", full), task.ReasonHostDiskFull},
		{fmt.Errorf("%w: no image", task.ErrInvalidSpec), task.ReasonInvalidSpec},
		{errors.New("containerd: unavailable"), task.ReasonPlatformError},
	}
	for _, tt := range tests {
		if got := refusedLaunch(tt.err); got != tt.want {
			t.Errorf("refusedLaunch(%v) = %s, want %s", tt.err, got, tt.want)
		}
	}
}
