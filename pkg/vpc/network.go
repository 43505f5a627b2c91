package vpc

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/titus-agent/titus-agent/pkg/task"
)

// Network joins an IPProvider and a DataPlane: what the agent's network
// hook calls.
type Network struct {
	p  IPProvider
	dp *DataPlane

	mu   sync.Mutex
	enis map[string]bool // ENI links already set up (ec2)
}

// NewNetwork makes a Network.
func NewNetwork(p IPProvider, dp *DataPlane) *Network {
	return &Network{p: p, dp: dp, enis: map[string]bool{}}
}

// Provider is the provider's name for the operator view.
func (n *Network) Provider() string { return n.p.Name() }

// Usage is the provider's ENI limits and live use, for the scheduler; ok is
// false for a provider without ENIs (local).
func (n *Network) Usage() (Usage, bool) {
	if u, ok := n.p.(interface{ Usage() Usage }); ok {
		return u.Usage(), true
	}
	return Usage{}, false
}

// Host is the instance the ec2 provider runs on; ok is false for others.
func (n *Network) Host() (HostInfo, bool) {
	if h, ok := n.p.(interface{ Host() HostInfo }); ok {
		return h.Host(), true
	}
	return HostInfo{}, false
}

// Setup allocates the task's address and wires it, and returns once the
// allocation is recorded on disk. Idempotent. On failure the caller runs
// Teardown.
func (n *Network) Setup(ctx context.Context, taskID string, req task.NetworkRequest) (*task.NetworkAttachment, error) {
	att, durable, err := n.SetupDeferred(ctx, taskID, req)
	if err != nil {
		return att, err
	}
	if err := durable(ctx); err != nil {
		return att, fmt.Errorf("record address allocation: %w", err)
	}
	return att, nil
}

// deferredAllocator is a provider that can write its allocation record
// while the address is wired (EC2Provider.AllocateDeferred).
type deferredAllocator interface {
	AllocateDeferred(ctx context.Context, taskID string, req task.NetworkRequest) (Allocation, func(context.Context) error, error)
}

// SetupDeferred is Setup that may return before the allocation is on
// disk: durable (never nil when err is nil) returns once it is. The
// caller must not start the task's process before durable returned nil;
// the record's write then overlaps the wiring and whatever the caller does
// next (the agent: the disk, metadata and container create).
func (n *Network) SetupDeferred(ctx context.Context, taskID string, req task.NetworkRequest) (_ *task.NetworkAttachment, durable func(context.Context) error, _ error) {
	var a Allocation
	var err error
	durable = func(context.Context) error { return nil }
	if d, ok := n.p.(deferredAllocator); ok {
		a, durable, err = d.AllocateDeferred(ctx, taskID, req)
	} else {
		a, err = n.p.Allocate(ctx, taskID, req)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("allocate address: %w", err)
	}
	att, err := n.setup(ctx, taskID, a)
	if err != nil {
		return att, nil, err
	}
	return att, durable, nil
}

func (n *Network) setup(ctx context.Context, taskID string, a Allocation) (*task.NetworkAttachment, error) {
	if a.routed() && a.MAC != "" {
		if err := n.ensureENI(ctx, a); err != nil {
			return nil, err
		}
	}
	att, err := n.dp.Setup(ctx, a)
	if err != nil {
		return &task.NetworkAttachment{NetNSPath: n.dp.NetNSPath(taskID), IPv4: a.IPv4.Addr().String()}, err
	}
	return att, nil
}

func (n *Network) ensureENI(ctx context.Context, a Allocation) error {
	n.mu.Lock()
	done := n.enis[a.ENIID]
	n.mu.Unlock()
	if done {
		return nil
	}
	if _, err := n.dp.EnsureENILink(ctx, a.MAC, a.RouteTable, a.Gateway, a.IPv4.Masked(), a.SubnetIPv6, 0, 15*time.Second); err != nil {
		return fmt.Errorf("ENI %s: %w", a.ENIID, err)
	}
	n.mu.Lock()
	n.enis[a.ENIID] = true
	n.mu.Unlock()
	return nil
}

// Teardown unwires the task and releases its address. Idempotent, and
// works after an agent restart from the provider's record.
func (n *Network) Teardown(ctx context.Context, taskID string) error {
	var alloc *Allocation
	if as, err := n.p.Allocations(ctx); err == nil {
		for i := range as {
			if as[i].TaskID == taskID {
				alloc = &as[i]
			}
		}
	}
	err := n.dp.Teardown(ctx, taskID, alloc)
	if rerr := n.p.Release(ctx, taskID); rerr != nil {
		err = errors.Join(err, rerr)
	}
	return err
}

// Reconcile frees addresses, namespaces and veths of tasks not in keep.
func (n *Network) Reconcile(ctx context.Context, keep map[string]bool) error {
	_, err := n.GC(ctx, keep, true)
	return err
}

// Status is the provider's operator view.
func (n *Network) Status(ctx context.Context) (any, error) { return n.p.Status(ctx) }

// GC lists (and with apply, frees) what no task in live holds.
func (n *Network) GC(ctx context.Context, live map[string]bool, apply bool) ([]string, error) {
	var actions []string
	var errs []error
	as, err := n.p.Allocations(ctx)
	if err != nil {
		return nil, err
	}
	for _, a := range as {
		if live[a.TaskID] {
			continue
		}
		actions = append(actions, fmt.Sprintf("address %s of task %s", a.IPv4.Addr(), a.TaskID))
		if apply {
			a := a
			if err := n.dp.Teardown(ctx, a.TaskID, &a); err != nil {
				errs = append(errs, err)
			}
			if err := n.p.Release(ctx, a.TaskID); err != nil {
				errs = append(errs, err)
			}
		}
	}
	// Rules of allocations not live go with their teardown above.
	held := map[netip.Addr]bool{}
	for _, a := range as {
		held[a.IPv4.Addr()] = true
		if a.IPv6.IsValid() {
			held[a.IPv6] = true
		}
	}
	for _, r := range n.dp.LeftoverRules(held) {
		actions = append(actions, fmt.Sprintf("rule from %s table %d", r.Src, r.Table))
		if apply {
			if err := n.dp.RemoveRule(r); err != nil {
				errs = append(errs, err)
			}
		}
	}
	nss, links := n.dp.Leftovers(live)
	for _, id := range nss {
		actions = append(actions, "netns of task "+id)
		if apply {
			if err := n.dp.RemoveNetNS(id); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for _, l := range links {
		actions = append(actions, "link "+l)
		if apply {
			if err := n.dp.RemoveLink(l); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return actions, errors.Join(errs...)
}
