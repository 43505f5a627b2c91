package gpu

import (
	"context"
	"errors"
	"io/fs"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// fakeDevFS is a device directory in memory; it records what was read.
type fakeDevFS struct {
	nodes map[string]NodeInfo // by path; a missing path is not a device
	names []string
	calls []string
}

func (f *fakeDevFS) ReadDir(dir string) ([]string, error) {
	f.calls = append(f.calls, "readdir "+dir)
	return f.names, nil
}

func (f *fakeDevFS) Lstat(p string) (NodeInfo, error) {
	f.calls = append(f.calls, "lstat "+p)
	n, ok := f.nodes[p]
	if !ok {
		return NodeInfo{}, fs.ErrNotExist
	}
	return n, nil
}

type fakeSMI struct {
	rows []SMIGPU
	err  error
}

func (f fakeSMI) Query(context.Context) ([]SMIGPU, error) { return f.rows, f.err }

func chr(major, minor uint32) NodeInfo { return NodeInfo{CharDevice: true, Major: major, Minor: minor} }

func TestDiscover(t *testing.T) {
	devs := &fakeDevFS{
		names: []string{"null", "nvidia1", "nvidia0", "nvidiactl", "nvidia-uvm", "nvidia-modeset", "nvidia2", "nvidia-caps"},
		nodes: map[string]NodeInfo{
			"/d/nvidia0": chr(195, 0), "/d/nvidia1": chr(195, 1), "/d/nvidiactl": chr(195, 255),
			"/d/nvidia-uvm": chr(511, 0),
			"/d/nvidia2":    {CharDevice: false}, // a symlink or a file planted there: left out
		},
	}
	smi := fakeSMI{rows: []SMIGPU{{Index: 0, UUID: "GPU-a", Model: "NVIDIA H100 80GB HBM3", MemoryMiB: 81559}, {Index: 1, UUID: "GPU-b", Model: "NVIDIA H100 80GB HBM3", MemoryMiB: 81559}}}
	got, err := Discover(context.Background(), "/d", devs, smi)
	if err != nil {
		t.Fatal(err)
	}
	want := Inventory{
		Devices: []Device{
			{Index: 0, Node: Node{Name: "nvidia0", HostPath: "/d/nvidia0", Major: 195, Minor: 0}, UUID: "GPU-a", Model: "NVIDIA H100 80GB HBM3", MemoryMiB: 81559},
			{Index: 1, Node: Node{Name: "nvidia1", HostPath: "/d/nvidia1", Major: 195, Minor: 1}, UUID: "GPU-b", Model: "NVIDIA H100 80GB HBM3", MemoryMiB: 81559},
		},
		Shared: []Node{
			{Name: "nvidia-uvm", HostPath: "/d/nvidia-uvm", Major: 511},
			{Name: "nvidiactl", HostPath: "/d/nvidiactl", Major: 195, Minor: 255},
		},
		Warnings: []string{"/d/nvidia2: not a character device, left out"},
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("inventory (-want +got):\n%s", d)
	}
	if got.Model() != "NVIDIA H100 80GB HBM3" || got.MemoryMiB() != 81559 {
		t.Errorf("model %q memory %d", got.Model(), got.MemoryMiB())
	}
}

func TestDiscoverWithoutSMIOrGPUs(t *testing.T) {
	devs := &fakeDevFS{names: []string{"nvidia0"}, nodes: map[string]NodeInfo{"/d/nvidia0": chr(195, 0)}}
	got, err := Discover(context.Background(), "/d", devs, fakeSMI{err: ErrNoSMI})
	if err != nil {
		t.Fatal(err)
	}
	want := Inventory{
		Devices:  []Device{{Index: 0, Node: Node{Name: "nvidia0", HostPath: "/d/nvidia0", Major: 195}}},
		Warnings: []string{"/d/nvidiactl is missing: CUDA cannot open the GPUs", "GPU model and memory unknown: " + ErrNoSMI.Error()},
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("inventory (-want +got):\n%s", d)
	}
	none, err := Discover(context.Background(), "/d", &fakeDevFS{names: []string{"null", "tty"}}, nil)
	if err != nil || len(none.Devices) != 0 || none.Model() != "" || none.MemoryMiB() != 0 {
		t.Errorf("a host without GPUs: %+v, %v", none, err)
	}
}

func TestParseSMI(t *testing.T) {
	out := "0, GPU-11111111-2222, Tesla T4, 15360\n1, GPU-3333, NVIDIA A10G, [N/A]\n\n"
	got, err := ParseSMI(out)
	if err != nil {
		t.Fatal(err)
	}
	want := []SMIGPU{{Index: 0, UUID: "GPU-11111111-2222", Model: "Tesla T4", MemoryMiB: 15360}, {Index: 1, UUID: "GPU-3333", Model: "NVIDIA A10G"}}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
	if _, err := ParseSMI("garbage"); err == nil {
		t.Error("a line that is not 4 fields parsed")
	}
}

func TestPick(t *testing.T) {
	inv := Inventory{Devices: []Device{{Index: 0}, {Index: 1}, {Index: 3}}}
	tests := []struct {
		name    string
		n       int
		inUse   map[int]bool
		want    []int
		wantErr error
	}{
		{"none asked", 0, nil, nil, nil},
		{"lowest first", 2, nil, []int{0, 1}, nil},
		{"skips used", 2, map[int]bool{0: true}, []int{1, 3}, nil},
		{"all", 3, nil, []int{0, 1, 3}, nil},
		{"more than free", 2, map[int]bool{1: true, 3: true}, nil, ErrNotEnough},
		{"more than the host has", 4, nil, nil, ErrNotEnough},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ds, err := Pick(inv, tt.n, tt.inUse)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err %v, want %v", err, tt.wantErr)
			}
			var got []int
			for _, d := range ds {
				got = append(got, d.Index)
			}
			if d := cmp.Diff(tt.want, got); d != "" {
				t.Errorf("(-want +got):\n%s", d)
			}
		})
	}
	_, err := Pick(inv, 2, map[int]bool{1: true, 3: true})
	if want := "not enough free GPUs: the task asks for 2, 1 of this host's 3 GPUs are free"; err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}
}
