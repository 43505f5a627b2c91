package wire

import (
	"time"

	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
	"github.com/titus-agent/titus-agent/pkg/scheduler/model"
)

// CapacityFromProto converts a host's capacity.
func CapacityFromProto(c *schedv1.Capacity) model.Capacity {
	return model.Capacity{
		Resources: model.Resources{CPU: c.GetCpuMillicores(), Mem: c.GetMemoryMib(), Disk: c.GetDiskMib(), Net: c.GetNetworkMbps(), GPUs: int64(c.GetGpus())},
		ENIs:      int(c.GetEnis()), IPsPerENI: int(c.GetIpsPerEni()),
		IPReuseCooldown: time.Duration(c.GetIpReuseCooldownMs()) * time.Millisecond,
	}
}

// AttributesFromProto converts a host's attributes.
func AttributesFromProto(p *schedv1.HostAttributes) model.HostAttributes {
	a := model.HostAttributes{AMIID: p.GetAmiId(), AgentVersion: p.GetAgentVersion(), Kernel: p.GetKernel(), CgroupMode: p.GetCgroupMode()}
	for _, g := range p.GetGpus() {
		a.GPUs = append(a.GPUs, model.GPU{Index: g.GetIndex(), Model: g.GetModel(), MemoryMiB: g.GetMemoryMib()})
	}
	return a
}

// AttributesToProto converts a host's attributes.
func AttributesToProto(a model.HostAttributes) *schedv1.HostAttributes {
	if a.AMIID == "" && a.AgentVersion == "" && a.Kernel == "" && a.CgroupMode == "" && len(a.GPUs) == 0 {
		return nil
	}
	p := &schedv1.HostAttributes{AmiId: a.AMIID, AgentVersion: a.AgentVersion, Kernel: a.Kernel, CgroupMode: a.CgroupMode}
	for _, g := range a.GPUs {
		p.Gpus = append(p.Gpus, &schedv1.Gpu{Index: g.Index, Model: g.Model, MemoryMib: g.MemoryMiB})
	}
	return p
}

// MaxReportedSubnets bounds each subnet-zone list an agent reports: an
// agent lists only subnets of tasks it was sent (a VPC holds 200 by
// default), so more is a broken or hostile agent, whose extra entries
// would only grow the scheduler's zone findings at every heartbeat.
// Dropping entries fails safe: the agent still refuses a task whose
// subnet is outside its zone (SubnetNotInZone).
const MaxReportedSubnets = 1024

// NetworkUsageFromProto converts an agent's ENI use (nil when it sent none).
func NetworkUsageFromProto(p *schedv1.NetworkUsage) *model.NetworkUsage {
	if p == nil {
		return nil
	}
	u := &model.NetworkUsage{AttachableENIs: int(p.GetAttachableEnis()),
		DefaultSecurityGroups: p.GetDefaultSecurityGroups(), DefaultSubnetID: p.GetDefaultSubnetId(),
		ZoneSubnets: capped(p.GetZoneSubnets()), OtherZoneSubnets: capped(p.GetOtherZoneSubnets())}
	for _, s := range p.GetSgSets() {
		u.SGSets = append(u.SGSets, model.SGSetENIs{SecurityGroups: s.GetSecurityGroups(), SubnetID: s.GetSubnetId(), Default: s.GetDefault(),
			ENIs: int(s.GetEnis()), UsedIPs: int(s.GetUsedIps()), FreeIPs: int(s.GetFreeIps()), CoolingIPs: int(s.GetCoolingIps())})
	}
	return u
}

// NetworkUsageToProto converts an agent's ENI use.
func NetworkUsageToProto(u *model.NetworkUsage) *schedv1.NetworkUsage {
	if u == nil {
		return nil
	}
	p := &schedv1.NetworkUsage{AttachableEnis: int32(u.AttachableENIs),
		DefaultSecurityGroups: u.DefaultSecurityGroups, DefaultSubnetId: u.DefaultSubnetID,
		ZoneSubnets: u.ZoneSubnets, OtherZoneSubnets: u.OtherZoneSubnets}
	for _, s := range u.SGSets {
		p.SgSets = append(p.SgSets, &schedv1.SGSetENIs{SecurityGroups: s.SecurityGroups, SubnetId: s.SubnetID, Default: s.Default,
			Enis: int32(s.ENIs), UsedIps: int32(s.UsedIPs), FreeIps: int32(s.FreeIPs), CoolingIps: int32(s.CoolingIPs)})
	}
	return p
}

