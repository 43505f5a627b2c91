package runtime

import (
	"context"
	"fmt"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Inspection is what the runtime really applied to a task's container.
type Inspection struct {
	Spec *specs.Spec
	// Pid is the task's init on the host; 0 when it does not run.
	Pid uint32
	// Cgroup is its cgroup directory, Limits what the kernel enforces
	// there, read back.
	Cgroup string
	Limits map[string]string
	// Net is its network namespace read back, Disk its root filesystem
	// (both nil when it does not run, or could not be read: NetErr, DiskErr).
	Net             *NetView
	Disk            *DiskView
	NetErr, DiskErr error
}

// Inspect reads the container's OCI spec and, when it runs, its cgroup
// and limits.
func (r *Runtime) Inspect(ctx context.Context, id string) (Inspection, error) {
	ctx = r.ctx(ctx)
	c, err := r.load(ctx, id)
	if err != nil {
		return Inspection{}, err
	}
	spec, err := c.Spec(ctx)
	if err != nil {
		return Inspection{}, fmt.Errorf("spec of %s: %w", id, err)
	}
	in := Inspection{Spec: spec}
	t, err := c.Task(ctx, nil)
	if err != nil {
		return in, nil // no task: the spec is all there is
	}
	in.Pid = t.Pid()
	dir, v1, err := HostProcFS.CgroupOf(int(in.Pid))
	if err != nil {
		return in, nil // exited meanwhile
	}
	in.Cgroup, in.Limits = dir, HostProcFS.Limits(dir, v1)
	if nv, err := readNetNS(HostProcFS.Proc, int(in.Pid)); err == nil {
		in.Net = &nv
	} else {
		in.NetErr = err
	}
	if dv, err := statRoot(HostProcFS.Proc, int(in.Pid)); err == nil {
		in.Disk = &dv
	} else {
		in.DiskErr = err
	}
	return in, nil
}

// Top lists the processes of the task's cgroup.
func (r *Runtime) Top(ctx context.Context, id string) (string, []Process, error) {
	ctx = r.ctx(ctx)
	c, err := r.load(ctx, id)
	if err != nil {
		return "", nil, err
	}
	t, err := c.Task(ctx, nil)
	if err != nil {
		return "", nil, fmt.Errorf("task of %s: %w", id, err)
	}
	dir, _, err := HostProcFS.CgroupOf(int(t.Pid()))
	if err != nil {
		return "", nil, err
	}
	procs, err := HostProcFS.Processes(dir)
	return dir, procs, err
}
