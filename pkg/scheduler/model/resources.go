package model

import (
	"fmt"
	"strconv"
	"time"

	"github.com/titus-agent/titus-agent/pkg/task"
)

// Resources is an amount of every dimension placement checks.
type Resources struct {
	CPU, Mem, Disk, Net, GPUs int64
}

func (r Resources) Add(o Resources) Resources {
	return Resources{r.CPU + o.CPU, r.Mem + o.Mem, r.Disk + o.Disk, r.Net + o.Net, r.GPUs + o.GPUs}
}

func (r Resources) Sub(o Resources) Resources {
	return Resources{r.CPU - o.CPU, r.Mem - o.Mem, r.Disk - o.Disk, r.Net - o.Net, r.GPUs - o.GPUs}
}

func (r Resources) Times(n int64) Resources {
	return Resources{r.CPU * n, r.Mem * n, r.Disk * n, r.Net * n, r.GPUs * n}
}

func (r Resources) Max(o Resources) Resources {
	return Resources{max(r.CPU, o.CPU), max(r.Mem, o.Mem), max(r.Disk, o.Disk), max(r.Net, o.Net), max(r.GPUs, o.GPUs)}
}

// FitsIn reports whether r fits in free.
func (r Resources) FitsIn(free Resources) bool {
	return r.CPU <= free.CPU && r.Mem <= free.Mem && r.Disk <= free.Disk && r.Net <= free.Net && r.GPUs <= free.GPUs
}

// Describe says r for people: "1.5 CPU cores, 512 MiB memory[, 1 GPUs]".
func (r Resources) Describe() string {
	s := fmt.Sprintf("%s CPU cores, %d MiB memory", Cores(r.CPU), r.Mem)
	if r.GPUs > 0 {
		s += fmt.Sprintf(", %d GPUs", r.GPUs)
	}
	return s
}

// Cores formats millicores as cores.
func Cores(millicores int64) string {
	return strconv.FormatFloat(float64(millicores)/1000, 'f', -1, 64)
}

// TaskResources is what a task spec asks of a host.
func TaskResources(s *task.Spec) Resources {
	r := s.Resources
	return Resources{CPU: r.CPUMillicores, Mem: r.MemoryMiB, Disk: r.DiskMiB, Net: r.NetworkMbps, GPUs: int64(r.GPUs)}
}

// Capacity is a host's resources and network capacity: ENIs and IPs per
// ENI (0 = not limited).
type Capacity struct {
	Resources
	ENIs, IPsPerENI int
	// IPReuseCooldown keeps a released task IP from the next task.
	IPReuseCooldown time.Duration
}
