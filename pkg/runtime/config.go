package runtime

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Labels put on every container this package creates.
const (
	LabelManaged = "titus.agent/managed"
	LabelTaskID  = "titus.agent/task-id"
)

// Defaults applied by New.
const (
	DefaultNamespace   = "titus"
	DefaultSnapshotter = "overlayfs"
	defaultRuntime     = "io.containerd.runc.v2"
)

// Errors callers branch on. They are wrapped; test with errors.Is.
var (
	ErrImageNotFound       = errors.New("image not found")
	ErrRegistryNotAllowed  = errors.New("registry not allowed over plain HTTP")
	ErrContainerNotFound   = errors.New("container not found")
	ErrTaskAlreadyFinished = errors.New("task already finished")
)

// Auth is basic-auth credentials for one registry host.
type Auth struct {
	Username, Password string
}

// CredentialSource gives registry credentials by host (host[:port]); ok is
// false for a host it has none for. It is asked at each pull that meets an
// authentication challenge, so it may rotate them (ECR tokens expire).
type CredentialSource interface {
	Credentials(ctx context.Context, host string) (a Auth, ok bool, err error)
}

// credentialsTimeout bounds one CredentialSource call.
const credentialsTimeout = 30 * time.Second

// Config configures a Runtime.
type Config struct {
	Address   string // containerd gRPC socket
	Namespace string // containerd namespace; DefaultNamespace when empty
	// Snapshotter is the containerd snapshotter; DefaultSnapshotter when empty.
	Snapshotter string
	// PlainHTTPRegistries are hosts (host:port) that may be reached over
	// plain HTTP; every other registry is HTTPS only.
	PlainHTTPRegistries []string
	// RegistryAuth holds basic-auth credentials by host.
	RegistryAuth map[string]Auth
	// Credentials gives the credentials of hosts RegistryAuth does not
	// name (ECR's tokens); nil: none.
	Credentials CredentialSource
	// LogDir holds per-task logs: LogDir/<taskID>/stdout.log (rotated).
	// Empty discards container output.
	LogDir string
	// LoggerBinary is the absolute path of the task log driver,
	// cmd/titus-logger (package tasklog). When empty, output goes to a plain
	// log file (cio.LogFile), not rotated.
	LoggerBinary  string
	LogMaxSizeMiB int // per file; default 50
	// CgroupDriver is CgroupDriverCgroupfs (default) or
	// CgroupDriverSystemd; it must match how the host runs containers
	// (systemd as PID 1 with SystemdCgroup = true in production AMIs).
	CgroupDriver string
	LogMaxFiles  int // rotated files kept; default 5
	// MaxConcurrentDownloads bounds the layer downloads under way at once,
	// across every pull of this runtime; DefaultMaxConcurrentDownloads
	// when 0.
	MaxConcurrentDownloads int
}

// DefaultMaxConcurrentDownloads is Config.MaxConcurrentDownloads' default
// (containerd's CRI and Docker use 3 too).
const DefaultMaxConcurrentDownloads = 3

func (c *Config) setDefaults() error {
	if c.Address == "" {
		return errors.New("runtime: containerd address is required")
	}
	if c.Namespace == "" {
		c.Namespace = DefaultNamespace
	}
	if c.Snapshotter == "" {
		c.Snapshotter = DefaultSnapshotter
	}
	d, err := checkCgroupDriver(c.CgroupDriver)
	if err != nil {
		return err
	}
	c.CgroupDriver = d
	if c.LogMaxSizeMiB <= 0 {
		c.LogMaxSizeMiB = 50
	}
	if c.LogMaxFiles <= 0 {
		c.LogMaxFiles = 5
	}
	if c.MaxConcurrentDownloads < 0 {
		return fmt.Errorf("runtime: MaxConcurrentDownloads %d is negative", c.MaxConcurrentDownloads)
	}
	if c.MaxConcurrentDownloads == 0 {
		c.MaxConcurrentDownloads = DefaultMaxConcurrentDownloads
	}
	return nil
}
