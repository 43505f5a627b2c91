package taskrunner

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/titus-agent/titus-agent/pkg/isolation"
	"github.com/titus-agent/titus-agent/pkg/runtime"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// fakeDisks records disk and image-view calls.
type fakeDisks struct {
	calls    []string
	setupErr error
	viewErr  error
}

func (f *fakeDisks) ImageView(_ context.Context, taskID string, image runtime.Image) ([]string, error) {
	f.calls = append(f.calls, "view "+taskID+" "+image.Name)
	return []string{"/l/2", "/l/1"}, f.viewErr
}

func (f *fakeDisks) RemoveView(_ context.Context, taskID string) error {
	f.calls = append(f.calls, "unview "+taskID)
	return nil
}

func (f *fakeDisks) Setup(_ context.Context, taskID string, sizeMiB int64, lowers []string) (*isolation.Disk, error) {
	f.calls = append(f.calls, fmt.Sprintf("setup %s %d %v", taskID, sizeMiB, lowers))
	return &isolation.Disk{TaskID: taskID, Backend: isolation.BackendLoopExt4, ImagePath: "/d/t1.img", RootfsPath: "/d/rootfs/t1"}, f.setupErr
}

var testUserNS = &isolation.UserNS{
	UIDMap: []specs.LinuxIDMapping{{ContainerID: 0, HostID: 1 << 24, Size: 65536}},
	GIDMap: []specs.LinuxIDMapping{{ContainerID: 0, HostID: 1 << 24, Size: 65536}},
}

func (f *fakeDisks) SetupUserNS(_ context.Context, taskID string, sizeMiB int64, lowers []string) (*isolation.Disk, error) {
	f.calls = append(f.calls, fmt.Sprintf("setup-userns %s %d %v", taskID, sizeMiB, lowers))
	return &isolation.Disk{TaskID: taskID, Backend: isolation.BackendLoopExt4, ImagePath: "/d/t1.img", RootfsPath: "/d/rootfs/t1", UserNS: testUserNS}, f.setupErr
}

func (f *fakeDisks) Teardown(_ context.Context, taskID string) error {
	f.calls = append(f.calls, "teardown "+taskID)
	return nil
}

func TestDiskHook(t *testing.T) {
	withDisk := &task.Spec{ID: "t1", Image: "img", Resources: task.Resources{DiskMiB: 100}}
	noDisk := &task.Spec{ID: "t1", Image: "img"}
	info := &DiskInfo{Backend: isolation.BackendLoopExt4, ImagePath: "/d/t1.img", MountPath: "/d/rootfs/t1"}
	userNSLabel := map[string]string{isolation.LabelUserNS: "true"}
	withUserNS := &task.Spec{ID: "t1", Image: "img", Resources: task.Resources{DiskMiB: 100}, Labels: userNSLabel}
	nsInfo := &DiskInfo{Backend: isolation.BackendLoopExt4, ImagePath: "/d/t1.img", MountPath: "/d/rootfs/t1", UserNS: UserNSFrom(testUserNS)}
	for _, tc := range []struct {
		name       string
		spec       *task.Spec
		f          *fakeDisks
		want       []string
		wantDisk   *DiskInfo
		wantErr    bool
		wantReason task.Reason
		stopRes    *Resources
		wantStops  []string
		unresolved bool // no image from the image hook
	}{
		{
			name:      "disk asked",
			spec:      withDisk,
			f:         &fakeDisks{},
			want:      []string{"view t1 img", "setup t1 100 [/l/2 /l/1]"},
			wantDisk:  info,
			stopRes:   &Resources{Disk: info},
			wantStops: []string{"teardown t1", "unview t1"},
		},
		{
			name:    "no disk asked",
			spec:    noDisk,
			f:       &fakeDisks{},
			stopRes: &Resources{},
		},
		{
			name:      "user namespace asked",
			spec:      withUserNS,
			f:         &fakeDisks{},
			want:      []string{"view t1 img", "setup-userns t1 100 [/l/2 /l/1]"},
			wantDisk:  nsInfo,
			stopRes:   &Resources{Disk: nsInfo},
			wantStops: []string{"teardown t1", "unview t1"},
		},
		{
			name:       "user namespace without a disk is refused",
			spec:       &task.Spec{ID: "t1", Image: "img", Labels: userNSLabel},
			f:          &fakeDisks{},
			wantErr:    true,
			wantReason: task.ReasonInvalidSpec,
			stopRes:    &Resources{},
		},
		{
			name:       "image not resolved",
			spec:       withDisk,
			f:          &fakeDisks{},
			unresolved: true,
			wantErr:    true,
			wantReason: task.ReasonPlatformError,
			stopRes:    &Resources{},
			wantStops:  []string{"teardown t1", "unview t1"},
		},
		{
			name:      "view fails",
			spec:      withDisk,
			f:         &fakeDisks{viewErr: errors.New("no image")},
			want:      []string{"view t1 img"},
			wantErr:   true,
			stopRes:   &Resources{},
			wantStops: []string{"teardown t1", "unview t1"},
		},
		{
			name:      "setup fails half-way, disk still recorded",
			spec:      withDisk,
			f:         &fakeDisks{setupErr: errors.New("mkfs")},
			want:      []string{"view t1 img", "setup t1 100 [/l/2 /l/1]"},
			wantDisk:  info,
			wantErr:   true,
			stopRes:   &Resources{Disk: info},
			wantStops: []string{"teardown t1", "unview t1"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := &DiskHook{Disks: tc.f, Images: tc.f}
			var resp PrestartResponse
			res := &Resources{Image: &runtime.Image{Name: "img", Digest: testDigest}}
			if tc.unresolved {
				res.Image = nil
			}
			err := h.Prestart(context.Background(), &PrestartRequest{Spec: tc.spec, Resources: res}, &resp)
			if (err != nil) != tc.wantErr {
				t.Fatalf("Prestart err = %v, wantErr %v", err, tc.wantErr)
			}
			var he *HookError
			reason := tc.wantReason
			if reason == "" {
				reason = task.ReasonDiskSetupFailed
			}
			if err != nil && (!errors.As(err, &he) || he.Reason != reason) {
				t.Errorf("err = %#v, want a HookError with %s", err, reason)
			}
			if diff := cmp.Diff(tc.want, tc.f.calls, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("prestart calls (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.wantDisk, resp.Disk); diff != "" {
				t.Errorf("resp.Disk (-want +got):\n%s", diff)
			}
			tc.f.calls = nil
			if err := h.Stop(context.Background(), &StopRequest{Spec: tc.spec, Resources: tc.stopRes}); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.wantStops, tc.f.calls, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("stop calls (-want +got):\n%s", diff)
			}
		})
	}
}
