package isolation

import (
	"slices"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/titus-agent/titus-agent/pkg/task"
)

// seccompAllows evaluates the profile for one call, as libseccomp would:
// allowed if some allow rule for the name has all its conditions true.
// Only the operators the profiles here use are modelled.
func seccompAllows(t *testing.T, sc *specs.LinuxSeccomp, name string, args [6]uint64) bool {
	t.Helper()
	for _, sys := range sc.Syscalls {
		if sys.Action != specs.ActAllow || !slices.Contains(sys.Names, name) {
			continue
		}
		all := true
		for _, a := range sys.Args {
			v := args[a.Index]
			switch a.Op {
			case specs.OpMaskedEqual:
				all = all && v&a.Value == a.ValueTwo
			case specs.OpEqualTo:
				all = all && v == a.Value
			case specs.OpNotEqual:
				all = all && v != a.Value
			default:
				t.Fatalf("operator %s not modelled", a.Op)
			}
		}
		if all {
			return true
		}
	}
	return false
}

// TestSeccompRefusesProjectIDChanges: whatever the task's capabilities,
// FS_IOC_FSSETXATTR (which sets an XFS project ID and so escapes the
// project quota) falls to the profile's default action, EPERM, also with
// high bits set in the register that the kernel ignores; every other ioctl
// still passes.
func TestSeccompRefusesProjectIDChanges(t *testing.T) {
	for _, o := range []Options{{}, {XFSQuota: true}, {Compat32Bit: true}} {
		s, err := apply(t, SpecOpts(&task.Spec{ID: "t1"}, o))
		if err != nil {
			t.Fatal(err)
		}
		sc := s.Linux.Seccomp
		if sc.DefaultAction != specs.ActErrno || (sc.DefaultErrnoRet != nil && *sc.DefaultErrnoRet != 1) {
			t.Fatalf("default action %s/%v, want errno EPERM", sc.DefaultAction, sc.DefaultErrnoRet)
		}
		for _, tc := range []struct {
			name string
			cmd  uint64
			want bool
		}{
			{"FS_IOC_FSSETXATTR", FSIOCFSSETXATTR, false},
			{"FS_IOC_FSSETXATTR with high bits", FSIOCFSSETXATTR | 1<<32, false},
			{"FS_IOC_FSSETXATTR with all high bits", FSIOCFSSETXATTR | 0xffffffff00000000, false},
			{"FS_IOC_FSGETXATTR", 0x801c581f, true},
			{"TCGETS", 0x5401, true},
			{"FIONREAD", 0x541b, true},
			{"FS_IOC_GETFLAGS", 0x80086601, true},
			{"one bit off", FSIOCFSSETXATTR ^ 1<<31, true},
			{"zero", 0, true},
		} {
			if got := seccompAllows(t, sc, "ioctl", [6]uint64{3, tc.cmd}); got != tc.want {
				t.Errorf("%+v: ioctl %s (%#x) allowed = %v, want %v", o, tc.name, tc.cmd, got, tc.want)
			}
		}
		for _, n := range []string{"read", "openat", "fcntl"} {
			if !seccompAllows(t, sc, n, [6]uint64{}) {
				t.Errorf("%s no longer allowed", n)
			}
		}
	}
}
