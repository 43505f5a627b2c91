package agent

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/titus-agent/titus-agent/pkg/agent/taskrunner"
	"github.com/titus-agent/titus-agent/pkg/isolation"
	"github.com/titus-agent/titus-agent/pkg/task"
)

func TestIsolationConfig(t *testing.T) {
	for _, tc := range []struct {
		name    string
		change  func(*IsolationConfig)
		wantErr string
	}{
		{name: "defaults", change: func(*IsolationConfig) {}},
		{name: "user namespaces off", change: func(c *IsolationConfig) { c.UserNamespaces = UserNamespacesConfig{} }},
		{name: "oom score out of range", change: func(c *IsolationConfig) { c.OOMScoreAdj = 1001 }, wantErr: "isolation.oomScoreAdj"},
		{name: "relative host path", change: func(c *IsolationConfig) { c.AllowedHostPaths = []string{"srv"} }, wantErr: `"srv" must be absolute`},
		{name: "host path mode", change: func(c *IsolationConfig) { c.AllowedHostPaths = []string{"/srv:wr"} }, wantErr: "mode must be ro or rw"},
		{name: "relative device", change: func(c *IsolationConfig) { c.AllowedDevices = []string{"fuse"} }, wantErr: "isolation.allowedDevices"},
		{name: "ranges past 32 bits", change: func(c *IsolationConfig) { c.UserNamespaces.MaxTasks = 1 << 16 }, wantErr: "isolation.userNamespaces"},
		{name: "no ids per task", change: func(c *IsolationConfig) { c.UserNamespaces.IDsPerTask = 0 }, wantErr: "isolation.userNamespaces"},
		{name: "disk pool", change: func(c *IsolationConfig) {
			c.DiskPool = []DiskPoolConfig{{SizeMiB: 1024, Count: 2}, {SizeMiB: 10240, Count: 1}}
		}},
		{name: "disk pool without count", change: func(c *IsolationConfig) { c.DiskPool = []DiskPoolConfig{{SizeMiB: 1024}} }, wantErr: "isolation.diskPool: sizeMiB 1024 count 0"},
		{name: "disk pool size twice", change: func(c *IsolationConfig) {
			c.DiskPool = []DiskPoolConfig{{SizeMiB: 1024, Count: 1}, {SizeMiB: 1024, Count: 1}}
		}, wantErr: "given twice"},
		{name: "disk pool too big", change: func(c *IsolationConfig) {
			c.DiskPool = []DiskPoolConfig{{SizeMiB: 1024, Count: 60}, {SizeMiB: 64, Count: 5}}
		}, wantErr: "65 images in all, at most 64"},
		// The attack: a grant that holds the agent's state or the secrets
		// dir lets any task that asks read every tenant's env and secrets.
		{name: "host path holding the state dir", change: func(c *IsolationConfig) { c.AllowedHostPaths = []string{"/var/lib"} }, wantErr: "overlaps stateDir"},
		{name: "host path inside the state dir", change: func(c *IsolationConfig) { c.AllowedHostPaths = []string{"/var/lib/titus-agent/tasks:rw"} }, wantErr: "overlaps stateDir"},
		{name: "host path holding the secrets dir", change: func(c *IsolationConfig) { c.AllowedHostPaths = []string{"/run"} }, wantErr: "overlaps secrets.dir"},
		// ... every task's logs, or their network namespaces.
		{name: "host path holding the log dir", change: func(c *IsolationConfig) { c.AllowedHostPaths = []string{"/var/log"} }, wantErr: "overlaps logDir"},
		{name: "host path inside the log dir", change: func(c *IsolationConfig) { c.AllowedHostPaths = []string{"/var/log/titus-agent/tasks/other-task"} }, wantErr: "overlaps logDir"},
		{name: "host path inside the netns dir", change: func(c *IsolationConfig) { c.AllowedHostPaths = []string{"/run/titus-agent/netns"} }, wantErr: "overlaps network.netNSDir"},
		// ... the namespaces pooled for the next tasks, or the disks
		// (another tenant's files, pooled ones the next task gets).
		{name: "host path of the netns pool", change: func(c *IsolationConfig) { c.AllowedHostPaths = []string{"/run/titus-agent/netns-pool"} }, wantErr: "overlaps the network namespace pool"},
		{name: "host path inside a disk dir outside the state dir", change: func(c *IsolationConfig) {
			c.DiskDir = "/srv/disks"
			c.AllowedHostPaths = []string{"/srv/disks/pool"}
		}, wantErr: "overlaps isolation.diskDir"},
		// ... or the agent's control socket (a root task connects as root:
		// launches anything, execs into any tenant's task) or containerd's.
		{name: "host path holding the control socket", change: func(c *IsolationConfig) { c.AllowedHostPaths = []string{"/run/titus-agent:rw"} }, wantErr: "holds socket /run/titus-agent/agent.sock"},
		{name: "host path holding containerd's socket", change: func(c *IsolationConfig) { c.AllowedHostPaths = []string{"/run/containerd"} }, wantErr: "holds containerd.address"},
		{name: "host path beside them", change: func(c *IsolationConfig) {
			c.AllowedHostPaths = []string{"/srv/shared", "/var/lib/other", "/var/log/other", "/run/other"}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfig()
			tc.change(&cfg.Isolation)
			err := cfg.Validate()
			if (err != nil) != (tc.wantErr != "") || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
				t.Errorf("Validate() = %v, want an error with %q", err, tc.wantErr)
			}
		})
	}
}

func TestIsolationOptionsFromConfig(t *testing.T) {
	cfg := IsolationConfig{InitPath: "/opt/tini", CPUSet: "1-3", OOMScoreAdj: 800, AllowedHostPaths: []string{"/srv", "/data:rw"}, AllowedDevices: []string{"/dev/fuse"}}
	want := isolation.Options{InitPath: "/opt/tini", CPUSet: "1-3", OOMScoreAdj: 800, AllowedHostPaths: []isolation.HostPath{{Path: "/srv"}, {Path: "/data", ReadWrite: true}}, AllowedDevices: []string{"/dev/fuse"}}
	if diff := cmp.Diff(want, isolationOptions(cfg)); diff != "" {
		t.Errorf("options (-want +got):\n%s", diff)
	}
}

type fakeUserNSDisks struct{ got map[string]*isolation.UserNS }

func (f *fakeUserNSDisks) RestoreUserNS(m map[string]*isolation.UserNS) { f.got = m }

func TestUserNSRestorerFromRecords(t *testing.T) {
	ids := []taskrunner.IDMapping{{ContainerID: 0, HostID: 1 << 24, Size: 65536}}
	withNS := &taskrunner.Record{Spec: task.Spec{ID: "a"}}
	withNS.Resources.Disk = &taskrunner.DiskInfo{UserNS: &taskrunner.UserNS{UIDMap: ids, GIDMap: ids}}
	plain := &taskrunner.Record{Spec: task.Spec{ID: "b"}}
	plain.Resources.Disk = &taskrunner.DiskInfo{}
	f := &fakeUserNSDisks{}
	userNSRestorer{f}.RestoreRecords([]*taskrunner.Record{withNS, plain, {Spec: task.Spec{ID: "c"}}})
	m := []specs.LinuxIDMapping{{ContainerID: 0, HostID: 1 << 24, Size: 65536}}
	want := map[string]*isolation.UserNS{"a": {UIDMap: m, GIDMap: m}}
	if diff := cmp.Diff(want, f.got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}
