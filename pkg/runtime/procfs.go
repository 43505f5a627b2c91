package runtime

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// ProcFS reads a task's processes and cgroup from the host's /proc and
// /sys/fs/cgroup. Its roots are fields so that tests read a fake tree.
type ProcFS struct {
	Proc, Cgroup string // "/proc", "/sys/fs/cgroup"
	// ClockTicks is USER_HZ (100 on Linux).
	ClockTicks int64
}

// HostProcFS is the host's.
var HostProcFS = ProcFS{Proc: "/proc", Cgroup: "/sys/fs/cgroup", ClockTicks: 100}

// Process is one process of a task.
type Process struct {
	HostPID, PID, PPID int // PID: in the task's pid namespace
	UID                int
	CPUSeconds         float64
	RSSBytes           int64
	Command            string
}

// CgroupOf returns the cgroup directory of pid: the unified hierarchy's
// (v2), else the memory controller's (v1), and the v1 controller roots it
// found, for reading limits.
func (f ProcFS) CgroupOf(pid int) (dir string, v1 map[string]string, err error) {
	b, err := os.ReadFile(filepath.Join(f.Proc, strconv.Itoa(pid), "cgroup"))
	if err != nil {
		return "", nil, fmt.Errorf("cgroup of %d: %w", pid, err)
	}
	v1 = map[string]string{}
	var unified string
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		if parts[0] == "0" && parts[1] == "" {
			unified = parts[2]
			continue
		}
		for _, c := range strings.Split(parts[1], ",") {
			v1[c] = filepath.Join(f.Cgroup, c, parts[2])
		}
	}
	if d, ok := v1["memory"]; ok {
		return d, v1, nil
	}
	if unified != "" {
		return filepath.Join(f.Cgroup, unified), nil, nil
	}
	return "", nil, fmt.Errorf("cgroup of %d: no memory or unified hierarchy", pid)
}

// Limits reads back what the kernel enforces on the cgroup: memory, CPU
// quota and period, pids, from v1 controllers or the v2 directory.
func (f ProcFS) Limits(dir string, v1 map[string]string) map[string]string {
	out := map[string]string{}
	read := func(key, p string) {
		if b, err := os.ReadFile(p); err == nil {
			out[key] = strings.TrimSpace(string(b))
		}
	}
	if v1 != nil {
		read("memory.limit_in_bytes", filepath.Join(v1["memory"], "memory.limit_in_bytes"))
		read("memory.usage_in_bytes", filepath.Join(v1["memory"], "memory.usage_in_bytes"))
		read("cpu.cfs_quota_us", filepath.Join(v1["cpu"], "cpu.cfs_quota_us"))
		read("cpu.cfs_period_us", filepath.Join(v1["cpu"], "cpu.cfs_period_us"))
		read("cpu.shares", filepath.Join(v1["cpu"], "cpu.shares"))
		read("cpuset.cpus", filepath.Join(v1["cpuset"], "cpuset.cpus"))
		read("pids.max", filepath.Join(v1["pids"], "pids.max"))
		read("pids.current", filepath.Join(v1["pids"], "pids.current"))
		return out
	}
	for _, k := range []string{"memory.max", "memory.current", "memory.swap.max", "cpu.max", "cpu.weight", "cpuset.cpus", "pids.max", "pids.current"} {
		read(k, filepath.Join(dir, k))
	}
	return out
}

// Processes lists the processes of the cgroup dir and of the cgroups
// below it (an exec session's, cgroup v2), by host pid.
func (f ProcFS) Processes(dir string) ([]Process, error) {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return nil, fmt.Errorf("processes of %s: %w", dir, err)
	}
	pids := strings.Fields(string(b))
	if subs, err := os.ReadDir(dir); err == nil {
		for _, d := range subs {
			if sb, err := os.ReadFile(filepath.Join(dir, d.Name(), "cgroup.procs")); d.IsDir() && err == nil {
				pids = append(pids, strings.Fields(string(sb))...)
			}
		}
	}
	var out []Process
	for _, s := range pids {
		pid, err := strconv.Atoi(s)
		if err != nil {
			continue
		}
		p, err := f.process(pid)
		if errors.Is(err, os.ErrNotExist) {
			continue // exited meanwhile
		} else if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].HostPID < out[j].HostPID })
	return out, nil
}

func (f ProcFS) process(pid int) (Process, error) {
	dir := filepath.Join(f.Proc, strconv.Itoa(pid))
	p := Process{HostPID: pid, PID: pid}
	st, err := os.Open(filepath.Join(dir, "status"))
	if err != nil {
		return p, err
	}
	defer st.Close()
	sc := bufio.NewScanner(st)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		fs := strings.Fields(v)
		if len(fs) == 0 {
			continue
		}
		switch k {
		case "PPid":
			p.PPID, _ = strconv.Atoi(fs[0])
		case "Uid":
			p.UID, _ = strconv.Atoi(fs[1]) // effective
		case "NSpid":
			p.PID, _ = strconv.Atoi(fs[len(fs)-1]) // innermost namespace
		case "VmRSS":
			kb, _ := strconv.ParseInt(fs[0], 10, 64)
			p.RSSBytes = kb << 10
		}
	}
	if b, err := os.ReadFile(filepath.Join(dir, "stat")); err == nil {
		s := string(b)
		if i := strings.LastIndexByte(s, ')'); i >= 0 {
			fs := strings.Fields(s[i+1:])
			if len(fs) > 12 && f.ClockTicks > 0 {
				ut, _ := strconv.ParseInt(fs[11], 10, 64)
				stt, _ := strconv.ParseInt(fs[12], 10, 64)
				p.CPUSeconds = float64(ut+stt) / float64(f.ClockTicks)
			}
		}
	}
	if b, err := os.ReadFile(filepath.Join(dir, "cmdline")); err == nil {
		p.Command = strings.TrimSpace(strings.ReplaceAll(strings.TrimRight(string(b), "\x00"), "\x00", " "))
	}
	if p.Command == "" {
		if b, err := os.ReadFile(filepath.Join(dir, "comm")); err == nil {
			p.Command = "[" + strings.TrimSpace(string(b)) + "]"
		}
	}
	return p, nil
}
