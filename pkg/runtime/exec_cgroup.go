package runtime

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// execCgroupPrefix names the cgroup of one exec session below its task's.
const execCgroupPrefix = "titus-exec-"

// cgroupOS is what an exec session's cgroup does to the host: the OS side
// effect behind a tiny interface so that a recording fake can stand in.
type cgroupOS interface {
	Mkdir(dir string) error
	Rmdir(dir string) error
	Write(file, value string) error
	Read(file string) (string, error)
	Kill(pid int, sig syscall.Signal) error
}

// execCgroup is the cgroup holding every process of one exec session: a
// child of the task's cgroup in the freezer hierarchy (cgroup v1) or in the
// unified one (v2). The task's limits apply to it as to any descendant;
// what it adds is a boundary that neither setsid nor a double fork
// crosses, so that ending the session ends everything it started.
type execCgroup struct {
	os  cgroupOS
	dir string
	v2  bool
	// poll is how often and how long Kill waits for the cgroup to empty.
	poll, wait time.Duration
}

// execCgroupDir is where the exec session name lives for a task whose
// cgroup is at rel (below each hierarchy's root) on a host whose cgroups
// are mounted at root, v2 or v1.
func execCgroupDir(root, rel string, v2 bool, name string) string {
	if v2 {
		return filepath.Join(root, rel, name)
	}
	return filepath.Join(root, "freezer", rel, name)
}

// newExecCgroup makes the session's cgroup below the task's. The task's
// cgroup must exist: without it there is nothing to contain the session in.
func newExecCgroup(o cgroupOS, root, cgroupsPath, name string) (*execCgroup, error) {
	rel, ok := cgroupRelDir(cgroupsPath)
	if !ok {
		return nil, fmt.Errorf("exec cgroup: task cgroups path %q not understood", cgroupsPath)
	}
	_, err := o.Read(filepath.Join(root, "cgroup.controllers"))
	v2 := err == nil
	c := &execCgroup{os: o, dir: execCgroupDir(root, rel, v2, name), v2: v2, poll: 10 * time.Millisecond, wait: 10 * time.Second}
	if _, err := o.Read(filepath.Join(filepath.Dir(c.dir), "cgroup.procs")); err != nil {
		return nil, fmt.Errorf("exec cgroup: the task's cgroup: %w", err)
	}
	if err := o.Mkdir(c.dir); err != nil {
		return nil, fmt.Errorf("exec cgroup: %w", err)
	}
	return c, nil
}

// Enter moves the exec's process and what it already started (pids) into
// the session's cgroup; their children are born there.
func (c *execCgroup) Enter(pids ...int) error {
	var errs []error
	for _, pid := range pids {
		if err := c.os.Write(filepath.Join(c.dir, "cgroup.procs"), strconv.Itoa(pid)); err != nil && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, fmt.Errorf("exec cgroup: move %d: %w", pid, err))
		}
	}
	return errors.Join(errs...)
}

// Kill ends every process in the session's cgroup, waits until it is
// empty and removes it. v2 uses cgroup.kill; v1 (and v2 kernels before
// 5.14) freeze the cgroup first, so nothing forks while it is swept.
// Safe to call twice.
func (c *execCgroup) Kill() error {
	if _, err := c.os.Read(filepath.Join(c.dir, "cgroup.procs")); errors.Is(err, os.ErrNotExist) {
		return nil // already gone
	}
	if c.v2 && c.os.Write(filepath.Join(c.dir, "cgroup.kill"), "1") == nil {
		return c.remove()
	}
	freeze, thaw, state := filepath.Join(c.dir, "freezer.state"), "THAWED", "FROZEN"
	if c.v2 {
		freeze, thaw, state = filepath.Join(c.dir, "cgroup.freeze"), "0", "1"
	}
	var errs []error
	if err := c.os.Write(freeze, state); err != nil {
		errs = append(errs, fmt.Errorf("exec cgroup: freeze: %w", err))
	} else {
		c.until(func() bool { s, err := c.os.Read(freeze); return err != nil || strings.TrimSpace(s) == state })
	}
	pids, err := c.procs()
	if err != nil {
		errs = append(errs, err)
	}
	for _, pid := range pids {
		if err := c.os.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, fmt.Errorf("exec cgroup: kill %d: %w", pid, err))
		}
	}
	if err := c.os.Write(freeze, thaw); err != nil {
		errs = append(errs, fmt.Errorf("exec cgroup: thaw: %w", err))
	}
	return errors.Join(append(errs, c.remove())...)
}

// remove waits for the cgroup to empty (killed processes take a moment to
// exit) and removes it.
func (c *execCgroup) remove() error {
	c.until(func() bool { p, err := c.procs(); return err != nil || len(p) == 0 })
	if err := c.os.Rmdir(c.dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("exec cgroup: remove %s: %w", c.dir, err)
	}
	return nil
}

func (c *execCgroup) procs() ([]int, error) {
	s, err := c.os.Read(filepath.Join(c.dir, "cgroup.procs"))
	if err != nil {
		return nil, fmt.Errorf("exec cgroup: %w", err)
	}
	var out []int
	for _, f := range strings.Fields(s) {
		if pid, err := strconv.Atoi(f); err == nil {
			out = append(out, pid)
		}
	}
	return out, nil
}

func (c *execCgroup) until(ok func() bool) {
	for deadline := time.Now().Add(c.wait); !ok() && time.Now().Before(deadline); {
		time.Sleep(c.poll)
	}
}

// hostCgroups is cgroupOS on the host's cgroup file systems.
type hostCgroups struct{}

func (hostCgroups) Mkdir(dir string) error { return os.Mkdir(dir, 0o755) }
func (hostCgroups) Rmdir(dir string) error { return syscall.Rmdir(dir) }
func (hostCgroups) Write(file, value string) error {
	return os.WriteFile(file, []byte(value), 0)
}
func (hostCgroups) Read(file string) (string, error) {
	b, err := os.ReadFile(file)
	return string(b), err
}
func (hostCgroups) Kill(pid int, sig syscall.Signal) error { return syscall.Kill(pid, sig) }

// enterExecCgroup moves the exec rooted at pid, and what it started before
// the move, into the session's cgroup.
func enterExecCgroup(c *execCgroup, t procTable, pid int) error {
	if err := c.Enter(pid); err != nil {
		return err
	}
	procs, err := t.Procs()
	if err != nil {
		return fmt.Errorf("exec cgroup: %w", err)
	}
	return c.Enter(sessionProcs(procs, pid)...)
}
