package runtime

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestCgroupRelDir(t *testing.T) {
	for _, tc := range []struct {
		path, want string
		ok         bool
	}{
		{"/titus/t1", "/titus/t1", true},
		{cgroupsPath(CgroupDriverCgroupfs, "titus", "t1"), "/titus/t1", true},
		{cgroupsPath(CgroupDriverSystemd, "titus", "t1"), "/titus.slice/titus-titus.slice/titus-titus-t1.slice/titus-t1.scope", true},
		{cgroupsPath(CgroupDriverSystemd, "a-ns", "t-1.x"), `/titus.slice/titus-a\x2dns.slice/titus-a\x2dns-t\x2d1.x.slice/a-ns-t-1.x.scope`, true},
		{legacyScopePath("titus", "t1"), "/titus.slice/titus-t1.scope", true},
		{"system.slice:docker:abc", "/system.slice/docker-abc.scope", true},
		{":cri:abc", "/system.slice/cri-abc.scope", true},
		{"a-b.slice:p:x", "/a.slice/a-b.slice/p-x.scope", true},
		{"-.slice:p:x", "/p-x.scope", true},
		{"a.slice::x", "/a.slice/x.scope", true},
		{"a.slice:p:sub.slice", "/a.slice/sub.slice", true},
		{"", "", false},
		{"a.slice:p", "", false},
		{"a.slice:p:", "", false},
		{"notaslice:p:x", "", false},
		{"a--b.slice:p:x", "", false},
		{"../x.slice:p:x", "", false},
	} {
		got, ok := cgroupRelDir(tc.path)
		if got != tc.want || ok != tc.ok {
			t.Errorf("cgroupRelDir(%q) = %q, %v; want %q, %v", tc.path, got, ok, tc.want, tc.ok)
		}
	}
}

