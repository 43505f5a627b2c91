package isolation

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/titus-agent/titus-agent/pkg/task"
)

func TestHasCPUBurst(t *testing.T) {
	for _, tc := range []struct {
		name    string
		files   []string // under the cgroup root
		release string
		want    bool
	}{
		{name: "v1 with the knob", files: []string{"cpu/cpu.cfs_quota_us", "cpu/cpu.cfs_burst_us"}, want: true},
		{name: "v1 cpu,cpuacct with the knob", files: []string{"cpu,cpuacct/cpu.cfs_burst_us"}, want: true},
		{name: "v1 before 5.14", files: []string{"cpu/cpu.cfs_quota_us"}, release: "6.1.0", want: false},
		{name: "v2 with the knob", files: []string{"cgroup.controllers", "system.slice/cpu.max", "system.slice/cpu.max.burst"}, release: "5.10.0", want: true},
		{name: "v2 before 5.14", files: []string{"cgroup.controllers", "system.slice/cpu.max"}, release: "6.1.0", want: false},
		{name: "v2 no cpu controller below the root yet, new kernel", files: []string{"cgroup.controllers", "init.scope/cgroup.procs"}, release: "6.1.0-57-cloud-amd64", want: true},
		{name: "v2 no cpu controller below the root yet, old kernel", files: []string{"cgroup.controllers"}, release: "5.10.205-195.807.amzn2.x86_64", want: false},
		{name: "v2 unknown release", files: []string{"cgroup.controllers"}, release: "", want: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			for _, f := range tc.files {
				p := filepath.Join(root, f)
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, nil, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if got := HasCPUBurst(root, tc.release); got != tc.want {
				t.Errorf("HasCPUBurst = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestReleaseAtLeast(t *testing.T) {
	for rel, want := range map[string]bool{"5.14.0": true, "5.13.19": false, "6.1.0-57-cloud-amd64": true, "4.19": false, "10.0": true, "5": false, "x": false} {
		if got := releaseAtLeast(rel, 5, 14); got != want {
			t.Errorf("releaseAtLeast(%q, 5, 14) = %v, want %v", rel, got, want)
		}
	}
}

func TestCheckCPUBurst(t *testing.T) {
	for _, tc := range []struct {
		name   string
		o      Options
		res    task.Resources
		fields []string
	}{
		{name: "kernel has it", res: task.Resources{CPUMillicores: 500, CPUBurstMillicores: 500}},
		{name: "kernel lacks it, none asked", o: Options{NoCPUBurst: true}, res: task.Resources{CPUMillicores: 500}},
		{name: "kernel lacks it", o: Options{NoCPUBurst: true}, res: task.Resources{CPUMillicores: 500, CPUBurstMillicores: 1},
			fields: []string{"resources.cpu_burst_millicores"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &task.Checker{}
			tc.o.CheckCPUBurst(tc.res, c)
			var got []string
			for _, f := range c.Fields() {
				got = append(got, f.Field)
			}
			if diff := cmp.Diff(tc.fields, got); diff != "" {
				t.Errorf("fields (-want +got):\n%s", diff)
			}
		})
	}
}
