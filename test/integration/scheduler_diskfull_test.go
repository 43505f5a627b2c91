package integration

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
	"github.com/titus-agent/titus-agent/test/testenv"
)

// TestSchedulerHostDiskFullPlacedElsewhere: a host whose disk fills
// between two heartbeats (its health check has not said so yet) takes a
// task and cannot write its network record (ENOSPC): the task ends
// HostDiskFull (nothing ran), and the scheduler places it again, on the
// other host, counting no failure or retry: a batch job allowing no retry
// finishes. The full disk is a file of a full 1 MiB tmpfs bound over the
// path the agent writes its record through, so the host's state disk
// itself keeps the free space its health check wants.
func TestSchedulerHostDiskFullPlacedElsewhere(t *testing.T) {
	begin(t)
	sched := startSchedulerProc(t)
	reg := testenv.StartRegistry(t)
	image := testenv.PushBusybox(t, reg, "busybox", "latest")
	full := startLinkedAgent(t, testenv.StartContainerd(t), reg, sched, "host-full", "us-east-1a")
	waitUntil(t, "the host registered", 30*time.Second, func() (bool, string) {
		out, _ := sched.cli("agent", "ls")
		return strings.Count(out, "connected") == 1, out
	})

	// A full 1 MiB tmpfs, one of its files bound over the local network
	// provider's temporary record (the agent writes it, then renames it).
	// One shell does it all: the test binary's threads need not share a
	// mount namespace (netns helpers), a child process has one.
	tiny := t.TempDir()
	tmp := filepath.Join(full.agent.Dir, "state", "vpc-local.json.tmp")
	t.Cleanup(func() {
		_ = exec.Command("umount", "-l", tmp).Run()
		_ = exec.Command("umount", "-l", tiny).Run()
	})
	script := `set -e
mount -t tmpfs -o size=1m titus-test-full "$1"
: > "$1/record"
dd if=/dev/zero of="$1/filler" bs=64k 2>/dev/null || true
if echo x > "$1/probe" 2>/dev/null; then echo "the tmpfs is not full"; exit 1; fi
: > "$2"
mount --bind "$1/record" "$2"`
	if out, err := exec.Command("sh", "-c", script, "sh", tiny, tmp).CombinedOutput(); err != nil {
		t.Fatalf("a full file over %s: %v %s", tmp, err, out)
	}

	job := sched.submit(fmt.Sprintf(`name: diskfull
ownerEmail: tests@example.com
application: it
batch: {size: 1}
task:
  image: %s
  command: [sh, -c, "echo done"]
  resources: {cpuMillicores: 500, memoryMib: 64}
`, image))
	tasks := func() []*schedv1.Task {
		var l schedv1.ListTasksResponse
		if err := sched.cliJSON(&l, "task", "ls", "--job", job, "-a"); err != nil {
			return nil
		}
		return l.Tasks
	}
	waitUntil(t, "the first attempt refused HostDiskFull", 60*time.Second, func() (bool, string) {
		l := tasks()
		return len(l) > 0 && l[0].GetReason() == "HostDiskFull", fmt.Sprint(l)
	})
	// The other host: the task runs there, and the job finishes.
	startLinkedAgent(t, testenv.StartContainerd(t), reg, sched, "host-ok", "us-east-1b")
	waitUntil(t, "the job finished on the other host", 60*time.Second, func() (bool, string) {
		j := sched.jobJSON(job)
		return j["state"] == "JOB_STATE_FINISHED", fmt.Sprint(j["state"], j["counts"])
	})
	var fullAttempts int
	for _, tk := range tasks() {
		switch {
		case tk.GetAgentId() == "host-full" && tk.GetReason() == "HostDiskFull":
			fullAttempts++
		case tk.GetAgentId() == "host-ok" && tk.GetState().String() == "TASK_STATE_FINISHED":
		default:
			t.Errorf("attempt %s on %s: %s %s %q", tk.GetId(), tk.GetAgentId(), tk.GetState(), tk.GetReason(), tk.GetMessage())
		}
	}
	if fullAttempts == 0 {
		t.Error("no attempt refused on the full host")
	}
	counts := fmt.Sprint(sched.jobJSON(job)["counts"])
	if strings.Contains(counts, "failed") || strings.Contains(counts, "retries") {
		t.Errorf("job counts %s: a full disk of the host is no failure of the task", counts)
	}
	full.assertNoLeftovers()
}
