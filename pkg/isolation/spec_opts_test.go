package isolation

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/google/go-cmp/cmp"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/titus-agent/titus-agent/pkg/task"
)

func ptr[T any](v T) *T { return &v }

// baseSpec is what the runtime hands over before our options: a default
// Linux spec with the image's command.
func baseSpec() *oci.Spec {
	return &oci.Spec{
		Process: &specs.Process{
			Args: []string{"/bin/sh", "-c", "true"},
			Capabilities: &specs.LinuxCapabilities{
				Bounding:    []string{"CAP_CHOWN", "CAP_NET_RAW", "CAP_SYS_ADMIN"},
				Inheritable: []string{"CAP_NET_RAW"},
			},
		},
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "rw"}},
		},
		Linux: &specs.Linux{
			MaskedPaths:   []string{"/proc/kcore", "/sys/devices/system/cpu/cpu0/thermal_throttle"},
			ReadonlyPaths: []string{"/proc/sys"},
		},
	}
}

func apply(t *testing.T, opts []oci.SpecOpts) (*oci.Spec, error) {
	t.Helper()
	s := baseSpec()
	err := oci.ApplyOpts(context.Background(), nil, &containers.Container{ID: "t1"}, s, opts...)
	return s, err
}

func TestSpecOptsHardening(t *testing.T) {
	spec := &task.Spec{ID: "t1", Resources: task.Resources{CPUMillicores: 500, MemoryMiB: 256, Pids: 100}}
	s, err := apply(t, SpecOpts(spec, Options{}))
	if err != nil {
		t.Fatal(err)
	}
	if s.Linux.Seccomp == nil || s.Linux.Seccomp.DefaultAction != specs.ActErrno {
		t.Fatalf("seccomp = %+v, want containerd's default profile", s.Linux.Seccomp)
	}
	for _, sc := range s.Linux.Seccomp.Syscalls {
		if sc.Action == specs.ActAllow && (slices.Contains(sc.Names, "mount") || slices.Contains(sc.Names, "init_module")) {
			t.Errorf("seccomp allows %v without CAP_SYS_ADMIN/CAP_SYS_MODULE", sc.Names)
		}
	}
	s.Linux.Seccomp = nil
	want := &oci.Spec{
		Process: &specs.Process{
			Args: []string{InitMountPath, "-s", "-g", "--", "/bin/sh", "-c", "true"},
			Capabilities: &specs.LinuxCapabilities{
				Bounding:  DefaultCapabilities,
				Effective: DefaultCapabilities,
				Permitted: DefaultCapabilities,
			},
			NoNewPrivileges: true,
			OOMScoreAdj:     ptr(DefaultOOMScoreAdj),
		},
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "ro"}},
			{Destination: InitMountPath, Type: "bind", Source: DefaultInitPath, Options: []string{"rbind", "ro", "nosuid", "nodev"}},
		},
		Linux: &specs.Linux{
			MaskedPaths: append([]string{"/proc/kcore", "/sys/devices/system/cpu/cpu0/thermal_throttle"},
				slices.DeleteFunc(slices.Clone(MaskedPaths), func(p string) bool { return p == "/proc/kcore" })...),
			ReadonlyPaths: ReadonlyPaths[3:4:4], // "/proc/sys" first, as in the base
			Resources: &specs.LinuxResources{
				CPU:    &specs.LinuxCPU{Shares: ptr(uint64(512)), Quota: ptr(int64(50000)), Period: ptr(CFSPeriod)},
				Memory: &specs.LinuxMemory{Limit: ptr(int64(256 << 20)), Swap: ptr(int64(256 << 20))},
				Pids:   &specs.LinuxPids{Limit: ptr(int64(100))},
			},
		},
	}
	want.Linux.ReadonlyPaths = []string{"/proc/sys", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sysrq-trigger"}
	if diff := cmp.Diff(want, s); diff != "" {
		t.Errorf("spec (-want +got):\n%s", diff)
	}
}

