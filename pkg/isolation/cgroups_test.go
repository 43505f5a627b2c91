package isolation

import (
	"strconv"
	"testing"

	"github.com/google/go-cmp/cmp"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/titus-agent/titus-agent/pkg/task"
)

// cgroupFiles is what a cgroup's limit files hold for a spec's resources.
type cgroupFiles map[string]string

func specResources(t *testing.T, res task.Resources, o Options) *specs.LinuxResources {
	t.Helper()
	s, err := apply(t, SpecOpts(&task.Spec{ID: "t1", Resources: res}, o))
	if err != nil {
		t.Fatal(err)
	}
	return s.Linux.Resources
}

// v1Files: on cgroup v1 runc writes the spec's fields as they are.
func v1Files(r *specs.LinuxResources) cgroupFiles {
	f := cgroupFiles{}
	if c := r.CPU; c != nil {
		if c.Shares != nil {
			f["cpu.shares"] = strconv.FormatUint(*c.Shares, 10)
		}
		if c.Quota != nil {
			f["cpu.cfs_quota_us"] = strconv.FormatInt(*c.Quota, 10)
		}
		if c.Period != nil {
			f["cpu.cfs_period_us"] = strconv.FormatUint(*c.Period, 10)
		}
		if c.Burst != nil {
			f["cpu.cfs_burst_us"] = strconv.FormatUint(*c.Burst, 10)
		}
		if c.Cpus != "" {
			f["cpuset.cpus"] = c.Cpus
		}
	}
	if m := r.Memory; m != nil {
		if m.Limit != nil {
			f["memory.limit_in_bytes"] = strconv.FormatInt(*m.Limit, 10)
		}
		if m.Swap != nil {
			f["memory.memsw.limit_in_bytes"] = strconv.FormatInt(*m.Swap, 10)
		}
	}
	if r.Pids != nil && r.Pids.Limit != nil {
		f["pids.max"] = strconv.FormatInt(*r.Pids.Limit, 10)
	}
	return f
}

// v2Files: on cgroup v2 runc (1.1, as on Debian 12 and current AMIs)
// converts the same fields: shares to cpu.weight, quota and period to
// cpu.max, memory+swap to memory.swap.max = swap alone. This machine has no
// v2 hierarchy to run it on.
func v2Files(r *specs.LinuxResources) cgroupFiles {
	f := cgroupFiles{}
	if c := r.CPU; c != nil {
		if c.Shares != nil && *c.Shares != 0 {
			f["cpu.weight"] = strconv.FormatUint(1+((*c.Shares-2)*9999)/262142, 10)
		}
		if c.Quota != nil || c.Period != nil {
			quota, period := "max", uint64(100000)
			if c.Quota != nil && *c.Quota > 0 {
				quota = strconv.FormatInt(*c.Quota, 10)
			}
			if c.Period != nil {
				period = *c.Period
			}
			f["cpu.max"] = quota + " " + strconv.FormatUint(period, 10)
		}
		if c.Burst != nil {
			f["cpu.max.burst"] = strconv.FormatUint(*c.Burst, 10)
		}
		if c.Cpus != "" {
			f["cpuset.cpus"] = c.Cpus
		}
	}
	if m := r.Memory; m != nil {
		if m.Limit != nil {
			f["memory.max"] = strconv.FormatInt(*m.Limit, 10)
		}
		if m.Swap != nil && m.Limit != nil {
			f["memory.swap.max"] = strconv.FormatInt(*m.Swap-*m.Limit, 10)
		}
	}
	if r.Pids != nil && r.Pids.Limit != nil {
		f["pids.max"] = strconv.FormatInt(*r.Pids.Limit, 10)
	}
	return f
}

func TestCgroupFilesV1AndV2(t *testing.T) {
	for _, tc := range []struct {
		name   string
		res    task.Resources
		opts   Options
		v1, v2 cgroupFiles
	}{
		{
			name: "half a core, 256 MiB without swap, 100 pids",
			res:  task.Resources{CPUMillicores: 500, MemoryMiB: 256, Pids: 100},
			v1: cgroupFiles{
				"cpu.shares": "512", "cpu.cfs_quota_us": "50000", "cpu.cfs_period_us": "100000",
				"memory.limit_in_bytes": "268435456", "memory.memsw.limit_in_bytes": "268435456", "pids.max": "100",
			},
			v2: cgroupFiles{
				"cpu.weight": "20", "cpu.max": "50000 100000",
				"memory.max": "268435456", "memory.swap.max": "0", "pids.max": "100",
			},
		},
		{
			name: "burst: shares only, no CFS quota",
			res:  task.Resources{CPUMillicores: 2000, CPUBurst: true},
			v1:   cgroupFiles{"cpu.shares": "2048"},
			v2:   cgroupFiles{"cpu.weight": "79"},
		},
		{
			name: "a quarter core of burst above half a core",
			res:  task.Resources{CPUMillicores: 500, CPUBurstMillicores: 250},
			v1:   cgroupFiles{"cpu.shares": "512", "cpu.cfs_quota_us": "50000", "cpu.cfs_period_us": "100000", "cpu.cfs_burst_us": "25000"},
			v2:   cgroupFiles{"cpu.weight": "20", "cpu.max": "50000 100000", "cpu.max.burst": "25000"},
		},
		{
			name: "cpuset pinning",
			res:  task.Resources{CPUMillicores: 1000},
			opts: Options{CPUSet: "0-1"},
			v1:   cgroupFiles{"cpu.shares": "1024", "cpu.cfs_quota_us": "100000", "cpu.cfs_period_us": "100000", "cpuset.cpus": "0-1"},
			v2:   cgroupFiles{"cpu.weight": "39", "cpu.max": "100000 100000", "cpuset.cpus": "0-1"},
		},
		{
			name: "nothing asked, nothing limited",
			v1:   cgroupFiles{},
			v2:   cgroupFiles{},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := specResources(t, tc.res, tc.opts)
			if diff := cmp.Diff(tc.v1, v1Files(r)); diff != "" {
				t.Errorf("cgroup v1 (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.v2, v2Files(r)); diff != "" {
				t.Errorf("cgroup v2 (-want +got):\n%s", diff)
			}
		})
	}
}
