package isolation

import (
	"context"
	"slices"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// FSIOCFSSETXATTR is the ioctl that sets a file's extended attributes,
// its XFS (and ext4) project ID among them: _IOW('X', 32, struct fsxattr)
// in the asm-generic encoding of amd64 and arm64.
const FSIOCFSSETXATTR = 0x401c5820

// withoutProjectIDChanges makes the seccomp profile refuse
// FS_IOC_FSSETXATTR with the profile's default action (EPERM), for every
// task: a file's owner needs no capability to give it another project ID,
// which moves it out of the task's XFS project quota.
//
// The profile allows ioctl by name; that entry loses ioctl, and ioctl is
// allowed again by 32 rules, one per bit of the command: rule b allows a
// command whose bit b differs from FS_IOC_FSSETXATTR's. Any other command
// differs in some bit and passes; FS_IOC_FSSETXATTR matches none and gets
// the default action. Each rule masks one bit of the low 32: the kernel
// reads the command as an unsigned int, so high bits set in the register
// (a classic way past a plain "!= value" rule) change nothing. Only
// allow rules are involved, so nothing depends on how libseccomp orders
// conflicting actions.
func withoutProjectIDChanges(_ context.Context, _ oci.Client, _ *containers.Container, s *specs.Spec) error {
	if s.Linux == nil || s.Linux.Seccomp == nil {
		return nil
	}
	sc := s.Linux.Seccomp
	var kept []specs.LinuxSyscall
	for _, sys := range sc.Syscalls {
		if slices.Contains(sys.Names, "ioctl") {
			if sys.Action != specs.ActAllow || len(sys.Args) > 0 {
				// Not the plain allow containerd's profile has: keep it as it is.
				kept = append(kept, sys)
				continue
			}
			sys.Names = slices.DeleteFunc(slices.Clone(sys.Names), func(n string) bool { return n == "ioctl" })
			if len(sys.Names) == 0 {
				continue
			}
		}
		kept = append(kept, sys)
	}
	for b := range 32 {
		bit := uint64(1) << b
		kept = append(kept, specs.LinuxSyscall{
			Names:  []string{"ioctl"},
			Action: specs.ActAllow,
			Args: []specs.LinuxSeccompArg{{
				Index: 1, Op: specs.OpMaskedEqual,
				Value: bit, ValueTwo: ^uint64(FSIOCFSSETXATTR) & bit,
			}},
		})
	}
	sc.Syscalls = kept
	return nil
}
