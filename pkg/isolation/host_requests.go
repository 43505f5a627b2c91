package isolation

import (
	"path/filepath"
	"slices"
	"strings"

	"github.com/titus-agent/titus-agent/pkg/task"
)

// CheckHostRequests is the door check of the host mounts and devices a
// task asks for in its labels: the form of each request and whether the
// host's allowlists could grant it (allowed root, read-write only where
// the host says so), read from the strings alone: nothing on the host is
// looked at, symlinks included. The agent runs it before it accepts a task,
// so a request this host never grants is refused before an IP, a disk or
// a metadata listener is made for it. It adds one task.FieldError per
// broken rule to c. Passing it is necessary, not sufficient: the spec
// HostMounts resolves each path on the host and stages what it
// resolved.
func (o Options) CheckHostRequests(labels map[string]string, c *task.Checker) {
	field := "labels[" + LabelHostMounts + "]"
	for _, item := range splitList(labels[LabelHostMounts]) {
		parts := strings.Split(item, ":")
		if len(parts) < 2 || len(parts) > 3 || !filepath.IsAbs(parts[0]) || !filepath.IsAbs(parts[1]) {
			c.Failf(field, "host mount %q: want src:dst[:ro|rw] with absolute paths", item)
			continue
		}
		rw := len(parts) == 3 && parts[2] == "rw"
		if len(parts) == 3 && !rw && parts[2] != "ro" {
			c.Failf(field, "host mount %q: mode must be ro or rw", item)
			continue
		}
		src := filepath.Clean(parts[0])
		switch root, ok := allowedRoot(o.AllowedHostPaths, src); {
		case !ok:
			c.Failf(field, "host path %s: %v", src, ErrNotAllowed)
		case rw && !root.ReadWrite:
			c.Failf(field, "host path %s: read-write: %v (read-only here)", src, ErrNotAllowed)
		}
	}
	for _, d := range splitList(labels[LabelDevices]) {
		if !slices.Contains(o.AllowedDevices, filepath.Clean(d)) {
			c.Failf("labels["+LabelDevices+"]", "device %s: %v", d, ErrNotAllowed)
		}
	}
}
