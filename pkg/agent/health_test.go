package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

type fakeVersion struct{ err error }

func (f fakeVersion) Version(context.Context) (string, error) { return "2.2.9", f.err }

type fakeFree struct{ n int }

func (f fakeFree) FreeAddresses(context.Context) (int, error) { return f.n, nil }

func TestHealthChecks(t *testing.T) {
	goodRoot := t.TempDir()
	for _, p := range []string{"proc/self/ns", "sys/fs/cgroup"} {
		os.MkdirAll(filepath.Join(goodRoot, p), 0o755)
	}
	for _, f := range []string{"proc/self/ns/net", "proc/self/ns/mnt", "proc/self/ns/pid", "proc/self/ns/uts", "proc/self/ns/ipc", "sys/fs/cgroup/cgroup.controllers"} {
		os.WriteFile(filepath.Join(goodRoot, f), nil, 0o644)
	}
	os.WriteFile(filepath.Join(goodRoot, "proc/filesystems"), []byte("nodev\toverlay\n"), 0o644)
	os.WriteFile(filepath.Join(goodRoot, "sys/fs/cgroup/cgroup.controllers"), []byte("cpuset cpu io memory hugetlb pids rdma misc\n"), 0o644)
	// A v2 host whose kernel lacks the memory controller.
	noMemory := t.TempDir()
	os.CopyFS(noMemory, os.DirFS(goodRoot))
	os.WriteFile(filepath.Join(noMemory, "sys/fs/cgroup/cgroup.controllers"), []byte("cpuset cpu io pids\n"), 0o644)
	now := func() time.Time { return time.Date(2026, 11, 24, 0, 0, 0, 0, time.UTC) }
	tests := []struct {
		name string
		h    *hostHealth
		want map[string]bool
	}{
		{"healthy", &hostHealth{rt: fakeVersion{}, net: fakeFree{5}, root: goodRoot, now: now},
			map[string]bool{"containerd": true, "network capacity": true, "clock": true, "kernel": true}},
		{"containerd down, no addresses", &hostHealth{rt: fakeVersion{errors.New("dial: refused")}, net: fakeFree{0}, root: goodRoot, now: now},
			map[string]bool{"containerd": false, "network capacity": false, "clock": true, "kernel": true}},
		{"broken clock, no overlayfs or cgroups", &hostHealth{rt: fakeVersion{}, root: t.TempDir(), now: func() time.Time { return time.Unix(0, 0) }},
			map[string]bool{"containerd": true, "clock": false, "kernel": false}},
		{"cgroup v2 without memory", &hostHealth{rt: fakeVersion{}, root: noMemory, now: now},
			map[string]bool{"containerd": true, "clock": true, "kernel": false}},
		{"missing dir", &hostHealth{rt: fakeVersion{}, root: goodRoot, now: now, dirs: []string{"/nonexistent-dir"}},
			map[string]bool{"containerd": true, "disk /nonexistent-dir": false, "clock": true, "kernel": true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := map[string]bool{}
			for _, c := range tt.h.Check(context.Background()) {
				got[c.Name] = c.Ok
				if c.Detail == "" {
					t.Errorf("%s has no detail", c.Name)
				}
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Fatalf("checks (-want +got):\n%s", diff)
			}
		})
	}
}
