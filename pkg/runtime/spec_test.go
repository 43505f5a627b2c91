package runtime

import (
	"context"
	"testing"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/google/go-cmp/cmp"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// fakeImage stands in for oci.WithImageConfig: cmd ["sh"], entrypoint none.
func fakeImage(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
	s.Process.Args = []string{"sh"}
	s.Process.Env = []string{"PATH=/bin", "HOME=/root"}
	s.Process.Cwd = "/"
	return nil
}

// specView is the part of a generated spec that specOpts decides.
type specView struct {
	Args       []string
	Env        []string
	Hostname   string
	Root       string
	CPU        *specs.LinuxCPU
	Memory     *specs.LinuxMemory
	Pids       *specs.LinuxPids
	NetNS      string
	ExtraMount []specs.Mount
	CgroupPath string
}

func ptr[T any](v T) *T { return &v }

func TestSpecOpts(t *testing.T) {
	resolv := specs.Mount{Destination: "/etc/resolv.conf", Type: "bind", Source: "/run/t1/resolv.conf", Options: []string{"rbind", "ro"}}
	readonly := func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		s.Root.Readonly = true
		return nil
	}
	tests := []struct {
		name string
		cs   ContainerSpec
		want specView
		ro   bool
	}{
		{
			name: "image defaults",
			cs:   ContainerSpec{ID: "t1"},
			want: specView{Args: []string{"sh"}, Env: []string{"PATH=/bin", "HOME=/root"}, Root: "rootfs"},
		},
		{
			name: "args env hostname",
			cs:   ContainerSpec{ID: "t1", Args: []string{"echo", "hi"}, Env: []string{"HOME=/home/x", "A=b"}, Hostname: "task-1"},
			want: specView{Args: []string{"echo", "hi"}, Env: []string{"PATH=/bin", "HOME=/home/x", "A=b"}, Hostname: "task-1", Root: "rootfs"},
		},
		{
			// Limits are isolation's (isolation.WithResources): the runtime
			// sets none of its own and applies the options it is given.
			name: "limits only from the options given",
			cs: ContainerSpec{ID: "t1", SpecOpts: []oci.SpecOpts{
				oci.WithCPUShares(1536), oci.WithMemoryLimit(256 << 20), oci.WithPidsLimit(100),
			}},
			want: specView{
				Args: []string{"sh"}, Env: []string{"PATH=/bin", "HOME=/root"}, Root: "rootfs",
				CPU:    &specs.LinuxCPU{Shares: ptr(uint64(1536))},
				Memory: &specs.LinuxMemory{Limit: ptr(int64(256 << 20))},
				Pids:   &specs.LinuxPids{Limit: ptr(int64(100))},
			},
		},
		{
			name: "netns mounts rootfs and extra opts",
			cs: ContainerSpec{
				ID: "t1", NetNSPath: "/run/netns/t1", Mounts: []specs.Mount{resolv},
				RootfsPath: "/var/lib/titus/t1/rootfs", SpecOpts: []oci.SpecOpts{readonly},
			},
			want: specView{
				Args: []string{"sh"}, Env: []string{"PATH=/bin", "HOME=/root"}, Root: "/var/lib/titus/t1/rootfs",
				NetNS: "/run/netns/t1", ExtraMount: []specs.Mount{resolv},
			},
			ro: true,
		},
	}
	ctx := namespaces.WithNamespace(context.Background(), "titus")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := oci.GenerateSpecWithPlatform(ctx, nil, "linux/amd64", &containers.Container{ID: tt.cs.ID}, specOpts(tt.cs, fakeImage)...)
			if err != nil {
				t.Fatalf("generate: %v", err)
			}
			got := specView{Args: s.Process.Args, Env: s.Process.Env, Hostname: s.Hostname, Root: s.Root.Path, CgroupPath: s.Linux.CgroupsPath}
			if r := s.Linux.Resources; r != nil {
				got.CPU, got.Memory, got.Pids = r.CPU, r.Memory, r.Pids
			}
			for _, ns := range s.Linux.Namespaces {
				if ns.Type == specs.NetworkNamespace {
					got.NetNS = ns.Path
				}
			}
			for _, m := range s.Mounts {
				if m.Type == "bind" {
					got.ExtraMount = append(got.ExtraMount, m)
				}
			}
			tt.want.CgroupPath = "/titus/t1"
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("spec (-want +got):\n%s", diff)
			}
			if s.Root.Readonly != tt.ro {
				t.Errorf("root readonly = %v, want %v", s.Root.Readonly, tt.ro)
			}
		})
	}
}

func TestContainerLabels(t *testing.T) {
	got := containerLabels(ContainerSpec{ID: "t1", Labels: map[string]string{"app": "web", LabelManaged: "false"}})
	want := map[string]string{"app": "web", LabelManaged: "true", LabelTaskID: "t1"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("labels (-want +got):\n%s", diff)
	}
}
