package integration

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	"github.com/titus-agent/titus-agent/pkg/isolation"
)

// TestAgentRequireUserNamespace (attack): user namespaces are the host's
// choice, not the tenant's. On a host with requireUserNamespace: force, a
// task that asks for none runs in its own unprivileged range anyway (its
// root is not the host's: uid_map is not "0 0 ..."), recorded with the
// label. With refuse, such a task is refused at the door naming the label,
// and nothing of it is recorded.
func TestAgentRequireUserNamespace(t *testing.T) {
	begin(t)
	for _, mode := range []string{"force", "refuse"} {
		t.Run(mode, func(t *testing.T) {
			parent := userNSDir(t)
			e := newAgentEnvConfig(t, "isolation:\n  diskDir: "+filepath.Join(parent, "disks")+"\n  diskMiB: {default: 32}\n  requireUserNamespace: "+mode+"\n")
			s := e.spec("no-userns", "sleep", "1000")
			if mode == "refuse" {
				_, err := e.client.LaunchTask(e.ctx(), &agentv1.LaunchTaskRequest{Spec: s})
				if err == nil || !strings.Contains(err.Error(), "InvalidArgument") || !strings.Contains(err.Error(), isolation.LabelUserNS) {
					t.Errorf("a task without a user namespace on a refuse host: %v, want InvalidArgument naming the label", err)
				}
				if _, err := e.client.GetTask(e.ctx(), &agentv1.GetTaskRequest{Id: "no-userns"}); err == nil {
					t.Errorf("the refused task was recorded")
				}
				e.assertNoLeftovers()
				return
			}
			e.launch(s)
			tk := e.waitState("no-userns", stRunning, 30*time.Second)
			if m := uidMap(t, e.containerPid("no-userns")); strings.HasPrefix(m, "0 0 ") || m == "" {
				t.Errorf("uid map %q: the task runs as the host's root, want its own range", m)
			}
			if tk.GetSpec().GetLabels()[isolation.LabelUserNS] != "true" {
				t.Errorf("recorded labels %v, want the user namespace the host forced", tk.GetSpec().GetLabels())
			}
			_, _ = e.client.KillTask(e.ctx(), &agentv1.KillTaskRequest{Id: "no-userns", GracePeriodSeconds: 1})
			e.waitFinal("no-userns")
			e.assertNoLeftovers()
		})
	}
}
