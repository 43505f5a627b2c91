package vpc

import (
	"context"
	"fmt"
	"net"
)

// guardTablePrefix starts the name of every task's source guard table
// (netdev family, one per task veth).
const guardTablePrefix = "titus_guard_"

// CounterSpoofed counts the frames a task's source guard dropped.
const CounterSpoofed = "spoofed"

// GuardTable names the source guard table of a task's host veth.
func GuardTable(hostVeth string) string { return guardTablePrefix + hostVeth }

// guardSources applies the task's source guard.
func (d *DataPlane) guardSources(ctx context.Context, hostVeth string, mac net.HardwareAddr, a Allocation) error {
	if err := d.guard.Guard(ctx, hostVeth, mac, a); err != nil {
		return fmt.Errorf("vpc: source guard: %w", err)
	}
	return nil
}

// unguard removes a task veth's source guard.
func (d *DataPlane) unguard(ctx context.Context, hostVeth string) error {
	if err := d.guard.Unguard(ctx, hostVeth); err != nil {
		return fmt.Errorf("vpc: source guard: %w", err)
	}
	return nil
}
