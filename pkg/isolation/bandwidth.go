package isolation

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
)

// ErrNoVeth is returned when a task's netns has no veth to shape.
var ErrNoVeth = errors.New("no veth in the task's network namespace")

// TBF is a token bucket: Rate in bytes per second, Burst (bucket size) and
// Limit (queue length) in bytes.
type TBF struct {
	Rate  uint64
	Burst uint32
	Limit uint32
}

// TBFFor is the token bucket for mbps megabits per second: a burst of 10 ms
// worth of traffic (at least 32 KiB) and a queue of 100 ms more.
func TBFFor(mbps int64) TBF {
	rate := uint64(mbps) * 1_000_000 / 8
	burst := max(rate/100, 32<<10)
	limit := burst + rate/10
	return TBF{Rate: rate, Burst: uint32(min(burst, 1<<31)), Limit: uint32(min(limit, 1<<31))}
}

// tcOps is the netlink side of shaping. nsPath "" is the host's netns.
type tcOps interface {
	// VethPair finds the task's veth in nsPath and its peer in hostNS.
	VethPair(nsPath, hostNS string) (hostIf, taskIf string, err error)
	SetTBF(nsPath, ifName string, t TBF) error
	// ClearRoot removes the root qdisc of ifName if it is ours; a missing
	// link is not an error.
	ClearRoot(nsPath, ifName string) error
}

// Bandwidth limits a task's traffic with a TBF qdisc on each veth end: the
// host end shapes what the task receives, the task end what it sends.
type Bandwidth struct {
	tc tcOps
	// hostNS is the netns of the veths' host ends ("" = the agent's own).
	hostNS string
}

// NewBandwidth shapes with netlink; the veths' host ends are in the
// agent's own netns.
func NewBandwidth() *Bandwidth { return NewBandwidthIn("") }

// NewBandwidthIn shapes with netlink; the veths' host ends are in the
// netns at hostNS ("" = the agent's own), as network.hostNetNS says.
func NewBandwidthIn(hostNS string) *Bandwidth { return &Bandwidth{tc: netlinkTC{}, hostNS: hostNS} }

// Limit caps the task in nsPath at mbps in each direction. hostVeth may be
// empty: the task's veth peer in the host's netns is used. mbps <= 0 does
// nothing.
func (b *Bandwidth) Limit(ctx context.Context, nsPath, hostVeth string, mbps int64) error {
	if mbps <= 0 {
		return nil
	}
	host, taskIf, err := b.tc.VethPair(nsPath, b.hostNS)
	if err != nil {
		return fmt.Errorf("bandwidth: %w", err)
	}
	if hostVeth != "" {
		host = hostVeth
	}
	q := TBFFor(mbps)
	if err := b.tc.SetTBF(b.hostNS, host, q); err != nil {
		return fmt.Errorf("bandwidth to task on %s: %w", host, err)
	}
	if err := b.tc.SetTBF(nsPath, taskIf, q); err != nil {
		return fmt.Errorf("bandwidth from task on %s: %w", taskIf, err)
	}
	return nil
}

// Clear removes the task's limits. Once its netns is gone so are its veths,
// and there is nothing to do. Safe to repeat.
func (b *Bandwidth) Clear(ctx context.Context, nsPath, hostVeth string) error {
	if _, err := os.Stat(nsPath); errors.Is(err, fs.ErrNotExist) {
		if hostVeth == "" {
			return nil
		}
		return b.tc.ClearRoot(b.hostNS, hostVeth)
	}
	host, taskIf, err := b.tc.VethPair(nsPath, b.hostNS)
	if errors.Is(err, ErrNoVeth) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("bandwidth: %w", err)
	}
	if hostVeth != "" {
		host = hostVeth
	}
	return errors.Join(b.tc.ClearRoot(b.hostNS, host), b.tc.ClearRoot(nsPath, taskIf))
}
