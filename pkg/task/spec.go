package task

import "time"

// Resources is what a task asks the host for.
type Resources struct {
	CPUMillicores int64 `json:"cpuMillicores"`
	MemoryMiB     int64 `json:"memoryMiB"`
	DiskMiB       int64 `json:"diskMiB,omitempty"`
	NetworkMbps   int64 `json:"networkMbps,omitempty"`
	GPUs          int32 `json:"gpus,omitempty"`
	Pids          int64 `json:"pids,omitempty"`
	// CPUBurst: CPU shares only, no CFS quota (cpu.max = max).
	CPUBurst bool `json:"cpuBurst,omitempty"`
	// CPUBurstMillicores is a CFS burst allowance (cpu.max.burst,
	// cpu.cfs_burst_us): unused quota the task may spend above
	// CPUMillicores in one period, at most CPUMillicores; 0: none.
	CPUBurstMillicores int64 `json:"cpuBurstMillicores,omitempty"`
}

// NetworkRequest says which VPC security groups and subnets a task wants.
type NetworkRequest struct {
	SecurityGroupIDs []string `json:"securityGroupIds,omitempty"`
	SubnetIDs        []string `json:"subnetIds,omitempty"`
	IPv6             bool     `json:"ipv6,omitempty"`
}

// Spec is a validated task description. It is stored as JSON in the agent's
// state, so field names are part of the on-disk format.
type Spec struct {
	ID                string            `json:"id"`
	OwnerEmail        string            `json:"ownerEmail"`
	Image             string            `json:"image"`
	Entrypoint        []string          `json:"entrypoint,omitempty"`
	Command           []string          `json:"command,omitempty"`
	Env               map[string]string `json:"env,omitempty"`
	Resources         Resources         `json:"resources"`
	KillGracePeriod   time.Duration     `json:"killGracePeriod"`
	MaxRuntime        time.Duration     `json:"maxRuntime,omitempty"`
	Labels            map[string]string `json:"labels,omitempty"`
	IAMRoleARN        string            `json:"iamRoleArn,omitempty"`
	Network           NetworkRequest    `json:"network"`
	MetadataRequireV2 bool              `json:"metadataRequireV2,omitempty"`
	// HealthCheck, if set, is run while the task runs (see HealthCheck).
	HealthCheck *HealthCheck `json:"healthCheck,omitempty"`
	// Secrets are fetched with the task's IAM role and injected at start
	// (see SecretRef); only the references are stored, never the values.
	Secrets []SecretRef `json:"secrets,omitempty"`
}

// Defaults applied by Normalize when a field is left empty.
const (
	DefaultKillGracePeriod = 10 * time.Second
	DefaultPids            = 1024
	DefaultCPUMillicores   = 1000
	DefaultMemoryMiB       = 512
)

// Normalize fills defaults in place. Call it before Validate.
func (s *Spec) Normalize() {
	if s.KillGracePeriod == 0 {
		s.KillGracePeriod = DefaultKillGracePeriod
	}
	if s.Resources.Pids == 0 {
		s.Resources.Pids = DefaultPids
	}
	if s.Resources.CPUMillicores == 0 {
		s.Resources.CPUMillicores = DefaultCPUMillicores
	}
	if s.Resources.MemoryMiB == 0 {
		s.Resources.MemoryMiB = DefaultMemoryMiB
	}
	if h := s.HealthCheck; h != nil && h.Kind == HealthHTTP && h.Path == "" {
		c := *h // the caller's spec keeps its own
		c.Path = "/"
		s.HealthCheck = &c
	}
}

// Args is the full argv of the task's main process (entrypoint + command).
func (s *Spec) Args() []string {
	out := make([]string, 0, len(s.Entrypoint)+len(s.Command))
	out = append(out, s.Entrypoint...)
	return append(out, s.Command...)
}
