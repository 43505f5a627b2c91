package runtime

import (
	"context"
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// recordingUnits records the units it is asked to stop.
type recordingUnits struct {
	stopped []string
	err     error
}

func (u *recordingUnits) StopUnit(_ context.Context, name string) error {
	u.stopped = append(u.stopped, name)
	return u.err
}

func TestReleaseTaskSlice(t *testing.T) {
	boom := errors.New("boom")
	for _, tc := range []struct {
		name, driver, ns, id string
		err                  error
		want                 []string
		wantErr              bool
	}{
		{name: "systemd", driver: CgroupDriverSystemd, ns: "titus", id: "t1", want: []string{"titus-titus-t1.slice"}},
		{name: "dashes escaped", driver: CgroupDriverSystemd, ns: "titus", id: "a-b", want: []string{`titus-titus-a\x2db.slice`}},
		{name: "cgroupfs has none", driver: CgroupDriverCgroupfs, ns: "titus", id: "t1"},
		{name: "systemd fails", driver: CgroupDriverSystemd, ns: "titus", id: "t1", err: boom, want: []string{"titus-titus-t1.slice"}, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := &recordingUnits{err: tc.err}
			r := &Runtime{cfg: Config{CgroupDriver: tc.driver, Namespace: tc.ns}, units: u}
			err := r.releaseTaskSlice(context.Background(), tc.id)
			if (err != nil) != tc.wantErr || (tc.err != nil && !errors.Is(err, tc.err)) {
				t.Errorf("err = %v, want error %v", err, tc.wantErr)
			}
			if diff := cmp.Diff(tc.want, u.stopped); diff != "" {
				t.Errorf("stopped (-want +got):\n%s", diff)
			}
		})
	}
}

// The slice a task's scope is placed in is the one released and the one
// accounting is read from.
func TestTaskSliceIsTheScopesParent(t *testing.T) {
	for _, id := range []string{"t1", "a-b", "x.y_z-1"} {
		p := cgroupsPath(CgroupDriverSystemd, "titus", id)
		scope, ok := cgroupRelDir(p)
		if !ok {
			t.Fatalf("%s: no cgroup dir", p)
		}
		slice, _ := expandSlice(taskSlice("titus", id))
		dirs := accountingRelDirs(p)
		if diff := cmp.Diff([]string{slice, scope}, dirs); diff != "" {
			t.Errorf("%s: accounting dirs (-want +got):\n%s", id, diff)
		}
		if scope != slice+"/titus-"+id+".scope" {
			t.Errorf("%s: scope %s is not in the task slice %s", id, scope, slice)
		}
	}
}
