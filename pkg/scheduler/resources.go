package scheduler

import (
	"slices"
	"strings"

	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// resources is an amount of every dimension placement checks.
type resources struct {
	CPU, Mem, Disk, Net, GPUs int64
}

func (r resources) add(o resources) resources {
	return resources{r.CPU + o.CPU, r.Mem + o.Mem, r.Disk + o.Disk, r.Net + o.Net, r.GPUs + o.GPUs}
}

func (r resources) sub(o resources) resources {
	return resources{r.CPU - o.CPU, r.Mem - o.Mem, r.Disk - o.Disk, r.Net - o.Net, r.GPUs - o.GPUs}
}

func (r resources) times(n int64) resources {
	return resources{r.CPU * n, r.Mem * n, r.Disk * n, r.Net * n, r.GPUs * n}
}

func (r resources) max(o resources) resources {
	return resources{max(r.CPU, o.CPU), max(r.Mem, o.Mem), max(r.Disk, o.Disk), max(r.Net, o.Net), max(r.GPUs, o.GPUs)}
}

// fitsIn reports whether r fits in free.
func (r resources) fitsIn(free resources) bool {
	return r.CPU <= free.CPU && r.Mem <= free.Mem && r.Disk <= free.Disk && r.Net <= free.Net && r.GPUs <= free.GPUs
}

func taskResources(s *task.Spec) resources {
	r := s.Resources
	return resources{CPU: r.CPUMillicores, Mem: r.MemoryMiB, Disk: r.DiskMiB, Net: r.NetworkMbps, GPUs: int64(r.GPUs)}
}

func capacityResources(c *schedv1.Capacity) resources {
	return resources{CPU: c.GetCpuMillicores(), Mem: c.GetMemoryMib(), Disk: c.GetDiskMib(), Net: c.GetNetworkMbps(), GPUs: int64(c.GetGpus())}
}

func (r resources) proto() *schedv1.Capacity {
	return &schedv1.Capacity{CpuMillicores: r.CPU, MemoryMib: r.Mem, DiskMib: r.Disk, NetworkMbps: r.Net, Gpus: int32(r.GPUs)}
}

// sgKey names a task's security-group set: tasks with the same set share ENIs.
func sgKey(s *task.Spec) string {
	sgs := slices.Clone(s.Network.SecurityGroupIDs)
	slices.Sort(sgs)
	return strings.Join(sgs, ",")
}
