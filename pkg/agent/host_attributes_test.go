package agent

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/titus-agent/titus-agent/pkg/schedlink"
	"github.com/titus-agent/titus-agent/pkg/vpc"
)

func TestCgroupMode(t *testing.T) {
	v1, v2 := t.TempDir(), t.TempDir()
	if err := os.MkdirAll(filepath.Join(v2, "sys/fs/cgroup"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(v2, "sys/fs/cgroup/cgroup.controllers"), []byte("cpu memory\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := []string{cgroupMode(v1), cgroupMode(v2)}; !cmp.Equal(got, []string{"v1", "v2"}) {
		t.Errorf("cgroupMode = %v, want [v1 v2]", got)
	}
	a := hostAttributes(v2, "1.2.3")
	if a.Kernel == "" || a.AgentVersion != "1.2.3" || a.CgroupMode != "v2" {
		t.Errorf("hostAttributes = %+v", a)
	}
}

func TestNetworkUsage(t *testing.T) {
	got := networkUsage(vpc.Usage{ENIs: 3, IPsPerENI: 9, ReuseCooldown: time.Second, AttachableENIs: 2,
		SGSets: []vpc.SGSetUsage{{SecurityGroups: "sg-1,sg-2", SubnetID: "subnet-a", Default: true, ENIs: 1, UsedIPs: 4, FreeIPs: 5, CoolingIPs: 0}}})
	want := schedlink.NetworkUsage{AttachableENIs: 2, SGSets: []schedlink.SGSet{{SecurityGroups: "sg-1,sg-2", SubnetID: "subnet-a", Default: true, ENIs: 1, UsedIPs: 4, FreeIPs: 5}}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}
