package gpu

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// NvidiaMajor is the character-device major of the NVIDIA driver's GPU and
// control nodes (nvidia-uvm has a dynamic major).
const NvidiaMajor = 195

// Node is a device node on the host.
type Node struct {
	// Name is the node's name in /dev (nvidia0, nvidiactl): the task sees
	// it as /dev/Name.
	Name string
	// HostPath is the node under the agent's device root.
	HostPath     string
	Major, Minor uint32
}

// ContainerPath is where the task sees the node.
func (n Node) ContainerPath() string { return "/dev/" + n.Name }

// Device is one GPU.
type Device struct {
	// Index is N of /dev/nvidiaN (the driver's minor number).
	Index int
	Node  Node
	// UUID, Model and MemoryMiB come from nvidia-smi; empty/0 without it.
	UUID      string
	Model     string
	MemoryMiB int64
}

// Inventory is what a host has.
type Inventory struct {
	// Devices by index.
	Devices []Device
	// Shared are the driver's nodes every GPU task gets (nvidiactl,
	// nvidia-uvm, nvidia-uvm-tools).
	Shared []Node
	// Warnings say what was found and left out.
	Warnings []string
}

// Model is the devices' model, several comma-separated ("" unknown).
func (inv Inventory) Model() string {
	var ms []string
	for _, d := range inv.Devices {
		if d.Model != "" && !slices.Contains(ms, d.Model) {
			ms = append(ms, d.Model)
		}
	}
	return strings.Join(ms, ",")
}

// MemoryMiB is the memory of the smallest device (0 unknown).
func (inv Inventory) MemoryMiB() int64 {
	var m int64
	for i, d := range inv.Devices {
		if i == 0 || d.MemoryMiB < m {
			m = d.MemoryMiB
		}
	}
	return m
}

// NodeInfo is what DevFS says of a path (never following a symlink).
type NodeInfo struct {
	CharDevice   bool
	Major, Minor uint32
}

// DevFS reads a device directory.
type DevFS interface {
	ReadDir(dir string) ([]string, error)
	Lstat(path string) (NodeInfo, error)
}

// OSDevFS is the real device directory.
type OSDevFS struct{}

func (OSDevFS) ReadDir(dir string) ([]string, error) {
	es, err := os.ReadDir(dir)
	names := make([]string, 0, len(es))
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names, err
}

func (OSDevFS) Lstat(path string) (NodeInfo, error) {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return NodeInfo{}, err
	}
	return NodeInfo{
		CharDevice: st.Mode&unix.S_IFMT == unix.S_IFCHR,
		Major:      unix.Major(uint64(st.Rdev)),
		Minor:      unix.Minor(uint64(st.Rdev)),
	}, nil
}

// SMI describes the GPUs (nvidia-smi or NVML).
type SMI interface {
	Query(ctx context.Context) ([]SMIGPU, error)
}

// SMIGPU is one row of nvidia-smi's answer.
type SMIGPU struct {
	Index     int
	UUID      string
	Model     string
	MemoryMiB int64
}

var gpuName = regexp.MustCompile(`^nvidia([0-9]+)$`)

// sharedNames are the driver nodes a GPU task needs besides its GPUs.
var sharedNames = []string{"nvidiactl", "nvidia-uvm", "nvidia-uvm-tools"}

// Discover finds the NVIDIA device nodes under devRoot and, with smi
// (may be nil), their model and memory. A host without any has an empty
// Inventory and no error. Only character devices count: a symlink or a
// regular file named nvidia0 is left out with a warning.
func Discover(ctx context.Context, devRoot string, fs DevFS, smi SMI) (Inventory, error) {
	var inv Inventory
	names, err := fs.ReadDir(devRoot)
	if err != nil {
		return inv, fmt.Errorf("gpu: read %s: %w", devRoot, err)
	}
	slices.Sort(names)
	node := func(name string) (Node, bool) {
		p := filepath.Join(devRoot, name)
		ni, err := fs.Lstat(p)
		if err != nil || !ni.CharDevice {
			inv.Warnings = append(inv.Warnings, fmt.Sprintf("%s: not a character device, left out", p))
			return Node{}, false
		}
		return Node{Name: name, HostPath: p, Major: ni.Major, Minor: ni.Minor}, true
	}
	for _, name := range names {
		m := gpuName.FindStringSubmatch(name)
		switch {
		case m != nil:
			idx, err := strconv.Atoi(m[1])
			if err != nil || idx > 255 {
				continue
			}
			if n, ok := node(name); ok {
				inv.Devices = append(inv.Devices, Device{Index: idx, Node: n})
			}
		case slices.Contains(sharedNames, name):
			if n, ok := node(name); ok {
				inv.Shared = append(inv.Shared, n)
			}
		}
	}
	slices.SortFunc(inv.Devices, func(a, b Device) int { return a.Index - b.Index })
	if len(inv.Devices) > 0 && !slices.ContainsFunc(inv.Shared, func(n Node) bool { return n.Name == "nvidiactl" }) {
		inv.Warnings = append(inv.Warnings, filepath.Join(devRoot, "nvidiactl")+" is missing: CUDA cannot open the GPUs")
	}
	if smi == nil || len(inv.Devices) == 0 {
		return inv, nil
	}
	rows, err := smi.Query(ctx)
	if err != nil {
		inv.Warnings = append(inv.Warnings, fmt.Sprintf("GPU model and memory unknown: %v", err))
		return inv, nil
	}
	for i, d := range inv.Devices {
		for _, r := range rows {
			if r.Index == d.Index {
				inv.Devices[i].UUID, inv.Devices[i].Model, inv.Devices[i].MemoryMiB = r.UUID, r.Model, r.MemoryMiB
			}
		}
	}
	return inv, nil
}
