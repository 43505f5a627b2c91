package isolation

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/titus-agent/titus-agent/pkg/task"
)

// The door check refuses what the spec option refuses, field by field,
// before anything exists for the task; what it lets through (on a host
// without symlinks in the way) the spec option grants.
func TestCheckHostRequests(t *testing.T) {
	dir := t.TempDir()
	data, tools := filepath.Join(dir, "data"), filepath.Join(dir, "tools")
	for _, d := range []string{filepath.Join(data, "x"), tools, filepath.Join(dir, "database")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	allowed := Options{AllowedHostPaths: []HostPath{{Path: data, ReadWrite: true}, {Path: tools + "/"}}, AllowedDevices: []string{"/dev/null"}}
	const mounts, devs = "labels[" + LabelHostMounts + "]", "labels[" + LabelDevices + "]"
	for _, tc := range []struct {
		name   string
		labels map[string]string
		opts   Options
		want   []*task.FieldError
	}{
		{name: "nothing asked", opts: allowed},
		{name: "nothing asked, nothing allowed"},
		{name: "allowed paths and device", opts: allowed, labels: map[string]string{
			LabelHostMounts: data + "/x:/data, " + data + ":/rw:rw," + tools + ":/t:ro", LabelDevices: "/dev/null"}},
		{name: "no allowlist", labels: map[string]string{LabelHostMounts: data + ":/d"},
			want: []*task.FieldError{{Field: mounts, Rule: "host path " + data + ": not allowed on this host"}}},
		{name: "a sibling with the allowed path as prefix", opts: allowed, labels: map[string]string{LabelHostMounts: dir + "/database:/d"},
			want: []*task.FieldError{{Field: mounts, Rule: "host path " + dir + "/database: not allowed on this host"}}},
		{name: "escape via ..", opts: allowed, labels: map[string]string{LabelHostMounts: data + "/../../etc:/d"},
			want: []*task.FieldError{{Field: mounts, Rule: "host path " + filepath.Dir(dir) + "/etc: not allowed on this host"}}},
		{name: "the host's root", opts: allowed, labels: map[string]string{LabelHostMounts: "/:/host:rw"},
			want: []*task.FieldError{{Field: mounts, Rule: "host path /: not allowed on this host"}}},
		{name: "read-write where the host says read-only", opts: allowed, labels: map[string]string{LabelHostMounts: tools + ":/t:rw"},
			want: []*task.FieldError{{Field: mounts, Rule: "host path " + tools + ": read-write: not allowed on this host (read-only here)"}}},
		{name: "relative source", opts: allowed, labels: map[string]string{LabelHostMounts: "srv/data:/d"},
			want: []*task.FieldError{{Field: mounts, Rule: `host mount "srv/data:/d": want src:dst[:ro|rw] with absolute paths`}}},
		{name: "no destination", opts: allowed, labels: map[string]string{LabelHostMounts: data},
			want: []*task.FieldError{{Field: mounts, Rule: `host mount "` + data + `": want src:dst[:ro|rw] with absolute paths`}}},
		{name: "bad mode", opts: allowed, labels: map[string]string{LabelHostMounts: data + ":/d:rwx"},
			want: []*task.FieldError{{Field: mounts, Rule: `host mount "` + data + `:/d:rwx": mode must be ro or rw`}}},
		{name: "device not allowed, via ..", opts: allowed, labels: map[string]string{LabelDevices: "/dev/null/../sda"},
			want: []*task.FieldError{{Field: devs, Rule: "device /dev/null/../sda: not allowed on this host"}}},
		{name: "every mistake at once", opts: allowed, labels: map[string]string{LabelHostMounts: "/etc:/e," + data + ":/ok,/root:/r", LabelDevices: "/dev/sda,/dev/null,/dev/kmsg"},
			want: []*task.FieldError{
				{Field: mounts, Rule: "host path /etc: not allowed on this host"},
				{Field: mounts, Rule: "host path /root: not allowed on this host"},
				{Field: devs, Rule: "device /dev/sda: not allowed on this host"},
				{Field: devs, Rule: "device /dev/kmsg: not allowed on this host"},
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &task.Checker{}
			tc.opts.CheckHostRequests(tc.labels, c)
			if diff := cmp.Diff(tc.want, c.Fields()); diff != "" {
				t.Errorf("fields (-want +got):\n%s", diff)
			}
			// What grants the request agrees: HostMounts and the spec
			// option refuse exactly what the door refuses.
			h, _ := newFakeHostMounts(t, tc.opts.AllowedHostPaths)
			_, err := h.Stage("t1", tc.labels)
			if err == nil {
				o := tc.opts
				o.NoInit = true
				_, err = apply(t, SpecOpts(&task.Spec{ID: "t1", Labels: tc.labels}, o))
			}
			if (err != nil) != (len(tc.want) > 0) {
				t.Errorf("host mounts and spec option: %v; the door refused %d fields", err, len(tc.want))
			}
		})
	}
}
