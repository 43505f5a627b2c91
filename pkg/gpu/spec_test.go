package gpu

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/google/go-cmp/cmp"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func ptr[T any](v T) *T { return &v }

func TestSpecOptsDirect(t *testing.T) {
	a := Assignment{
		Devices:     []Device{{Index: 1, Node: Node{Name: "nvidia1", HostPath: "/tmp/d/nvidia1", Major: 195, Minor: 1}}},
		Shared:      []Node{{Name: "nvidiactl", HostPath: "/tmp/d/nvidiactl", Major: 195, Minor: 255}},
		DriverFiles: []string{"/usr/bin/nvidia-smi"},
	}
	s := &oci.Spec{Process: &specs.Process{Env: []string{"PATH=/bin", "NVIDIA_VISIBLE_DEVICES=all"}}}
	if err := SpecOpts(a)(context.Background(), nil, nil, s); err != nil {
		t.Fatal(err)
	}
	mode := os.FileMode(0o666)
	want := &oci.Spec{
		Process: &specs.Process{Env: []string{"PATH=/bin", "NVIDIA_VISIBLE_DEVICES=1"}},
		Mounts:  []specs.Mount{{Destination: "/usr/bin/nvidia-smi", Type: "bind", Source: "/usr/bin/nvidia-smi", Options: []string{"rbind", "ro", "nosuid", "nodev"}}},
		Linux: &specs.Linux{
			Devices: []specs.LinuxDevice{
				{Path: "/dev/nvidia1", Type: "c", Major: 195, Minor: 1, FileMode: &mode, UID: ptr(uint32(0)), GID: ptr(uint32(0))},
				{Path: "/dev/nvidiactl", Type: "c", Major: 195, Minor: 255, FileMode: &mode, UID: ptr(uint32(0)), GID: ptr(uint32(0))},
			},
			Resources: &specs.LinuxResources{Devices: []specs.LinuxDeviceCgroup{
				{Allow: true, Type: "c", Major: ptr(int64(195)), Minor: ptr(int64(1)), Access: "rw"},
				{Allow: true, Type: "c", Major: ptr(int64(195)), Minor: ptr(int64(255)), Access: "rw"},
			}},
		},
	}
	if d := cmp.Diff(want, s); d != "" {
		t.Errorf("spec (-want +got):\n%s", d)
	}
}

func TestSpecOptsNoGPUsChangesNothing(t *testing.T) {
	s := &oci.Spec{}
	if err := SpecOpts(Assignment{Shared: []Node{{Name: "nvidiactl"}}})(context.Background(), nil, nil, s); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(&oci.Spec{}, s); d != "" {
		t.Errorf("a task without GPUs got (-want +got):\n%s", d)
	}
}

// A CDI spec as nvidia-ctk writes it, for /dev/null standing in for the GPUs.
const cdiSpec = `cdiVersion: "0.5.0"
kind: nvidia.com/gpu
devices:
- name: "0"
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
      hostPath: /dev/null
- name: "1"
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia1
      hostPath: /dev/null
containerEdits:
  env:
  - NVIDIA_CTK_LIBCUDA_DIR=/usr/lib/x86_64-linux-gnu
  deviceNodes:
  - path: /dev/nvidiactl
    hostPath: /dev/null
`

func TestCDI(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "nvidia.yaml"), []byte(cdiSpec), 0o644); err != nil {
		t.Fatal(err)
	}
	ds := []Device{{Index: 1, Node: Node{Name: "nvidia1"}}}
	names, err := CDINames([]string{dir}, ds)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]string{"nvidia.com/gpu=1"}, names); d != "" {
		t.Fatalf("names (-want +got):\n%s", d)
	}
	if n, err := CDINames([]string{dir}, []Device{{Index: 2}}); err != nil || n != nil {
		t.Errorf("a device the CDI spec does not name: %v, %v; want nil (no CDI)", n, err)
	}
	if n, err := CDINames([]string{filepath.Join(dir, "none")}, ds); err != nil || n != nil {
		t.Errorf("no CDI spec dir: %v, %v", n, err)
	}
	s := &oci.Spec{Process: &specs.Process{}, Linux: &specs.Linux{}}
	if err := SpecOpts(Assignment{Devices: ds, CDI: names, CDISpecDirs: []string{dir}})(context.Background(), nil, nil, s); err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, d := range s.Linux.Devices {
		paths = append(paths, d.Path)
	}
	if d := cmp.Diff([]string{"/dev/nvidiactl", "/dev/nvidia1"}, paths); d != "" {
		t.Errorf("CDI devices (-want +got):\n%s", d)
	}
	if d := cmp.Diff([]string{"NVIDIA_CTK_LIBCUDA_DIR=/usr/lib/x86_64-linux-gnu", "NVIDIA_VISIBLE_DEVICES=1"}, s.Process.Env); d != "" {
		t.Errorf("env (-want +got):\n%s", d)
	}
	if len(s.Linux.Resources.Devices) != 2 {
		t.Errorf("CDI cgroup rules: %+v", s.Linux.Resources.Devices)
	}
}
