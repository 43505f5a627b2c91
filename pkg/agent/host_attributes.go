package agent

import (
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/titus-agent/titus-agent/pkg/schedlink"
	"github.com/titus-agent/titus-agent/pkg/vpc"
)

// hostAttributes reads what placement constraints may ask of this host:
// the kernel release, the cgroup mode (of the hierarchy under root) and
// the agent's version. The ec2 provider adds the AMI; GPU discovery adds
// the GPUs.
func hostAttributes(root, version string) schedlink.Attributes {
	return schedlink.Attributes{AgentVersion: version, CgroupMode: cgroupMode(root), Kernel: kernelRelease()}
}

// kernelRelease is uname's release ("6.1.0-57-cloud-amd64"), or "".
func kernelRelease() string {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}

// cgroupMode is "v2" on a unified hierarchy, else "v1".
func cgroupMode(root string) string {
	if _, err := os.Stat(filepath.Join(root, "sys/fs/cgroup/cgroup.controllers")); err == nil {
		return "v2"
	}
	return "v1"
}

// networkUsage converts the ec2 provider's ENI use for the scheduler link.
func networkUsage(u vpc.Usage) schedlink.NetworkUsage {
	out := schedlink.NetworkUsage{AttachableENIs: int32(u.AttachableENIs), DefaultSecurityGroups: u.DefaultGroups,
		DefaultSubnetID: u.DefaultSubnetID, ZoneSubnets: u.ZoneSubnets, OtherZoneSubnets: u.OtherZoneSubnets}
	for _, s := range u.SGSets {
		out.SGSets = append(out.SGSets, schedlink.SGSet{SecurityGroups: s.SecurityGroups, SubnetID: s.SubnetID, Default: s.Default,
			ENIs: int32(s.ENIs), UsedIPs: int32(s.UsedIPs), FreeIPs: int32(s.FreeIPs), CoolingIPs: int32(s.CoolingIPs)})
	}
	return out
}
