package isolation

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/titus-agent/titus-agent/pkg/task"
)

// HasCPUBurst reports whether the kernel has the CFS burst control runc
// writes a task's cpu_burst_millicores to (Linux 5.14 and later), read
// from the cgroup filesystem mounted at cgroupRoot (/sys/fs/cgroup):
// cpu.cfs_burst_us in the v1 cpu hierarchy's root; on v2, cpu.max.burst
// beside cpu.max in a cgroup below the root (the root has neither). When
// no cgroup there has the cpu controller yet, the kernel release decides.
// Without it runc ignores the allowance on v1 and fails the create on v2.
func HasCPUBurst(cgroupRoot, release string) bool {
	if _, err := os.Stat(filepath.Join(cgroupRoot, "cgroup.controllers")); err != nil {
		for _, d := range []string{"cpu", "cpu,cpuacct"} {
			if _, err := os.Stat(filepath.Join(cgroupRoot, d, "cpu.cfs_burst_us")); err == nil {
				return true
			}
		}
		return false
	}
	if maxes, _ := filepath.Glob(filepath.Join(cgroupRoot, "*", "cpu.max")); len(maxes) > 0 {
		_, err := os.Stat(maxes[0] + ".burst")
		return err == nil
	}
	return releaseAtLeast(release, 5, 14)
}

// releaseAtLeast: whether a kernel release ("6.1.0-57-cloud-amd64") is
// major.minor or later; false when it does not parse.
func releaseAtLeast(release string, major, minor int) bool {
	f := strings.FieldsFunc(release, func(r rune) bool { return r < '0' || r > '9' })
	if len(f) < 2 {
		return false
	}
	ma, err1 := strconv.Atoi(f[0])
	mi, err2 := strconv.Atoi(f[1])
	if err1 != nil || err2 != nil {
		return false
	}
	return ma > major || ma == major && mi >= minor
}

// CheckCPUBurst refuses a burst allowance on a host whose kernel has no
// CFS burst control (NoCPUBurst), naming the field: on v1 runc would
// silently drop it, on v2 fail the launch.
func (o Options) CheckCPUBurst(r task.Resources, c *task.Checker) {
	if o.NoCPUBurst && r.CPUBurstMillicores > 0 {
		c.Failf("resources.cpu_burst_millicores", "this host's kernel has no CFS burst control (cpu.max.burst, cpu.cfs_burst_us: Linux 5.14 or later); ask for 0")
	}
}
