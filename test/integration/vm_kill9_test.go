//go:build vmguest

package integration

import (
	"fmt"
	"os"
	"strings"
	"testing"
)

// TestVMAgentKill9Readopts: the host lane's kill -9 re-adoption
// (TestAgentKill9ReadoptsRunningTasks) on the production kernel, with two
// long tasks instead of ten to keep the emulated guest's time down. Under
// the guest's systemd the agent's tasks are systemd scopes on cgroup v2:
// the restarted agent finds them by their unchanged pids and scopes, reads
// the exit code of the task that ended while it was away, and reaps the
// stranger and its slice.
func TestVMAgentKill9Readopts(t *testing.T) {
	begin(t)
	if b, _ := os.ReadFile("/proc/1/comm"); strings.TrimSpace(string(b)) != "systemd" {
		t.Fatalf("PID 1 is %q, not systemd: this test runs only in the VM lane's guest", b)
	}
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err != nil {
		t.Fatalf("not cgroup v2: %v", err)
	}
	agentKill9Readopts(t, 2, func(id, cg string) error {
		if !strings.HasPrefix(cg, "0::/titus.slice/") || !strings.HasSuffix(cg, "-"+id+".scope") {
			return fmt.Errorf("cgroup %q, want a systemd scope of its own in titus.slice", cg)
		}
		return nil
	})
}
