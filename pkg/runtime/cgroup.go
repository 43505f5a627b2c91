package runtime

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/coreos/go-systemd/v22/unit"
)

// Cgroup drivers (Config.CgroupDriver): who creates a task's cgroup.
const (
	// CgroupDriverCgroupfs: runc makes /<namespace>/<id> in each hierarchy.
	CgroupDriverCgroupfs = "cgroupfs"
	// CgroupDriverSystemd: runc asks systemd for a transient scope
	// <namespace>-<id>.scope in the task's own slice (taskSlice) below
	// TaskSlice, as on hosts whose containerd is configured with
	// SystemdCgroup = true (see deploy/).
	CgroupDriverSystemd = "systemd"
)

// TaskSlice is the systemd slice holding every task's slice and scope.
const TaskSlice = "titus.slice"

// taskSlice is the slice of one task's scope:
// titus-<namespace>-<id>.slice, nested (by systemd's naming) in
// titus-<namespace>.slice in TaskSlice, with dashes in the namespace and
// id escaped as systemd escapes unit names, so they add no nesting.
//
// It exists for the task's memory accounting: systemd stops a scope and
// removes its cgroup as soon as the last process in it exits, usually
// before containerd's exit event reaches the agent, which then could not
// read the scope's memory.peak or memory.events. A slice stays until it is
// stopped, and its memory.peak and memory.events count everything charged
// and every OOM kill below it, so the agent reads them there after the
// exit and stops the slice when it deletes the task (Runtime.Delete).
func taskSlice(ns, id string) string {
	return strings.TrimSuffix(TaskSlice, ".slice") + "-" + unit.UnitNameEscape(ns) + "-" + unit.UnitNameEscape(id) + ".slice"
}

// checkCgroupDriver validates a driver name; empty is cgroupfs.
func checkCgroupDriver(d string) (string, error) {
	switch d {
	case "", CgroupDriverCgroupfs:
		return CgroupDriverCgroupfs, nil
	case CgroupDriverSystemd:
		return d, nil
	}
	return "", fmt.Errorf("runtime: cgroup driver %q: must be %s or %s", d, CgroupDriverCgroupfs, CgroupDriverSystemd)
}

// runcOptions are the runc shim's options for the driver (nil: the
// shim's defaults, cgroupfs).
func runcOptions(driver string) *options.Options {
	if driver == CgroupDriverSystemd {
		return &options.Options{SystemdCgroup: true}
	}
	return nil
}

// cgroupsPath is the OCI linux.cgroupsPath of a task for the driver:
// runc's systemd notation slice:prefix:name, or containerd's default
// /<namespace>/<id>.
func cgroupsPath(driver, ns, id string) string {
	if driver == CgroupDriverSystemd {
		return taskSlice(ns, id) + ":" + ns + ":" + id
	}
	return "/" + ns + "/" + id
}

// legacyScopePath is the cgroupsPath of a task made by agents before
// taskSlice: its scope directly in TaskSlice.
func legacyScopePath(ns, id string) string {
	return TaskSlice + ":" + ns + ":" + id
}

// accountingRelDirs are the cgroups (below a hierarchy's root) to read a
// task's memory accounting from: for a scope in its own taskSlice, that
// slice, which outlives the scope, then the scope; otherwise the cgroup
// itself. The slice holds nothing but the task's scope.
func accountingRelDirs(p string) []string {
	rel, ok := cgroupRelDir(p)
	if !ok {
		return nil
	}
	if parts := strings.Split(p, ":"); len(parts) == 3 && parts[0] == taskSlice(parts[1], parts[2]) {
		if slice, ok := expandSlice(parts[0]); ok {
			return []string{slice, rel}
		}
	}
	return []string{rel}
}

// cgroupRelDir is where a cgroupsPath lives below a hierarchy's root:
// itself for a plain path, and for systemd notation (slice:prefix:name)
// the slice expanded as systemd nests it (a-b.slice is a.slice/a-b.slice)
// with the scope prefix-name.scope below it.
func cgroupRelDir(p string) (string, bool) {
	if p == "" {
		return "", false
	}
	if !strings.Contains(p, ":") {
		return p, true
	}
	parts := strings.Split(p, ":")
	if len(parts) != 3 || parts[2] == "" {
		return "", false
	}
	slice, prefix, name := parts[0], parts[1], parts[2]
	if slice == "" {
		slice = "system.slice"
	}
	dir, ok := expandSlice(slice)
	if !ok {
		return "", false
	}
	unit := name
	if !strings.HasSuffix(name, ".slice") {
		unit = name + ".scope"
		if prefix != "" {
			unit = prefix + "-" + unit
		}
	}
	return filepath.Join(dir, unit), true
}

// expandSlice turns a slice name into its path: a-b-c.slice is
// /a.slice/a-b.slice/a-b-c.slice; -.slice is the root.
func expandSlice(slice string) (string, bool) {
	name, ok := strings.CutSuffix(slice, ".slice")
	if !ok || strings.Contains(name, "/") {
		return "", false
	}
	if name == "-" {
		return "/", true
	}
	if name == "" || strings.HasPrefix(name, "-") || strings.HasSuffix(name, "-") || strings.Contains(name, "--") {
		return "", false
	}
	path, prefix := "/", ""
	for _, comp := range strings.Split(name, "-") {
		prefix += comp
		path = filepath.Join(path, prefix+".slice")
		prefix += "-"
	}
	return path, true
}

// accountingFiles are the paths of one memory accounting file of a
// task (see accountingRelDirs), for each of its cgroups: v1 (in the
// controller's hierarchy) first, then v2 (the unified root).
func accountingFiles(root, cgroupsPath, v1Controller, v1File, v2File string) []string {
	var out []string
	for _, rel := range accountingRelDirs(cgroupsPath) {
		out = append(out, filepath.Join(root, v1Controller, rel, v1File), filepath.Join(root, rel, v2File))
	}
	return out
}

// CgroupDirs are the directories of a task's cgroup (its OCI
// linux.cgroupsPath, under either driver) that exist on this host: one
// per v1 hierarchy, or the one v2 directory. Readers of a task's cgroup
// (inspect, top) use it rather than guess the layout.
func CgroupDirs(cgroupsPath string) []string {
	rel, ok := cgroupRelDir(cgroupsPath)
	if !ok {
		return nil
	}
	var out []string
	if fi, err := os.Stat(filepath.Join(cgroupRoot, rel, "cgroup.procs")); err == nil && !fi.IsDir() {
		if _, err := os.Stat(filepath.Join(cgroupRoot, "cgroup.controllers")); err == nil {
			return []string{filepath.Join(cgroupRoot, rel)} // v2
		}
	}
	v1, _ := filepath.Glob(filepath.Join(cgroupRoot, "*", rel))
	for _, d := range v1 {
		if fi, err := os.Stat(d); err == nil && fi.IsDir() {
			out = append(out, d)
		}
	}
	return out
}
