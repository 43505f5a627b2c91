package model

import "time"

// Agent is the scheduler's view of one host: its registration, drain
// state and, in a view, its live state.
type Agent struct {
	ID           string
	InstanceType string
	AZ           string
	Labels       map[string]string
	Capacity     Capacity
	Attributes   HostAttributes
	Drained      bool

	// Live state, in views only (not persisted).
	Used          Capacity
	Connected     bool
	Healthy       bool
	Quarantined   bool
	Lost          bool
	Tasks         uint32
	LastHeartbeat time.Time
	// Network is the ENI use the agent last reported (nil: none).
	Network *NetworkUsage
	// While drained: service tasks still to move off, and what holds
	// the next move back.
	DrainRemaining uint32
	DrainBlocked   string
}

// HostAttributes say what a host is, besides its type, zone and labels.
type HostAttributes struct {
	AMIID, AgentVersion, Kernel, CgroupMode string
	GPUs                                    []GPU
}

// GPU is one GPU device of a host.
type GPU struct {
	Index     int32
	Model     string
	MemoryMiB int64
}

// NetworkUsage is the live use of a host's task ENIs.
type NetworkUsage struct {
	SGSets         []SGSetENIs
	AttachableENIs int
	// DefaultSecurityGroups (sorted, comma-joined) and DefaultSubnetID are
	// what a task naming none gets.
	DefaultSecurityGroups, DefaultSubnetID string
	// ZoneSubnets and OtherZoneSubnets are the subnets the agent looked
	// up, in its zone and out of it.
	ZoneSubnets, OtherZoneSubnets []string
}

// SGSetENIs is the ENIs and addresses one security-group set holds.
type SGSetENIs struct {
	SecurityGroups, SubnetID           string
	Default                            bool
	ENIs, UsedIPs, FreeIPs, CoolingIPs int
}

// Registration is what an agent says when its stream opens.
type Registration struct {
	InstanceID   string
	InstanceType string
	AZ           string
	Capacity     Capacity
	Labels       map[string]string
	Attributes   HostAttributes
	Network      *NetworkUsage
	Tasks        []TaskStatus
	// Unhealthy: the agent registers unhealthy (no placements until a
	// heartbeat says it is healthy).
	Unhealthy bool
	// Peer is where the stream comes from (for logs and errors).
	Peer string
}

// AgentSelector picks agents by id, or else by labels (all must match).
type AgentSelector struct {
	ID     string
	Labels map[string]string
}

// Selects reports whether s picks the agent with this id and labels.
func (s AgentSelector) Selects(id string, labels map[string]string) bool {
	if s.ID != "" {
		return id == s.ID
	}
	for k, v := range s.Labels {
		if labels[k] != v {
			return false
		}
	}
	return true
}