func TestSpecOptsVariants(t *testing.T) {
	for _, tc := range []struct {
		name  string
		res   task.Resources
		opts  Options
		extra []oci.SpecOpts // applied after SpecOpts
		check func(*oci.Spec) any
		want  any
	}{
		{
			name:  "burst sets shares only",
			res:   task.Resources{CPUMillicores: 2000, CPUBurst: true},
			check: func(s *oci.Spec) any { return s.Linux.Resources.CPU },
			want:  &specs.LinuxCPU{Shares: ptr(uint64(2048))},
		},
		{
			name:  "tiny cpu gets the kernel's minimum shares",
			res:   task.Resources{CPUMillicores: 1},
			check: func(s *oci.Spec) any { return s.Linux.Resources.CPU },
			want:  &specs.LinuxCPU{Shares: ptr(uint64(2)), Quota: ptr(int64(100)), Period: ptr(CFSPeriod)},
		},
		{
			name: "cpu quota memory pids",
			res:  task.Resources{CPUMillicores: 1500, MemoryMiB: 256, Pids: 100},
			check: func(s *oci.Spec) any {
				return []any{s.Linux.Resources.CPU, s.Linux.Resources.Memory, s.Linux.Resources.Pids}
			},
			want: []any{
				&specs.LinuxCPU{Shares: ptr(uint64(1536)), Quota: ptr(int64(150000)), Period: ptr(uint64(100000))},
				&specs.LinuxMemory{Limit: ptr(int64(256 << 20)), Swap: ptr(int64(256 << 20))},
				&specs.LinuxPids{Limit: ptr(int64(100))},
			},
		},
		{
			name:  "small burst has shares only",
			res:   task.Resources{CPUMillicores: 250, CPUBurst: true},
			check: func(s *oci.Spec) any { return s.Linux.Resources.CPU },
			want:  &specs.LinuxCPU{Shares: ptr(uint64(256))},
		},
		{
			name:  "tiny burst gets the kernel's minimum shares",
			res:   task.Resources{CPUMillicores: 1, CPUBurst: true},
			check: func(s *oci.Spec) any { return s.Linux.Resources.CPU },
			want:  &specs.LinuxCPU{Shares: ptr(uint64(2))},
		},
		{
			name:  "burst allowance within the quota",
			res:   task.Resources{CPUMillicores: 1500, CPUBurstMillicores: 500},
			check: func(s *oci.Spec) any { return s.Linux.Resources.CPU },
			want:  &specs.LinuxCPU{Shares: ptr(uint64(1536)), Quota: ptr(int64(150000)), Period: ptr(CFSPeriod), Burst: ptr(uint64(50000))},
		},
		{
			name:  "cpuset pinning",
			res:   task.Resources{CPUMillicores: 1000},
			opts:  Options{CPUSet: "1"},
			check: func(s *oci.Spec) any { return s.Linux.Resources.CPU },
			want:  &specs.LinuxCPU{Shares: ptr(uint64(1024)), Quota: ptr(int64(100000)), Period: ptr(CFSPeriod), Cpus: "1"},
		},
		{
			name:  "no init keeps args",
			opts:  Options{NoInit: true, OOMScoreAdj: 900},
			check: func(s *oci.Spec) any { return []any{s.Process.Args, *s.Process.OOMScoreAdj, len(s.Mounts)} },
			want:  []any{[]string{"/bin/sh", "-c", "true"}, 900, 2},
		},
		{
			name:  "native system calls only by default",
			check: func(s *oci.Spec) any { return s.Linux.Seccomp.Architectures },
			want:  []specs.Arch(nil),
		},
		{
			name:  "32-bit system calls when allowed",
			opts:  Options{Compat32Bit: true},
			check: func(s *oci.Spec) any { return s.Linux.Seccomp.Architectures },
			want:  []specs.Arch{specs.ArchX86_64, specs.ArchX86, specs.ArchX32},
		},
		{
			name:  "custom init path",
			opts:  Options{InitPath: "/opt/tini"},
			check: func(s *oci.Spec) any { return s.Mounts[2].Source },
			want:  "/opt/tini",
		},
		{
			name: "user namespace",
			extra: []oci.SpecOpts{WithUserNS(&UserNS{
				UIDMap: []specs.LinuxIDMapping{{ContainerID: 0, HostID: 100000, Size: 65536}},
				GIDMap: []specs.LinuxIDMapping{{ContainerID: 0, HostID: 100000, Size: 65536}},
			})},
			check: func(s *oci.Spec) any { return []any{s.Linux.Namespaces, s.Linux.UIDMappings, s.Linux.GIDMappings} },
			want: []any{
				[]specs.LinuxNamespace{{Type: specs.UserNamespace}},
				[]specs.LinuxIDMapping{{ContainerID: 0, HostID: 100000, Size: 65536}},
				[]specs.LinuxIDMapping{{ContainerID: 0, HostID: 100000, Size: 65536}},
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := apply(t, append(SpecOpts(&task.Spec{ID: "t1", Resources: tc.res}, tc.opts), tc.extra...))
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, tc.check(s)); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestSpecOptsIdempotentInit(t *testing.T) {
	opts := SpecOpts(&task.Spec{ID: "t1"}, Options{})
	s, err := apply(t, append(opts, opts...))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{InitMountPath, "-s", "-g", "--", "/bin/sh", "-c", "true"}, s.Process.Args); diff != "" {
		t.Errorf("args (-want +got):\n%s", diff)
	}
}

func TestSpecOptsDevices(t *testing.T) {
	allowed := Options{AllowedDevices: []string{"/dev/null"}}
	for _, tc := range []struct {
		name     string
		labels   map[string]string
		opts     Options
		wantDevs []string
		wantErr  error
	}{
		{name: "nothing asked, nothing given", opts: allowed},
		{name: "allowed device", labels: map[string]string{LabelDevices: "/dev/null"}, opts: allowed, wantDevs: []string{"/dev/null"}},
		{name: "device not allowed", labels: map[string]string{LabelDevices: "/dev/sda"}, opts: allowed, wantErr: ErrNotAllowed},
		{name: "no allowlist", labels: map[string]string{LabelDevices: "/dev/null"}, wantErr: ErrNotAllowed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.opts.NoInit = true
			s, err := apply(t, SpecOpts(&task.Spec{ID: "t1", Labels: tc.labels}, tc.opts))
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if err != nil {
				return
			}
			var devs []string
			for _, d := range s.Linux.Devices {
				devs = append(devs, d.Path)
			}
			if diff := cmp.Diff(tc.wantDevs, devs); diff != "" {
				t.Errorf("devices (-want +got):\n%s", diff)
			}
		})
	}
}

// TestSpecOptsIgnoresHostMounts: host paths reach a task only as the
// mounts HostMounts staged, never from the label through the spec.
func TestSpecOptsIgnoresHostMounts(t *testing.T) {
	dir := t.TempDir()
	s, err := apply(t, SpecOpts(&task.Spec{ID: "t1", Labels: map[string]string{LabelHostMounts: dir + ":/d"}},
		Options{NoInit: true, AllowedHostPaths: []HostPath{{Path: dir}}}))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(baseSpec().Mounts[:1], s.Mounts[:1]); diff != "" || len(s.Mounts) != 2 {
		t.Errorf("mounts %v, want the base's only", s.Mounts)
	}
}

func TestParseHostPath(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    HostPath
		wantErr bool
	}{
		{in: "/srv/data", want: HostPath{Path: "/srv/data"}},
		{in: "/srv/data/:ro", want: HostPath{Path: "/srv/data"}},
		{in: "/srv/data:rw", want: HostPath{Path: "/srv/data", ReadWrite: true}},
		{in: "srv", wantErr: true},
		{in: "/srv:wr", wantErr: true},
	} {
		got, err := ParseHostPath(tc.in)
		if (err != nil) != tc.wantErr {
			t.Errorf("ParseHostPath(%q) err = %v, want error %v", tc.in, err, tc.wantErr)
			continue
		}
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("ParseHostPath(%q) (-want +got):\n%s", tc.in, diff)
		}
	}
}

