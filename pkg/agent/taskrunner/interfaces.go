package taskrunner

import (
	"context"
	"slices"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/titus-agent/titus-agent/pkg/isolation"
	"github.com/titus-agent/titus-agent/pkg/runtime"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// Hook is one step of a task's life. Implementations live in *_hook.go.
type Hook interface {
	Name() string
}

// PrestartRequest is what a hook sees before the task's process starts.
type PrestartRequest struct {
	Spec *task.Spec
	// Resources holds what hooks of earlier stages produced. Read only.
	Resources *Resources
	// Recorded, set for the hooks of the last stage, returns once the
	// task's record (Starting, with every resource the earlier stages
	// made) is on disk, or why it could not be written. The container
	// hook calls it after creating the container and before its process
	// starts: no task runs that its record does not know.
	Recorded func() error
}

// PrestartResponse is what one hook hands to later hooks. The runner merges
// each non-empty field into the task's Resources as the hook ends, and
// persists it before the container starts, so Stop and Restore find it
// after an agent restart.
type PrestartResponse struct {
	Image     *runtime.Image
	Network   *task.NetworkAttachment
	Disk      *DiskInfo
	Metadata  *MetadataInfo
	Mounts    []Mount
	Env       map[string]string
	SpecOpts  []string // names of isolation options applied, for the record
	Pid       uint32
	Container bool
	// Steps are timed steps within the hook (the runtime's), recorded
	// with the task's next transition beside the hook's own time; they
	// are not resources.
	Steps []task.Step

	// SecretEnv are secret values for the task's environment: in memory
	// only, never persisted (see Resources.SecretEnv).
	SecretEnv map[string]string
	// SecretsDir is the task's secrets tmpfs on the host.
	SecretsDir string

	// Durable, if set, returns once what the hook made is on disk (a
	// record the hook left writing in the background, e.g. the network's
	// address allocation). The runner waits for it beside the task's own
	// record, before the task's process starts (PrestartRequest.Recorded).
	// Not a resource.
	Durable func(context.Context) error
}

// PrestartHook prepares something the task needs. It must be safe to call
// again for the same task (a restarted agent may repeat it).
type PrestartHook interface {
	Hook
	Prestart(ctx context.Context, req *PrestartRequest, resp *PrestartResponse) error
}

// StopRequest carries what a stop hook needs to undo its work.
type StopRequest struct {
	Spec      *task.Spec
	Resources *Resources
}

// StopHook undoes a PrestartHook. It must be idempotent: it runs after a
// partial prestart, twice, and after an agent restart from persisted state.
// It never gets a cancelled context.
type StopHook interface {
	Hook
	Stop(ctx context.Context, req *StopRequest) error
}

// RestoreHook re-creates in-memory state (listeners, watchers) for a task
// that kept running while the agent restarted.
type RestoreHook interface {
	Hook
	Restore(ctx context.Context, req *StopRequest) error
}

// PoststartRequest is what a hook sees once the task's process runs (and
// again when a restarted agent re-adopts the running task).
type PoststartRequest struct {
	Spec      *task.Spec
	Resources *Resources
	// Started is when the task started running.
	Started time.Time
	// Health is the task's recorded health (nil: none yet).
	Health *task.Health
	// ReportHealth records a health check's result: a status change is
	// persisted and published, the latest result kept in memory. It is
	// ignored once the task is no longer running.
	ReportHealth func(h task.Health, changed bool)
}

// PoststartHook starts what lives beside a running task (health checks).
// What it starts ends when ctx ends (the agent shuts down) and at its
// Stop (StopHook), which the runner calls when the task is killed and
// again at teardown.
type PoststartHook interface {
	Hook
	Poststart(ctx context.Context, req *PoststartRequest) error
}

// Resources is everything hooks created for a task; it is persisted with the
// task record.
type Resources struct {
	// Image is the task's image as the image hook resolved it, once per
	// launch: later hooks and a resumed launch use this digest, never the
	// tag again. (Records before it had "image": the reference; ignored.)
	Image     *runtime.Image          `json:"resolvedImage,omitempty"`
	Network   *task.NetworkAttachment `json:"network,omitempty"`
	Disk      *DiskInfo               `json:"disk,omitempty"`
	Metadata  *MetadataInfo           `json:"metadata,omitempty"`
	Mounts    []Mount                 `json:"mounts,omitempty"`
	Env       map[string]string       `json:"env,omitempty"`
	Container bool                    `json:"container,omitempty"`
	Pid       uint32                  `json:"pid,omitempty"`
	// GPUs are the task's devices, set with the Accepted record.
	GPUs *GPUs `json:"gpus,omitempty"`

	// SecretEnv carries the values of the task's env secrets from the
	// secrets hook to the container's create, in memory only: never
	// persisted (json "-"), dropped once the launch is over.
	SecretEnv map[string]string `json:"-"`
	// SecretsDir is the task's secrets tmpfs on the host (a path, no
	// value): its files are given to the task's user at create.
	SecretsDir string `json:"secretsDir,omitempty"`
}

// DiskInfo is a task's quota'd writable filesystem.
type DiskInfo struct {
	Backend   string `json:"backend"`
	ImagePath string `json:"imagePath,omitempty"`
	MountPath string `json:"mountPath"`
	// UserNS is the task's own user namespace, if it asked for one. It is
	// the authority for the task's ID range after an agent restart.
	UserNS *UserNS `json:"userNS,omitempty"`
}

// The record's own types for what other packages model (the OCI spec,
// isolation): their changes must not change the on-disk format. The JSON
// names are those the record had when it embedded the foreign types
// (record version 1).

// IDMapping is one range of a user namespace's ID map.
type IDMapping struct {
	ContainerID uint32 `json:"containerID"`
	HostID      uint32 `json:"hostID"`
	Size        uint32 `json:"size"`
}

// UserNS is a task's user namespace: its UID and GID maps.
type UserNS struct {
	UIDMap []IDMapping `json:"UIDMap"`
	GIDMap []IDMapping `json:"GIDMap"`
}

// Mount is a bind mount the task gets.
type Mount struct {
	Destination string   `json:"destination"`
	Type        string   `json:"type,omitempty"`
	Source      string   `json:"source,omitempty"`
	Options     []string `json:"options,omitempty"`
}

func (m Mount) oci() specs.Mount {
	return specs.Mount{Destination: m.Destination, Type: m.Type, Source: m.Source, Options: slices.Clone(m.Options)}
}

// UserNSFrom records an isolation user namespace (nil for nil).
func UserNSFrom(u *isolation.UserNS) *UserNS {
	if u == nil {
		return nil
	}
	conv := func(ms []specs.LinuxIDMapping) []IDMapping {
		out := make([]IDMapping, len(ms))
		for i, m := range ms {
			out[i] = IDMapping{ContainerID: m.ContainerID, HostID: m.HostID, Size: m.Size}
		}
		return out
	}
	return &UserNS{UIDMap: conv(u.UIDMap), GIDMap: conv(u.GIDMap)}
}

// Isolation is the recorded user namespace as isolation models it.
func (u *UserNS) Isolation() *isolation.UserNS {
	if u == nil {
		return nil
	}
	conv := func(ms []IDMapping) []specs.LinuxIDMapping {
		out := make([]specs.LinuxIDMapping, len(ms))
		for i, m := range ms {
			out[i] = specs.LinuxIDMapping{ContainerID: m.ContainerID, HostID: m.HostID, Size: m.Size}
		}
		return out
	}
	return &isolation.UserNS{UIDMap: conv(u.UIDMap), GIDMap: conv(u.GIDMap)}
}

// MetadataInfo records the task's metadata listener.
type MetadataInfo struct {
	Addresses []string `json:"addresses"`
}

// empty says the hook created nothing to record.
func (p *PrestartResponse) empty() bool {
	return p.Image == nil && p.Network == nil && p.Disk == nil && p.Metadata == nil && len(p.Mounts) == 0 &&
		len(p.Env) == 0 && len(p.SpecOpts) == 0 && p.Pid == 0 && !p.Container && len(p.SecretEnv) == 0 && p.SecretsDir == ""
}

func (r *Resources) merge(p *PrestartResponse) {
	if p.Image != nil {
		r.Image = p.Image
	}
	if p.Network != nil {
		r.Network = p.Network
	}
	if p.Disk != nil {
		r.Disk = p.Disk
	}
	if p.Metadata != nil {
		r.Metadata = p.Metadata
	}
	// A hook run again (a resumed launch) gives its mounts again: one per
	// destination, the latest.
	for _, m := range p.Mounts {
		r.Mounts = slices.DeleteFunc(r.Mounts, func(o Mount) bool { return o.Destination == m.Destination })
		r.Mounts = append(r.Mounts, m)
	}
	for k, v := range p.Env {
		if r.Env == nil {
			r.Env = map[string]string{}
		}
		r.Env[k] = v
	}
	for k, v := range p.SecretEnv {
		if r.SecretEnv == nil {
			r.SecretEnv = map[string]string{}
		}
		r.SecretEnv[k] = v
	}
	if p.SecretsDir != "" {
		r.SecretsDir = p.SecretsDir
	}
	if p.Container {
		r.Container = true
	}
	if p.Pid != 0 {
		r.Pid = p.Pid
	}
}
