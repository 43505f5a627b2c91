package vpc

import (
	"context"
	"errors"
	"net/netip"

	"github.com/titus-agent/titus-agent/pkg/task"
)

// Allocation is one task's address, whichever provider made it.
type Allocation struct {
	TaskID   string `json:"taskId"`
	Provider string `json:"provider,omitempty"`
	// IPv4 is the address with its subnet's prefix length.
	IPv4    netip.Prefix `json:"ipv4"`
	Gateway netip.Addr   `json:"gateway"`
	// IPv6 is set when the task asked for one (its subnet has an IPv6 CIDR).
	IPv6 netip.Addr `json:"ipv6,omitzero"`
	// SubnetIPv6 is the subnet's IPv6 CIDR, if it has one (ec2).
	SubnetIPv6 netip.Prefix `json:"subnetIpv6,omitzero"`
	// ENI fields are empty for the local provider.
	ENIID       string `json:"eniId,omitempty"`
	MAC         string `json:"mac,omitempty"`
	DeviceIndex int    `json:"deviceIndex,omitempty"`
	// RouteTable is the ENI's policy-routing table (ec2); 0 for local.
	RouteTable       int      `json:"routeTable,omitempty"`
	SubnetID         string   `json:"subnetId,omitempty"`
	VPCID            string   `json:"vpcId,omitempty"`
	SecurityGroupIDs []string `json:"securityGroupIds,omitempty"`
	AvailabilityZone string   `json:"availabilityZone,omitempty"`
	Region           string   `json:"region,omitempty"`
}

// Provider names, as recorded in Allocation.Provider and shown to operators.
const (
	ProviderLocal = "local"
	ProviderEC2   = "ec2"
)

// routed reports whether the data plane routes the address to the task
// from an ENI (a /32 behind a link-local gateway, a host route and a policy
// rule into the ENI's table) rather than bridging it on the provider's
// subnet. It reads the recorded provider, so it also holds for allocations
// restored after an agent restart.
func (a Allocation) routed() bool { return a.Provider == ProviderEC2 }

// ErrNoCapacity means the host cannot give a task an address now.
var ErrNoCapacity = errors.New("no network capacity left on this host")

// IPProvider hands out task addresses.
type IPProvider interface {
	// Name is the provider's name for the operator view (ProviderLocal, ProviderEC2).
	Name() string
	// Allocate is idempotent per task.
	Allocate(ctx context.Context, taskID string, req task.NetworkRequest) (Allocation, error)
	// Release is idempotent.
	Release(ctx context.Context, taskID string) error
	// Allocations is what the provider holds (restart reconciliation).
	Allocations(ctx context.Context) ([]Allocation, error)
	// Status is the provider's operator view, marshalled to JSON. It does
	// not call the cloud.
	Status(ctx context.Context) (any, error)
	// Levels is how full the provider's pools are (metrics, health).
	Levels(ctx context.Context) ([]PoolLevel, error)
}

var (
	_ IPProvider = (*LocalProvider)(nil)
	_ IPProvider = (*EC2Provider)(nil)
)
