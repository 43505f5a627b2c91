package runtime

import (
	"fmt"
	"os"
	"strconv"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// ErrExecUserNSNet: the exec cannot enter a task that runs in its own user
// namespace but in a network namespace the host's user namespace owns (the
// agent makes the netns before runc makes the user namespace). runc before
// its two-stage namespace join (opencontainers/runc#4492) joins the user
// namespace first and is then refused the network namespace.
var ErrExecUserNSNet = errdefs.ErrFailedPrecondition.WithMessage(
	"exec into a task in its own user namespace: its network namespace belongs to the host's user namespace, " +
		"and this host's runc joins the task's user namespace first and is then refused that network namespace " +
		"(runc with the two-stage namespace join, opencontainers/runc#4492, can)")

// nsReader reads which namespaces a process is in: the OS side effect of
// explaining an exec's failure, behind an interface for tests.
type nsReader interface {
	// UserNS is the inode of the user namespace of pid (0: the agent's own).
	UserNS(pid int) (uint64, error)
	// NetOwner is the inode of the user namespace owning pid's network
	// namespace.
	NetOwner(pid int) (uint64, error)
}

// explainExecStart turns a failed exec start into ErrExecUserNSNet when
// the task (init pid) is in a user namespace of its own whose network
// namespace another user namespace owns; any other failure is returned
// as it is.
func explainExecStart(ns nsReader, pid int, err error) error {
	if pid <= 0 {
		return err
	}
	host, herr := ns.UserNS(0)
	task, terr := ns.UserNS(pid)
	owner, oerr := ns.NetOwner(pid)
	if herr != nil || terr != nil || oerr != nil || task == host || owner == task {
		return err
	}
	return fmt.Errorf("%w (runc said: %v)", ErrExecUserNSNet, err)
}

// hostNS reads /proc.
type hostNS struct{}

func (hostNS) UserNS(pid int) (uint64, error) {
	p := "/proc/self/ns/user"
	if pid > 0 {
		p = "/proc/" + strconv.Itoa(pid) + "/ns/user"
	}
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		return 0, fmt.Errorf("user namespace of %d: %w", pid, err)
	}
	return st.Ino, nil
}

func (hostNS) NetOwner(pid int) (uint64, error) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/ns/net")
	if err != nil {
		return 0, fmt.Errorf("network namespace of %d: %w", pid, err)
	}
	defer f.Close()
	fd, err := unix.IoctlRetInt(int(f.Fd()), unix.NS_GET_USERNS)
	if err != nil {
		return 0, fmt.Errorf("owner of the network namespace of %d: %w", pid, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, fmt.Errorf("owner of the network namespace of %d: %w", pid, err)
	}
	return st.Ino, nil
}