func TestCheckCgroupDriver(t *testing.T) {
	for in, want := range map[string]string{"": CgroupDriverCgroupfs, "cgroupfs": CgroupDriverCgroupfs, "systemd": CgroupDriverSystemd} {
		if got, err := checkCgroupDriver(in); err != nil || got != want {
			t.Errorf("checkCgroupDriver(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := checkCgroupDriver("Systemd"); err == nil {
		t.Error("an unknown driver was accepted")
	}
	if runcOptions(CgroupDriverCgroupfs) != nil || !runcOptions(CgroupDriverSystemd).SystemdCgroup {
		t.Error("runc options do not follow the driver")
	}
}

// The OOM counter and peak are read from the task's cgroup under both
// drivers and both hierarchies.
func TestOOMAndPeakFollowTheDriver(t *testing.T) {
	defer func(orig string) { cgroupRoot = orig }(cgroupRoot)
	const slice = "titus.slice/titus-titus.slice/titus-titus-t1.slice"
	for _, tc := range []struct {
		name, driver, file, content, peakFile string
	}{
		{"v1 cgroupfs", CgroupDriverCgroupfs, "memory/titus/t1/memory.oom_control", "oom_kill 1\n", "memory/titus/t1/memory.max_usage_in_bytes"},
		{"v2 cgroupfs", CgroupDriverCgroupfs, "titus/t1/memory.events", "low 0\noom_kill 3\n", "titus/t1/memory.peak"},
		{"v1 systemd", CgroupDriverSystemd, "memory/" + slice + "/titus-t1.scope/memory.oom_control", "oom_kill 1\n", "memory/" + slice + "/titus-t1.scope/memory.max_usage_in_bytes"},
		{"v2 systemd", CgroupDriverSystemd, slice + "/titus-t1.scope/memory.events", "oom_kill 1\n", slice + "/titus-t1.scope/memory.peak"},
		// The regression: systemd removed the scope when the task exited,
		// before the agent read it; its slice has the counts.
		{"v2 systemd, scope gone", CgroupDriverSystemd, slice + "/memory.events", "low 0\noom_kill 1\n", slice + "/memory.peak"},
		{"v1 systemd, scope gone", CgroupDriverSystemd, "memory/" + slice + "/memory.oom_control", "oom_kill 1\n", "memory/" + slice + "/memory.max_usage_in_bytes"},
		// Tasks made before task slices: the scope directly in titus.slice.
		{"v2 legacy scope", "legacy", "titus.slice/titus-t1.scope/memory.events", "oom_kill 1\n", "titus.slice/titus-t1.scope/memory.peak"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cgroupRoot = t.TempDir()
			p := cgroupsPath(tc.driver, "titus", "t1")
			if tc.driver == "legacy" {
				p = legacyScopePath("titus", "t1")
			}
			if cgroupOOMKilled(p) || cgroupPeakMemory(p) != 0 {
				t.Fatal("OOM or peak read from a cgroup that does not exist")
			}
			for f, c := range map[string]string{tc.file: tc.content, tc.peakFile: "4096\n"} {
				f = filepath.Join(cgroupRoot, f)
				if err := os.MkdirAll(filepath.Dir(f), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(f, []byte(c), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if !cgroupOOMKilled(p) {
				t.Error("OOM kill not seen")
			}
			if got := cgroupPeakMemory(p); got != 4096 {
				t.Errorf("peak = %d, want 4096", got)
			}
		})
	}
}

// A shared slice's counters are never read as a task's: titus.slice and
// system.slice hold other tasks and services.
func TestAccountingSkipsSharedSlices(t *testing.T) {
	defer func(orig string) { cgroupRoot = orig }(cgroupRoot)
	cgroupRoot = t.TempDir()
	for _, f := range []string{"titus.slice/memory.events", "system.slice/memory.events", "titus.slice/titus-titus.slice/memory.events"} {
		f = filepath.Join(cgroupRoot, f)
		if err := os.MkdirAll(filepath.Dir(f), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(f, []byte("oom_kill 7\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{legacyScopePath("titus", "t1"), "system.slice:docker:t1", "titus-titus.slice:titus:t1", cgroupsPath(CgroupDriverSystemd, "titus", "t1")} {
		if cgroupOOMKilled(p) {
			t.Errorf("%s: OOM kill read from a shared slice", p)
		}
	}
}

func TestRemoveEmptyCgroupsSystemdScope(t *testing.T) {
	root := t.TempDir()
	dirs := []string{filepath.Join(root, "titus.slice", "titus-half.scope"), filepath.Join(root, "memory", "titus.slice", "titus-half.scope"),
		filepath.Join(root, "titus.slice", "titus-titus.slice", "titus-titus-half.slice", "titus-half.scope")}
	keep := filepath.Join(root, "titus.slice", "titus-other.scope")
	for _, d := range append(dirs, keep) {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := removeEmptyCgroups(root, "titus", "half"); err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, d := range append(dirs, keep) {
		if _, err := os.Stat(d); err == nil {
			left = append(left, d)
		}
	}
	if diff := cmp.Diff([]string{keep}, left); diff != "" {
		t.Errorf("cgroups left (-want +got):\n%s", diff)
	}
}

func TestCgroupDirs(t *testing.T) {
	defer func(orig string) { cgroupRoot = orig }(cgroupRoot)
	mk := func(files ...string) {
		for _, f := range files {
			f = filepath.Join(cgroupRoot, f)
			if err := os.MkdirAll(filepath.Dir(f), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(f, nil, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	cgroupRoot = t.TempDir()
	mk("cgroup.controllers", "titus.slice/titus-titus.slice/titus-titus-t1.slice/titus-t1.scope/cgroup.procs")
	if diff := cmp.Diff([]string{filepath.Join(cgroupRoot, "titus.slice/titus-titus.slice/titus-titus-t1.slice/titus-t1.scope")}, CgroupDirs(cgroupsPath(CgroupDriverSystemd, "titus", "t1"))); diff != "" {
		t.Errorf("v2 systemd (-want +got):\n%s", diff)
	}
	cgroupRoot = t.TempDir()
	mk("memory/titus/t1/cgroup.procs", "pids/titus/t1/cgroup.procs")
	want := []string{filepath.Join(cgroupRoot, "memory/titus/t1"), filepath.Join(cgroupRoot, "pids/titus/t1")}
	if diff := cmp.Diff(want, CgroupDirs("/titus/t1")); diff != "" {
		t.Errorf("v1 cgroupfs (-want +got):\n%s", diff)
	}
	if got := CgroupDirs("bad:path"); got != nil {
		t.Errorf("a malformed path resolved to %v", got)
	}
}
