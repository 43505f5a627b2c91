package model

// Tier says how a capacity group's quota is honoured.
type Tier string

const (
	// TierCritical is guaranteed: a job that would exceed the group's quota is refused.
	TierCritical Tier = "critical"
	// TierFlex is best effort: a job beyond the quota is accepted and queued
	// until the group's usage drops below its quota; it is placed after critical work.
	TierFlex Tier = "flex"
)

// Group is a capacity group: a named per-application quota.
type Group struct {
	Name string `json:"name"`
	Tier Tier   `json:"tier"`
	// Quota of CPU (millicores) and memory (MiB); 0 = unlimited.
	CPUMillicores int64 `json:"cpuMillicores,omitempty"`
	MemoryMiB     int64 `json:"memoryMiB,omitempty"`
	// MaxPending bounds the group's queued (not yet placed) tasks; 0 = the scheduler's per-group default.
	MaxPending int `json:"maxPending,omitempty"`
}

// DefaultGroup is used by jobs that name no capacity group.
const DefaultGroup = "default"
