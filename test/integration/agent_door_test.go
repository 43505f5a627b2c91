package integration

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	"github.com/titus-agent/titus-agent/pkg/isolation"
	"github.com/titus-agent/titus-agent/pkg/task"
	"github.com/titus-agent/titus-agent/pkg/vpc"
)

// TestAgentRefusesHostRequestsAtTheDoor: a launch asking for a host path
// or device this host does not give is refused by LaunchTask itself, the
// field named, and nothing is made for it: no record, no IP (none taken,
// none cooling after a give-back), no netns, no disk, no hook run (so no
// metadata listener). A host path the host does give still launches.
func TestAgentRefusesHostRequestsAtTheDoor(t *testing.T) {
	begin(t)
	shared := t.TempDir()
	if err := os.WriteFile(filepath.Join(shared, "hello"), []byte("from-the-host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	m := startMetadataAgent(t, "15m", "isolation:\n  diskDir: {{DIR}}/disks\n  allowedHostPaths: ["+shared+"]\n")
	e := m.agentEnv
	const mounts, devs = "labels[" + isolation.LabelHostMounts + "]", "labels[" + isolation.LabelDevices + "]"
	refused := []struct {
		id, field string
		labels    map[string]string
	}{
		{"door-etc", mounts, map[string]string{isolation.LabelHostMounts: "/etc:/data"}},
		{"door-escape", mounts, map[string]string{isolation.LabelHostMounts: shared + "/../../etc:/data:rw"}},
		{"door-root", mounts, map[string]string{isolation.LabelHostMounts: shared + ":/ok,/:/host"}},
		{"door-dev", devs, map[string]string{isolation.LabelDevices: "/dev/sda"}},
	}
	for _, tc := range refused {
		s := e.spec(tc.id, "true")
		s.Labels, s.Resources.DiskMib = tc.labels, 32
		_, err := e.client.LaunchTask(e.ctx(), &agentv1.LaunchTaskRequest{Spec: s})
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tc.field+": ") || !strings.Contains(err.Error(), "not allowed") {
			t.Errorf("launch %s: %v, want InvalidArgument naming %s, not allowed", tc.id, err, tc.field)
		}
		if _, err := e.client.GetTask(e.ctx(), &agentv1.GetTaskRequest{Id: tc.id}); status.Code(err) != codes.NotFound {
			t.Errorf("refused %s is known to the agent: %v", tc.id, err)
		}
	}

	out, err := e.cli("vpc", "status", "-o", "json")
	var st struct {
		Provider string          `json:"provider"`
		Status   vpc.LocalStatus `json:"status"`
	}
	if err != nil || json.Unmarshal([]byte(out), &st) != nil || st.Provider != "local" {
		t.Fatalf("vpc status: %v %q", err, out)
	}
	if st.Status.Used != 0 || st.Status.Cooling != 0 {
		t.Errorf("IP pool after refused launches: %d used, %d cooling, want none ever taken", st.Status.Used, st.Status.Cooling)
	}
	log := e.agent.Proc.Log()
	for _, tc := range refused {
		for _, dir := range []string{"netns", "disks"} {
			entries, _ := os.ReadDir(filepath.Join(e.dir, dir))
			for _, en := range entries {
				if strings.Contains(en.Name(), tc.id) {
					t.Errorf("refused %s left %s/%s", tc.id, dir, en.Name())
				}
			}
		}
		if strings.Contains(log, "task="+tc.id) {
			t.Errorf("the agent acted on refused %s:\n%s", tc.id, log)
		}
	}

	ok := e.spec("door-ok", "cat", "/data/hello")
	ok.Labels, ok.Resources.DiskMib = map[string]string{isolation.LabelHostMounts: shared + ":/data"}, 32
	e.launch(ok)
	wantState(t, e.waitFinal("door-ok"), stFinished, task.ReasonCompleted, 0)
	if out, _ := e.cli("task", "logs", "door-ok"); !strings.Contains(out, "from-the-host") {
		t.Errorf("allowed host path: %q, want its file", out)
	}
	e.assertNoLeftovers()
}
