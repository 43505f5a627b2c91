package agent

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
)

type versioner interface {
	Version(ctx context.Context) (string, error)
}

// addressCounter tells how many more tasks can get an address.
type addressCounter interface {
	FreeAddresses(ctx context.Context) (int, error)
}

// hostHealth checks what the agent needs from its host.
type hostHealth struct {
	rt   versioner
	dirs []string
	// net is nil when tasks use the host network.
	net addressCounter
	// root is where /proc and /sys are read (tests point it elsewhere).
	root string
	now  func() time.Time
}

// Thresholds of the host checks.
const (
	minFreeBytes  = 512 << 20
	minFreeInodes = 10000
	// A clock before this year is broken (e.g. an RTC reset), whatever NTP says.
	minSaneYear = 2025
)

func (h *hostHealth) Check(ctx context.Context) []*agentv1.HealthCheck {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	var out []*agentv1.HealthCheck
	add := func(name string, ok bool, format string, a ...any) {
		out = append(out, &agentv1.HealthCheck{Name: name, Ok: ok, Detail: fmt.Sprintf(format, a...)})
	}
	if v, err := h.rt.Version(ctx); err != nil {
		add("containerd", false, "%v", err)
	} else {
		add("containerd", true, "version %s", v)
	}
	for _, d := range h.dirs {
		var st unix.Statfs_t
		if err := unix.Statfs(d, &st); err != nil {
			add("disk "+d, false, "%v", err)
			continue
		}
		free := st.Bavail * uint64(st.Bsize)
		add("disk "+d, free >= minFreeBytes && st.Ffree >= minFreeInodes, "%d MiB free, %d inodes free", free>>20, st.Ffree)
	}
	if h.net != nil {
		if n, err := h.net.FreeAddresses(ctx); err != nil {
			add("network capacity", false, "%v", err)
		} else {
			add("network capacity", n > 0, "%d task addresses free", n)
		}
	}
	out = append(out, h.clock(), h.kernel())
	return out
}

// clock fails on a clearly wrong clock and says whether it is synchronised.
func (h *hostHealth) clock() *agentv1.HealthCheck {
	now := time.Now
	if h.now != nil {
		now = h.now
	}
	t := now()
	sync := "synchronised"
	var tx unix.Timex
	if state, err := unix.Adjtimex(&tx); err == nil && (state == unix.TIME_ERROR || tx.Status&unix.STA_UNSYNC != 0) {
		sync = fmt.Sprintf("not synchronised by NTP (max error %s)", time.Duration(tx.Maxerror)*time.Microsecond)
	}
	return &agentv1.HealthCheck{Name: "clock", Ok: t.Year() >= minSaneYear, Detail: t.UTC().Format(time.RFC3339) + ", " + sync}
}

// cgroupV2Controllers are the controllers a task's limits need on a
// cgroup v2 host (memory.max, cpu.max, pids.max).
var cgroupV2Controllers = []string{"cpu", "memory", "pids"}

// kernel checks the features tasks need: cgroups (on v2, with the
// controllers of cgroupV2Controllers), overlayfs, namespaces.
func (h *hostHealth) kernel() *agentv1.HealthCheck {
	root := h.root
	var missing, have []string
	fs, _ := os.ReadFile(root + "/proc/filesystems")
	if strings.Contains(string(fs), "overlay") {
		have = append(have, "overlayfs")
	} else {
		missing = append(missing, "overlayfs")
	}
	switch {
	case exists(root + "/sys/fs/cgroup/cgroup.controllers"):
		// v2: the controllers tasks are limited with must be available.
		b, _ := os.ReadFile(root + "/sys/fs/cgroup/cgroup.controllers")
		avail := strings.Fields(string(b))
		var lack []string
		for _, c := range cgroupV2Controllers {
			if !slices.Contains(avail, c) {
				lack = append(lack, c)
			}
		}
		if len(lack) > 0 {
			missing = append(missing, "cgroup v2 controllers "+strings.Join(lack, ", "))
		} else {
			have = append(have, "cgroup v2 ("+strings.Join(avail, " ")+")")
		}
	case exists(root+"/sys/fs/cgroup/memory") && exists(root+"/sys/fs/cgroup/cpu") && exists(root+"/sys/fs/cgroup/pids"):
		have = append(have, "cgroup v1")
	default:
		missing = append(missing, "cgroups (memory, cpu, pids)")
	}
	for _, ns := range []string{"net", "mnt", "pid", "uts", "ipc"} {
		if !exists(root + "/proc/self/ns/" + ns) {
			missing = append(missing, ns+" namespaces")
		}
	}
	if len(missing) > 0 {
		return &agentv1.HealthCheck{Name: "kernel", Ok: false, Detail: "missing " + strings.Join(missing, ", ")}
	}
	return &agentv1.HealthCheck{Name: "kernel", Ok: true, Detail: strings.Join(have, ", ") + ", namespaces"}
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
