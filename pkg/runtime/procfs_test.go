package runtime

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func writeTree(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for p, c := range files {
		f := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(f), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(f, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestProcFSCgroupV1(t *testing.T) {
	root := writeTree(t, map[string]string{
		"proc/42/cgroup":                  "12:pids:/titus/t1\n5:cpu,cpuacct:/titus/t1\n4:memory:/titus/t1\n3:cpuset:/titus/t1\n0::/\n",
		"proc/42/status":                  "Name:\tsleep\nPPid:\t7\nUid:\t1000\t1001\t1000\t1000\nNSpid:\t42\t1\nVmRSS:\t  2048 kB\n",
		"proc/42/stat":                    "42 (sleep) S 7 42 42 0 -1 0 0 0 0 0 150 50 0 0 20 0 1 0 0 0 0",
		"proc/42/cmdline":                 "sleep\x00100000\x00",
		"proc/43/status":                  "Name:\tkworker\nPPid:\t2\nUid:\t0\t0\t0\t0\nNSpid:\t43\t7\n",
		"proc/43/stat":                    "43 (kw) S 2 0 0 0 -1 0 0 0 0 0 1 1 0 0 20 0 1 0 0 0 0",
		"proc/43/comm":                    "kworker\n",
		"cg/memory/titus/t1/cgroup.procs": "43\n42\n99\n", // 99 exited meanwhile
		"cg/memory/titus/t1/titus-exec-exec-1/cgroup.procs": "44\n", // an exec session's
		"proc/44/status":  "Name:\tsh\nPPid:\t0\nUid:\t0\t0\t0\t0\nNSpid:\t44\t9\n",
		"proc/44/cmdline": "sh\x00",
		"cg/memory/titus/t1/memory.limit_in_bytes": "67108864\n",
		"cg/memory/titus/t1/memory.usage_in_bytes": "1048576\n",
		"cg/cpu/titus/t1/cpu.cfs_quota_us":         "50000\n",
		"cg/cpu/titus/t1/cpu.cfs_period_us":        "100000\n",
		"cg/pids/titus/t1/pids.max":                "max\n",
	})
	f := ProcFS{Proc: filepath.Join(root, "proc"), Cgroup: filepath.Join(root, "cg"), ClockTicks: 100}
	dir, v1, err := f.CgroupOf(42)
	if err != nil || dir != filepath.Join(root, "cg/memory/titus/t1") {
		t.Fatalf("CgroupOf = %q, %v", dir, err)
	}
	want := map[string]string{"memory.limit_in_bytes": "67108864", "memory.usage_in_bytes": "1048576", "cpu.cfs_quota_us": "50000", "cpu.cfs_period_us": "100000", "pids.max": "max"}
	if d := cmp.Diff(want, f.Limits(dir, v1)); d != "" {
		t.Errorf("limits (-want +got):\n%s", d)
	}
	procs, err := f.Processes(dir)
	if err != nil {
		t.Fatal(err)
	}
	wantP := []Process{
		{HostPID: 42, PID: 1, PPID: 7, UID: 1001, CPUSeconds: 2, RSSBytes: 2 << 20, Command: "sleep 100000"},
		{HostPID: 43, PID: 7, PPID: 2, UID: 0, CPUSeconds: 0.02, Command: "[kworker]"},
		{HostPID: 44, PID: 9, Command: "sh"},
	}
	if d := cmp.Diff(wantP, procs); d != "" {
		t.Errorf("processes (-want +got):\n%s", d)
	}
}

func TestProcFSCgroupV2(t *testing.T) {
	root := writeTree(t, map[string]string{
		"proc/5/cgroup":              "0::/titus/t2\n",
		"cg/titus/t2/memory.max":     "max\n",
		"cg/titus/t2/cpu.max":        "50000 100000\n",
		"cg/titus/t2/pids.max":       "64\n",
		"cg/titus/t2/memory.current": "4096\n",
	})
	f := ProcFS{Proc: filepath.Join(root, "proc"), Cgroup: filepath.Join(root, "cg"), ClockTicks: 100}
	dir, v1, err := f.CgroupOf(5)
	if err != nil || dir != filepath.Join(root, "cg/titus/t2") || v1 != nil {
		t.Fatalf("CgroupOf = %q %v, %v", dir, v1, err)
	}
	want := map[string]string{"memory.max": "max", "cpu.max": "50000 100000", "pids.max": "64", "memory.current": "4096"}
	if d := cmp.Diff(want, f.Limits(dir, v1)); d != "" {
		t.Errorf("limits (-want +got):\n%s", d)
	}
	if _, _, err := f.CgroupOf(6); err == nil {
		t.Error("a missing process has a cgroup")
	}
}
