package taskrunner

import (
	"slices"

	"github.com/titus-agent/titus-agent/pkg/gpu"
)

// GPUs is the record of the GPUs a task was given, written with the task
// before anything else happens (Manager.Launch): the container is built
// from it, and a restarted agent knows from it which devices are taken.
type GPUs struct {
	Devices []GPUDevice `json:"devices"`
	// Shared are the driver nodes every GPU task gets (nvidiactl, ...).
	Shared []GPUNode `json:"shared,omitempty"`
	// DriverFiles are host files mounted read-only at the same path.
	DriverFiles []string `json:"driverFiles,omitempty"`
	// CDI, when set, are the devices' CDI names, injected from the CDI
	// specs in CDISpecDirs instead of Shared and DriverFiles.
	CDI         []string `json:"cdi,omitempty"`
	CDISpecDirs []string `json:"cdiSpecDirs,omitempty"`
}

// GPUDevice is one GPU of a task.
type GPUDevice struct {
	Index int     `json:"index"`
	Node  GPUNode `json:"node"`
	UUID  string  `json:"uuid,omitempty"`
}

// GPUNode is a device node on the host.
type GPUNode struct {
	Name     string `json:"name"`
	HostPath string `json:"hostPath"`
	Major    uint32 `json:"major"`
	Minor    uint32 `json:"minor"`
}

// Indices are the task's GPU indices (nil for nil).
func (g *GPUs) Indices() []int {
	if g == nil {
		return nil
	}
	out := make([]int, len(g.Devices))
	for i, d := range g.Devices {
		out[i] = d.Index
	}
	return out
}

// GPUsFrom records an assignment.
func GPUsFrom(a gpu.Assignment) *GPUs {
	node := func(n gpu.Node) GPUNode {
		return GPUNode{Name: n.Name, HostPath: n.HostPath, Major: n.Major, Minor: n.Minor}
	}
	g := &GPUs{DriverFiles: slices.Clone(a.DriverFiles), CDI: slices.Clone(a.CDI), CDISpecDirs: slices.Clone(a.CDISpecDirs)}
	for _, d := range a.Devices {
		g.Devices = append(g.Devices, GPUDevice{Index: d.Index, Node: node(d.Node), UUID: d.UUID})
	}
	for _, n := range a.Shared {
		g.Shared = append(g.Shared, node(n))
	}
	return g
}

// Assignment is the recorded GPUs as package gpu models them.
func (g *GPUs) Assignment() gpu.Assignment {
	if g == nil {
		return gpu.Assignment{}
	}
	node := func(n GPUNode) gpu.Node {
		return gpu.Node{Name: n.Name, HostPath: n.HostPath, Major: n.Major, Minor: n.Minor}
	}
	a := gpu.Assignment{DriverFiles: slices.Clone(g.DriverFiles), CDI: slices.Clone(g.CDI), CDISpecDirs: slices.Clone(g.CDISpecDirs)}
	for _, d := range g.Devices {
		a.Devices = append(a.Devices, gpu.Device{Index: d.Index, Node: node(d.Node), UUID: d.UUID})
	}
	for _, n := range g.Shared {
		a.Shared = append(a.Shared, node(n))
	}
	return a
}
