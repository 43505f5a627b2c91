package runtime

import (
	"context"
	"fmt"
	"time"

	sddbus "github.com/coreos/go-systemd/v22/dbus"
)

// unitStopper stops systemd units; systemdUnits is the real one, tests
// use a recording fake.
type unitStopper interface {
	StopUnit(ctx context.Context, name string) error
}

// sliceStopTimeout bounds the wait for systemd's stop job of a slice.
const sliceStopTimeout = 30 * time.Second

// releaseTaskSlice stops the task's own slice (taskSlice) under the
// systemd driver, which removes its cgroup; nothing under cgroupfs. A
// slice that is already gone is no error, so it is safe to repeat.
func (r *Runtime) releaseTaskSlice(ctx context.Context, id string) error {
	if r.cfg.CgroupDriver != CgroupDriverSystemd || r.units == nil {
		return nil
	}
	name := taskSlice(r.cfg.Namespace, id)
	if err := r.units.StopUnit(ctx, name); err != nil {
		return fmt.Errorf("stop task slice %s: %w", name, err)
	}
	return nil
}

// systemdUnits talks to PID 1 over its private socket
// (/run/systemd/private, root only; no D-Bus daemon needed), one
// connection per call: tasks are deleted seldom, and systemd may have
// been re-executed since the last one.
type systemdUnits struct{}

// StopUnit stops the unit and waits for the job. A unit that is not
// loaded is loaded (a slice needs no unit file) and found inactive:
// the job is done at once.
func (systemdUnits) StopUnit(ctx context.Context, name string) error {
	ctx, cancel := context.WithTimeout(ctx, sliceStopTimeout)
	defer cancel()
	c, err := sddbus.NewSystemdConnectionContext(ctx)
	if err != nil {
		return fmt.Errorf("connect to systemd: %w", err)
	}
	defer c.Close()
	done := make(chan string, 1)
	if _, err := c.StopUnitContext(ctx, name, "replace", done); err != nil {
		return err
	}
	select {
	case res := <-done:
		if res != "done" {
			return fmt.Errorf("stop job %s", res)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("stop job: %w", ctx.Err())
	}
}
