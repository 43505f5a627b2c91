package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/titus-agent/titus-agent/pkg/isolation"
	"github.com/titus-agent/titus-agent/pkg/task"
	"github.com/titus-agent/titus-agent/pkg/vpc"
)

// TestAgentHostPathSymlinkAttack: task A, given a shared allowed directory
// read-write, plants a symlink to the host's root there; task B asks to
// mount it. B is refused before it runs, with an error that says why, and
// leaves nothing behind (no address, disk, veth or container).
func TestAgentHostPathSymlinkAttack(t *testing.T) {
	begin(t)
	dir, err := os.MkdirTemp("", "titus-shared-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	shared := filepath.Join(dir, "shared")
	if err := os.MkdirAll(shared, 0o777); err != nil {
		t.Fatal(err)
	}
	ln := newLocalNet(t)
	e := newAgentEnvConfig(t, ln.config+"isolation:\n  diskDir: {{DIR}}/disks\n  allowedHostPaths: [\""+shared+":rw\"]\n")

	planter := e.spec("planter", "sh", "-c", "ln -s / /shared/x && ln -s /etc /shared/etc && mkdir /shared/real && echo ok")
	planter.Labels = map[string]string{isolation.LabelHostMounts: shared + ":/shared:rw"}
	e.launch(planter)
	wantState(t, e.waitFinal("planter"), stFinished, task.ReasonCompleted, 0)
	if target, err := os.Readlink(filepath.Join(shared, "x")); err != nil || target != "/" {
		t.Fatalf("the planted link: %q %v", target, err)
	}

	for id, src := range map[string]string{"thief": shared + "/x", "thief-etc": shared + "/etc", "thief-deep": shared + "/x/etc"} {
		s := e.spec(id, "sh", "-c", "cat /host/etc/shadow /host/shadow; sleep 100")
		s.Labels = map[string]string{isolation.LabelHostMounts: src + ":/host"}
		s.Resources.DiskMib = 16
		e.launch(s)
	}
	honest := e.spec("honest", "sh", "-c", "test -d /real && echo mounted")
	honest.Labels = map[string]string{isolation.LabelHostMounts: shared + "/real:/real"}
	e.launch(honest)
	wantState(t, e.waitFinal("honest"), stFinished, task.ReasonCompleted, 0)
	for _, id := range []string{"thief", "thief-etc", "thief-deep"} {
		tk := e.waitFinal(id)
		if tk.GetState() != stFailed || tk.GetReason() != string(task.ReasonInvalidSpec) || !strings.Contains(tk.GetMessage(), "not allowed") {
			t.Errorf("%s = %s/%s (%s), want Failed/InvalidSpec, not allowed", id, tk.GetState(), tk.GetReason(), tk.GetMessage())
		}
		if out, _ := e.cli("task", "logs", id); strings.Contains(out, "root:") {
			t.Errorf("%s read the host's shadow file: %q", id, out)
		}
		if _, err := netlink.LinkByName(vpc.HostVeth(id)); err == nil {
			t.Errorf("%s left its veth", id)
		}
		if _, err := os.Stat(filepath.Join(e.dir, "disks", "rootfs", id)); err == nil {
			t.Errorf("%s left its disk", id)
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		status, err := e.cli("vpc", "status")
		if err == nil && strings.Contains(status, "used: 0") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("addresses still held after the refused tasks: %v\n%s", err, status)
		}
		time.Sleep(200 * time.Millisecond)
	}
	e.assertNoLeftovers()
}
