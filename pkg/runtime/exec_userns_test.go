package runtime

import (
	"errors"
	"testing"

	"github.com/containerd/errdefs"
)

type fakeNS struct {
	user  map[int]uint64 // 0: the agent's
	owner map[int]uint64
}

func (f fakeNS) UserNS(pid int) (uint64, error) {
	if v, ok := f.user[pid]; ok {
		return v, nil
	}
	return 0, errors.New("gone")
}

func (f fakeNS) NetOwner(pid int) (uint64, error) {
	if v, ok := f.owner[pid]; ok {
		return v, nil
	}
	return 0, errors.New("gone")
}

// Only the one case runc cannot do is explained; every other failure is
// the runtime's own.
func TestExplainExecStart(t *testing.T) {
	runc := errdefs.ErrUnknown.WithMessage("OCI runtime exec failed: error executing setns process: exit status 1")
	const host, tenant = 1, 2
	for _, tc := range []struct {
		name string
		ns   fakeNS
		pid  int
		want bool
	}{
		{"userns task, host netns owner", fakeNS{map[int]uint64{0: host, 42: tenant}, map[int]uint64{42: host}}, 42, true},
		{"userns task owning its netns", fakeNS{map[int]uint64{0: host, 42: tenant}, map[int]uint64{42: tenant}}, 42, false},
		{"task in the host's userns", fakeNS{map[int]uint64{0: host, 42: host}, map[int]uint64{42: host}}, 42, false},
		{"task gone", fakeNS{map[int]uint64{0: host}, nil}, 42, false},
		{"no pid", fakeNS{map[int]uint64{0: host, 42: tenant}, map[int]uint64{42: host}}, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := explainExecStart(tc.ns, tc.pid, runc)
			if is := errors.Is(got, ErrExecUserNSNet); is != tc.want {
				t.Fatalf("explained = %v, want %v: %v", is, tc.want, got)
			}
			if tc.want && !errdefs.IsFailedPrecondition(got) {
				t.Errorf("not a failed precondition: %v", got)
			}
			if !tc.want && got != runc {
				t.Errorf("changed: %v", got)
			}
		})
	}
}
