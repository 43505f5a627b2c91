package integration

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	"github.com/titus-agent/titus-agent/pkg/task"
	"github.com/titus-agent/titus-agent/test/testenv"
)

// TestSchedulerAgentRefusesLaunchByHand: an agent attached to a scheduler
// refuses `titus-agent task run` with an error that says where to submit
// instead, and records nothing. A task launched by hand while the agent
// ran standalone, found when it attaches, is killed by the scheduler's
// reconciliation as KilledByScheduler (unknown to the scheduler), not
// blamed on its owner.
func TestSchedulerAgentRefusesLaunchByHand(t *testing.T) {
	begin(t)
	sched := startSchedulerProc(t)
	reg := testenv.StartRegistry(t)
	image := testenv.PushBusybox(t, reg, "busybox", "latest")
	e := startLinkedAgent(t, testenv.StartContainerd(t), reg, sched, "host-h", "us-east-1a")
	e.image = image
	waitUntil(t, "agent registered", 30*time.Second, func() (bool, string) {
		out, _ := sched.cli("agent", "ls")
		return strings.Contains(out, "connected"), out
	})

	out, err := e.cli("task", "run", "--owner", "me@example.com", "--id", "by-hand", image, "--", "sleep", "1000")
	if err == nil || !strings.Contains(out, "takes its tasks from a scheduler") || !strings.Contains(out, sched.addr) || !strings.Contains(out, "job submit") {
		t.Errorf("task run on a scheduled agent: %v\n%s\nwant refused, naming the scheduler and what to do", err, out)
	}
	if _, err := e.client.GetTask(e.ctx(), &agentv1.GetTaskRequest{Id: "by-hand"}); status.Code(err) != codes.NotFound {
		t.Errorf("the refused task is known to the agent: %v", err)
	}

	// Standalone for a while: a task launched by hand runs.
	cfgPath := filepath.Join(e.dir, "agent.yaml")
	attached, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	standalone := regexp.MustCompile(`(?m)^scheduler:\n(  .*\n)*`).ReplaceAll(attached, nil)
	if len(standalone) == len(attached) {
		t.Fatalf("no scheduler section in the agent's config:\n%s", attached)
	}
	e.stop()
	if err := os.WriteFile(cfgPath, standalone, 0o644); err != nil {
		t.Fatal(err)
	}
	e.start()
	s := e.spec("before-attach", "sleep", "1000")
	s.KillGracePeriodSeconds = 1
	e.launch(s)
	e.waitState("before-attach", stRunning, 30*time.Second)

	// Attached again: the scheduler does not know the task and kills it.
	e.stop()
	if err := os.WriteFile(cfgPath, attached, 0o644); err != nil {
		t.Fatal(err)
	}
	e.start()
	tk := e.waitFinal("before-attach")
	if tk.GetState() != stKilled || tk.GetReason() != string(task.ReasonKilledByScheduler) || !strings.Contains(tk.GetMessage(), "unknown to the scheduler") {
		t.Errorf("hand-launched task after attach = %s/%s (%s), want Killed/KilledByScheduler, unknown to the scheduler", tk.GetState(), tk.GetReason(), tk.GetMessage())
	}
	e.assertNoLeftovers()
}
