package wire

import (
	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
	"github.com/titus-agent/titus-agent/pkg/scheduler/model"
)

// CapacityFromProto converts a host's capacity.
func CapacityFromProto(c *schedv1.Capacity) model.Capacity {
	return model.Capacity{
		Resources: model.Resources{CPU: c.GetCpuMillicores(), Mem: c.GetMemoryMib(), Disk: c.GetDiskMib(), Net: c.GetNetworkMbps(), GPUs: int64(c.GetGpus())},
		ENIs:      int(c.GetEnis()), IPsPerENI: int(c.GetIpsPerEni()),
	}
}

// CapacityToProto converts a host's capacity.
func CapacityToProto(c model.Capacity) *schedv1.Capacity {
	r := c.Resources
	return &schedv1.Capacity{CpuMillicores: r.CPU, MemoryMib: r.Mem, DiskMib: r.Disk, NetworkMbps: r.Net, Gpus: int32(r.GPUs),
		Enis: int32(c.ENIs), IpsPerEni: int32(c.IPsPerENI)}
}

// AgentFromProto converts an agent record (or view).
func AgentFromProto(p *schedv1.Agent) *model.Agent {
	a := &model.Agent{
		ID: p.GetId(), InstanceType: p.GetInstanceType(), AZ: p.GetAz(), Labels: p.GetLabels(),
		Capacity: CapacityFromProto(p.GetCapacity()), Drained: p.GetDrained(),
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
	}
}

// AgentRecordToProto converts what survives a failover: registration and
// drain state, as the records have always been written.
func AgentRecordToProto(a *model.Agent) *schedv1.Agent {
	return &schedv1.Agent{Id: a.ID, InstanceType: a.InstanceType, Az: a.AZ, Labels: a.Labels, Capacity: CapacityToProto(a.Capacity), Drained: a.Drained}
}

// RegistrationFromProto converts an agent's register message.
func RegistrationFromProto(p *schedv1.Register) model.Registration {
	return model.Registration{
		InstanceID: p.GetInstanceId(), InstanceType: p.GetInstanceType(), AZ: p.GetAz(),
		Capacity: CapacityFromProto(p.GetCapacity()), Labels: p.GetLabels(), Tasks: TaskStatusesFromProto(p.GetTasks()),
	}
}