// CapacityToProto converts a host's capacity.
func CapacityToProto(c model.Capacity) *schedv1.Capacity {
	r := c.Resources
	return &schedv1.Capacity{CpuMillicores: r.CPU, MemoryMib: r.Mem, DiskMib: r.Disk, NetworkMbps: r.Net, Gpus: int32(r.GPUs),
		Enis: int32(c.ENIs), IpsPerEni: int32(c.IPsPerENI), IpReuseCooldownMs: c.IPReuseCooldown.Milliseconds()}
}

// AgentFromProto converts an agent record (or view).
func AgentFromProto(p *schedv1.Agent) *model.Agent {
	a := &model.Agent{
		ID: p.GetId(), InstanceType: p.GetInstanceType(), AZ: p.GetAz(), Labels: p.GetLabels(),
		Capacity: CapacityFromProto(p.GetCapacity()), Attributes: AttributesFromProto(p.GetAttributes()), Drained: p.GetDrained(),
		DrainRemaining: p.GetDrainRemaining(), DrainBlocked: p.GetDrainBlocked(),
		Network:   NetworkUsageFromProto(p.GetNetwork()),
		Connected: p.GetConnected(), Healthy: p.GetHealthy(), Quarantined: p.GetQuarantined(), Lost: p.GetLost(),
		Tasks: p.GetTasks(), LastHeartbeat: timeFromProto(p.GetLastHeartbeat()),
	}
	if p.GetUsed() != nil {
		a.Used = CapacityFromProto(p.GetUsed())
	}
	return a
}

// AgentToProto converts an agent view.
func AgentToProto(a *model.Agent) *schedv1.Agent {
	return &schedv1.Agent{
		Id: a.ID, InstanceType: a.InstanceType, Az: a.AZ, Labels: a.Labels,
		Capacity: CapacityToProto(a.Capacity), Used: CapacityToProto(a.Used),
		Connected: a.Connected, Healthy: a.Healthy, Drained: a.Drained, Lost: a.Lost, Quarantined: a.Quarantined,
		Tasks: a.Tasks, LastHeartbeat: timeToProto(a.LastHeartbeat),
		Attributes: AttributesToProto(a.Attributes), Network: NetworkUsageToProto(a.Network),
		DrainRemaining: a.DrainRemaining, DrainBlocked: a.DrainBlocked,
	}
}

// AgentRecordToProto converts what survives a failover: registration and
// drain state, as the records have always been written.
func AgentRecordToProto(a *model.Agent) *schedv1.Agent {
	return &schedv1.Agent{Id: a.ID, InstanceType: a.InstanceType, Az: a.AZ, Labels: a.Labels, Capacity: CapacityToProto(a.Capacity),
		Attributes: AttributesToProto(a.Attributes), Drained: a.Drained}
}

// RegistrationFromProto converts an agent's register message.
func RegistrationFromProto(p *schedv1.Register) model.Registration {
	return model.Registration{
		InstanceID: p.GetInstanceId(), InstanceType: p.GetInstanceType(), AZ: p.GetAz(),
		Capacity: CapacityFromProto(p.GetCapacity()), Labels: p.GetLabels(), Tasks: TaskStatusesFromProto(p.GetTasks()),
		Attributes: AttributesFromProto(p.GetAttributes()), Network: NetworkUsageFromProto(p.GetNetwork()),
		Unhealthy: p.GetUnhealthy(),
	}
}

// capped is subnets, at most MaxReportedSubnets of them.
func capped(subnets []string) []string {
	return subnets[:min(len(subnets), MaxReportedSubnets)]
}