func TestTaskCapabilitiesXFSQuota(t *testing.T) {
	ns := map[string]string{LabelUserNS: "true"}
	for _, tc := range []struct {
		name       string
		spec       task.Spec
		o          Options
		wantFOwner bool
	}{
		{name: "loop backend keeps it", o: Options{}, wantFOwner: true},
		{name: "xfs, no user namespace: dropped", o: Options{XFSQuota: true}},
		{name: "xfs, label but no disk (refused later): dropped", spec: task.Spec{Labels: ns}, o: Options{XFSQuota: true}},
		{name: "xfs in a user namespace keeps it", spec: task.Spec{Labels: ns, Resources: task.Resources{DiskMiB: 64}}, o: Options{XFSQuota: true}, wantFOwner: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.o.NoInit = true
			s, err := apply(t, SpecOpts(&tc.spec, tc.o))
			if err != nil {
				t.Fatal(err)
			}
			for _, set := range [][]string{s.Process.Capabilities.Bounding, s.Process.Capabilities.Effective, s.Process.Capabilities.Permitted} {
				if got := slices.Contains(set, "CAP_FOWNER"); got != tc.wantFOwner {
					t.Errorf("CAP_FOWNER in %v = %v, want %v", set, got, tc.wantFOwner)
				}
			}
			if !slices.Contains(DefaultCapabilities, "CAP_FOWNER") {
				t.Fatal("DefaultCapabilities lost CAP_FOWNER: TaskCapabilities must not modify it")
			}
		})
	}
}
