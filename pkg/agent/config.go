package agent

import (
	"errors"
	"fmt"
	"github.com/titus-agent/titus-agent/pkg/isolation"
	"net/netip"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/titus-agent/titus-agent/pkg/gpu"
	"github.com/titus-agent/titus-agent/pkg/runtime"
	"github.com/titus-agent/titus-agent/pkg/tlsconfig"
)

// Config is the agent's YAML configuration. Every key is documented in
// docs/config.md with its default; unknown keys are refused.
type Config struct {
	// Socket is the control API's unix socket (mode 0660).
	Socket string `json:"socket"`
	// SocketGroup may use the socket besides root; empty = root only.
	SocketGroup string `json:"socketGroup"`
	// StateDir holds the durable task state.
	StateDir string `json:"stateDir"`
	// LogDir holds per-task stdout/stderr logs.
	LogDir     string           `json:"logDir"`
	Logs       LogConfig        `json:"logs"`
	Containerd ContainerdConfig `json:"containerd"`
	Registries RegistryConfig   `json:"registries"`
	Network    NetworkConfig    `json:"network"`
	Metadata   MetadataConfig   `json:"metadata"`
	Isolation  IsolationConfig  `json:"isolation"`
	Scheduler  SchedulerConfig  `json:"scheduler"`
	GPU        GPUConfig        `json:"gpu"`
	// Exec bounds debugging sessions (task exec).
	Exec ExecConfig `json:"exec"`
	// Secrets says where tasks' secrets are fetched from and kept.
	Secrets SecretsConfig `json:"secrets"`
	// LogShip ships task logs to S3 (docs/logs.md).
	LogShip LogShipConfig `json:"logship"`
	// MetricsListen serves Prometheus metrics; empty disables.
	MetricsListen string `json:"metricsListen"`
	// DebugListen serves Go's profiles and execution traces
	// (/debug/pprof/) on a loopback host:port; empty (the default)
	// disables. Never off the host: see debug.go.
	DebugListen string `json:"debugListen"`
	// MaxTasks bounds the tasks the agent holds at once.
	MaxTasks int `json:"maxTasks"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `json:"logLevel"`

	// Images: garbage collection, pinned and pre-pulled images.
	Images ImagesConfig `json:"images"`
}

// DiskPoolConfig is one size of the disk pool.
type DiskPoolConfig struct {
	SizeMiB int64 `json:"sizeMiB"`
	Count   int   `json:"count"`
}

// LogConfig sets per-task log rotation and the log driver.
type LogConfig struct {
	MaxSizeMiB int `json:"maxSizeMiB"`
	MaxFiles   int `json:"maxFiles"`
	// Driver is the task log driver binary (cmd/titus-logger); empty: the
	// titus-logger next to the agent's binary, else the one on $PATH.
	Driver string `json:"driver"`
}

// ContainerdConfig points at containerd.
type ContainerdConfig struct {
	Address   string `json:"address"`
	Namespace string `json:"namespace"`
	// CgroupDriver is who makes task cgroups: systemd (a transient scope
	// per task, in a slice per task in titus.slice, what a host booted by
	// systemd wants),
	// cgroupfs (runc writes /<namespace>/<id>), or auto: systemd when
	// systemd is the init system, else cgroupfs.
	CgroupDriver string `json:"cgroupDriver"`
}

// cgroupDriver resolves containerd.cgroupDriver for this host.
func (c ContainerdConfig) cgroupDriver(systemdBooted bool) (string, error) {
	switch c.CgroupDriver {
	case "", "auto":
		if systemdBooted {
			return runtime.CgroupDriverSystemd, nil
		}
		return runtime.CgroupDriverCgroupfs, nil
	case runtime.CgroupDriverCgroupfs:
		return c.CgroupDriver, nil
	case runtime.CgroupDriverSystemd:
		if !systemdBooted {
			return "", errors.New("containerd.cgroupDriver: systemd needs systemd as the init system (no /run/systemd/system); use cgroupfs or auto")
		}
		return c.CgroupDriver, nil
	}
	return "", fmt.Errorf("containerd.cgroupDriver: %q: must be auto, systemd or cgroupfs", c.CgroupDriver)
}

// RegistryConfig says which registries may use plain HTTP and their auth.
type RegistryConfig struct {
	PlainHTTP []string                `json:"plainHTTP"`
	Auth      map[string]RegistryAuth `json:"auth"`
	ECR       ECRConfig               `json:"ecr"`
}

// ECRConfig: registries whose whole host matches HostPattern get
// credentials from ecr:GetAuthorizationToken (package ecrauth).
type ECRConfig struct {
	Enabled bool `json:"enabled"`
	// HostPattern is a regular expression matched against a registry's
	// whole host[:port]; named groups account and region; empty:
	// ecrauth.DefaultHostPattern.
	HostPattern string `json:"hostPattern"`
	// Region of hosts whose pattern has no region group.
	Region string `json:"region"`
	// Endpoint overrides ECR's API endpoint (moto in tests).
	Endpoint string `json:"endpoint"`
	// AccessKeyID and SecretAccessKey are static credentials; empty =
	// the SDK's default chain (the instance role).
	AccessKeyID     string `json:"accessKeyID"`
	SecretAccessKey string `json:"secretAccessKey"`
	// RefreshBefore (Go duration): a cached token with less life left is
	// fetched anew before a pull uses it.
	RefreshBefore string `json:"refreshBefore"`
	// RefreshInterval (Go duration, at least 1s): how often the tokens a
	// pull used in the last 24 h are checked and, once within
	// RefreshBefore of their expiry, fetched anew ahead of any pull.
	RefreshInterval string `json:"refreshInterval"`
}

// ImagesConfig: image garbage collection, pinned and pre-pulled images.
type ImagesConfig struct {
	GC ImageGCConfig `json:"gc"`
	// Pinned images are never removed (by GC, prune or rm).
	Pinned []string `json:"pinned"`
	// PrePull images are pulled at agent start.
	PrePull []string `json:"prePull"`
	// PrePullWait (Go duration) is how long the agent start waits for the
	// pre-pulls before it reports ready; they go on after it.
	PrePullWait string `json:"prePullWait"`
	// MaxConcurrentDownloads bounds the layer downloads under way at
	// once, over every pull (0: runtime.DefaultMaxConcurrentDownloads).
	MaxConcurrentDownloads int `json:"maxConcurrentDownloads"`
}

// ImageGCConfig: when the image store's usage passes HighWatermark, the
// least recently used images no task holds go until it is below
// LowWatermark. A watermark is bytes ("20GiB") or a percentage ("85%")
// of the filesystem at StorePath.
type ImageGCConfig struct {
	Enabled       bool   `json:"enabled"`
	HighWatermark string `json:"highWatermark"`
	LowWatermark  string `json:"lowWatermark"`
	// MinAge (Go duration): images pulled more recently stay.
	MinAge string `json:"minAge"`
	// Interval (Go duration) between usage checks.
	Interval string `json:"interval"`
	// StorePath is on the filesystem holding containerd's content store;
	// the percentages are of its size. Empty: the content store's root as
	// containerd reports it.
	StorePath string `json:"storePath"`
}

// RegistryAuth is basic auth for one registry host.
type RegistryAuth struct {
	Username string `json:"username"`
	Password string `json:"password"`
}

// NetworkConfig selects the IP provider.
type NetworkConfig struct {
	// Provider is none, local or ec2.
	Provider string         `json:"provider"`
	Local    LocalNetConfig `json:"local"`
	EC2      EC2NetConfig   `json:"ec2"`
	NetNSDir string         `json:"netnsDir"`
	// HostNetNS is the netns holding the host\'s interfaces; empty = the
	// agent\'s own (tests use it to run simulated hosts).
	HostNetNS string         `json:"hostNetNS"`
	DNS       []string       `json:"dns"`
	Firewall  FirewallConfig `json:"firewall"`
	// NamespacePool is how many network namespaces, each with its veth,
	// the agent keeps ready for launches; 0 disables.
	NamespacePool int `json:"namespacePool"`
}

// NamespacePoolDir is where the pooled namespaces are bind-mounted: beside
// the task namespaces, never among them.
func (n NetworkConfig) NamespacePoolDir() string { return filepath.Clean(n.NetNSDir) + "-pool" }

// LocalNetConfig is the no-cloud provider: IPs from a CIDR behind a bridge.
type LocalNetConfig struct {
	CIDR   string `json:"cidr"`
	Bridge string `json:"bridge"`
}

// EC2NetConfig is the production provider.
type EC2NetConfig struct {
	Endpoint      string `json:"endpoint"`
	Region        string `json:"region"`
	WarmIPs       int    `json:"warmIPs"`
	MinWarmIPs    int    `json:"minWarmIPs"`
	DefaultSubnet string `json:"defaultSubnet"`
	// DefaultSecurityGroups apply to tasks that name none.
	DefaultSecurityGroups []string `json:"defaultSecurityGroups"`
	// InstanceID overrides the instance learned from IMDS (simulated hosts).
	InstanceID string `json:"instanceID"`
	// AccessKeyID and SecretAccessKey are static credentials (moto in tests);
	// empty = the SDK's default chain (the instance role in production).
	AccessKeyID     string `json:"accessKeyID"`
	SecretAccessKey string `json:"secretAccessKey"`
	// PoolReleaseAfter and ReuseCooldown tune the warm pools (Go durations).
	PoolReleaseAfter string `json:"poolReleaseAfter"`
	ReuseCooldown    string `json:"reuseCooldown"`
}

// MetadataConfig configures the per-task metadata service.
type MetadataConfig struct {
	Enabled bool `json:"enabled"`
	// Upstream is the host's IMDS, e.g. http://169.254.169.254 on EC2.
	Upstream    string `json:"upstream"`
	RequireV2   bool   `json:"requireV2"`
	STSEndpoint string `json:"stsEndpoint"`
	Region      string `json:"region"`
	// AccessKeyID and SecretAccessKey are the agent's own static
	// credentials for STS (moto in tests); empty = the SDK's default chain.
	AccessKeyID     string `json:"accessKeyID"`
	SecretAccessKey string `json:"secretAccessKey"`
	// Allowlist of host metadata paths (under meta-data/) proxied upstream.
	Allowlist []string `json:"allowlist"`
	// AccountID goes into identity documents.
	AccountID string `json:"accountID"`
	// CredentialDuration of each role session (Go duration, default 1h).
	CredentialDuration string `json:"credentialDuration"`
}

// IsolationConfig configures hardening and disk quota.
type IsolationConfig struct {
	// InitPath is bind-mounted as the task's init (zombie reaping).
	InitPath string `json:"initPath"`
	// DiskDir holds per-task quota'd filesystems.
	DiskDir string `json:"diskDir"`
	// CPUSet pins every task to these CPUs ("2-3"); empty means any.
	CPUSet string `json:"cpuSet"`
	// OOMScoreAdj of tasks' processes, so they die before the agent
	// (whose unit runs at -900); 0 means isolation.DefaultOOMScoreAdj.
	OOMScoreAdj int `json:"oomScoreAdj"`
	// AllowedHostPaths may be bind-mounted into tasks that ask through the
	// titus.isolation/host-mounts label; nothing else of the host is. Each
	// is "path" (read-only) or "path:rw" (tasks may ask for read-write).
	AllowedHostPaths []string `json:"allowedHostPaths"`
	// AllowedDevices may be given to tasks that ask through the
	// titus.isolation/devices label.
	AllowedDevices []string `json:"allowedDevices"`
	// Compat32BitSyscalls lets tasks make 32-bit (x86, x32) system calls;
	// off, only the native ABI passes the seccomp filter.
	Compat32BitSyscalls bool `json:"compat32BitSyscalls"`
	// UserNamespaces are the host IDs for tasks that ask for their own
	// user namespace (label titus.isolation/user-namespace).
	UserNamespaces UserNamespacesConfig `json:"userNamespaces"`
	// RequireUserNamespace is "" (tasks choose), "refuse" (a task without
	// its own user namespace is refused at launch) or "force" (every task
	// gets one).
	RequireUserNamespace string `json:"requireUserNamespace"`
	// RequireCPUQuota refuses tasks asking cpu_burst (CPU shares only, no
	// CFS quota): every task is then held to its cpu_millicores, plus at
	// most its cpu_burst_millicores allowance within a period.
	RequireCPUQuota bool `json:"requireCPUQuota"`
	// DiskPool is how many formatted disk images of which sizes the
	// agent keeps ready for launches (loop-ext4 backend); empty disables.
	DiskPool []DiskPoolConfig `json:"diskPool"`
	// DiskMiB and NetworkMbps are the host's default and ceiling for what
	// tasks ask (host_policy.go).
	DiskMiB     LimitConfig `json:"diskMiB"`
	NetworkMbps LimitConfig `json:"networkMbps"`
}

// UserNamespacesConfig: task i of at most MaxTasks gets host IDs
// [HostIDBase + i*IDsPerTask, HostIDBase + (i+1)*IDsPerTask).
// HostIDBase 0 disables user namespaces.
type UserNamespacesConfig struct {
	HostIDBase uint32 `json:"hostIDBase"`
	IDsPerTask uint32 `json:"idsPerTask"`
	MaxTasks   uint32 `json:"maxTasks"`
}

// SecretsConfig says where tasks' secrets (task.SecretRef) are fetched and
// kept. They are fetched with each task's own role credentials, from the
// same STS as its metadata (metadata.stsEndpoint, metadata.accessKeyID).
type SecretsConfig struct {
	// Dir holds a tmpfs per task with file secrets: a runtime directory
	// (mode 0700), never below stateDir.
	Dir string `json:"dir"`
	// Endpoint overrides the Secrets Manager and SSM endpoint (moto in
	// tests); empty = AWS's for the secret's region.
	Endpoint string `json:"endpoint"`
	// Region for SSM parameters given by name; empty = metadata.region.
	Region string `json:"region"`
}

// GPUConfig says where the host's NVIDIA devices and driver are.
type GPUConfig struct {
	// DevRoot is searched for nvidiaN, nvidiactl and nvidia-uvm.
	DevRoot string `json:"devRoot"`
	// NvidiaSMI is nvidia-smi's path; "" looks it up on $PATH.
	NvidiaSMI string `json:"nvidiaSMI"`
	// CDISpecDirs hold the NVIDIA Container Toolkit's CDI spec; when one
	// names a task's devices, CDI injects them.
	CDISpecDirs []string `json:"cdiSpecDirs"`
	// DriverFiles are globs of the driver's files mounted read-only into
	// GPU tasks without CDI; nil = gpu.DriverGlobs.
	DriverFiles []string `json:"driverFiles"`
}

// SchedulerConfig is the link to the central scheduler.
type SchedulerConfig struct {
	// Address of the scheduler; empty = run standalone.
	Address      string            `json:"address"`
	InstanceID   string            `json:"instanceID"`
	InstanceType string            `json:"instanceType"`
	Zone         string            `json:"zone"`
	Labels       map[string]string `json:"labels"`
	// NetworkMbps is the host's bandwidth offered to tasks.
	NetworkMbps int64 `json:"networkMbps"`
	// TLS of the stream: caFile verifies the scheduler, certFile/keyFile
	// are this host's client certificate; none set = plaintext.
	TLS tlsconfig.Files `json:"tls"`
}

// DefaultConfig is the configuration when no file and no flag says otherwise.
func DefaultConfig() Config {
	return Config{
		Socket:        "/run/titus-agent/agent.sock",
		SocketGroup:   "",
		StateDir:      "/var/lib/titus-agent",
		LogDir:        "/var/log/titus-agent/tasks",
		Logs:          LogConfig{MaxSizeMiB: 10, MaxFiles: 3},
		Containerd:    ContainerdConfig{Address: "/run/containerd/containerd.sock", Namespace: "titus", CgroupDriver: "auto"},
		Network:       NetworkConfig{Provider: "none", NetNSDir: "/run/titus-agent/netns", Local: LocalNetConfig{CIDR: "198.19.255.0/24", Bridge: "titus-br0"}, Firewall: FirewallConfig{Enabled: true}},
		Metadata:      MetadataConfig{Enabled: true},
		Isolation:     defaultIsolation(),
		MetricsListen: "127.0.0.1:9101",
		Scheduler:     SchedulerConfig{InstanceType: "local", Zone: "local-1a", NetworkMbps: 1000},
		MaxTasks:      5000,
		LogLevel:      "info",
		Exec:          defaultExec(),
		Secrets:       SecretsConfig{Dir: "/run/titus-agent/secrets"},
		LogShip:       defaultLogShip(),
		GPU:           GPUConfig{DevRoot: "/dev", CDISpecDirs: slices.Clone(gpu.DefaultCDISpecDirs)},
		Registries:    RegistryConfig{ECR: ECRConfig{Enabled: true, RefreshBefore: "1h", RefreshInterval: "1m"}},
		Images: ImagesConfig{PrePullWait: "2m", GC: ImageGCConfig{Enabled: true, HighWatermark: "85%", LowWatermark: "75%",
			MinAge: "10m", Interval: "1m"}},
	}
}

// LoadConfig reads a YAML file over the defaults; unknown keys and bad
// values are errors. An empty path returns the defaults.
func LoadConfig(path string) (Config, error) {
	cfg := DefaultConfig()
	if path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return cfg, fmt.Errorf("read config: %w", err)
		}
		if err := yaml.UnmarshalStrict(b, &cfg); err != nil {
			return cfg, fmt.Errorf("config %s: %w", path, err)
		}
	}
	return cfg, cfg.Validate()
}

// Validate parses and checks every value that would only fail later, and
// names the key of each one that is wrong.
func (c *Config) Validate() error {
	var errs []error
	errs = append(errs, c.check()...)
	if c.Containerd.Address == "" {
		errs = append(errs, errors.New("containerd.address: is required"))
	}
	if _, err := c.Containerd.cgroupDriver(systemdBooted()); err != nil {
		errs = append(errs, err)
	}
	if _, err := c.Scheduler.TLS.Client(); err != nil {
		errs = append(errs, fmt.Errorf("scheduler.tls: %w", err))
	}
	if c.Logs.MaxSizeMiB < 1 || c.Logs.MaxFiles < 1 {
		errs = append(errs, errors.New("logs: maxSizeMiB and maxFiles must be at least 1"))
	}
	switch c.Network.Provider {
	case "none", "ec2":
	case "local":
		p, err := netip.ParsePrefix(c.Network.Local.CIDR)
		if err != nil || !p.Addr().Is4() || p.Bits() > 30 {
			errs = append(errs, fmt.Errorf("network.local.cidr: must be an IPv4 CIDR of /30 or larger, got %q", c.Network.Local.CIDR))
		}
		if c.Network.Local.Bridge == "" || len(c.Network.Local.Bridge) > 15 {
			errs = append(errs, errors.New("network.local.bridge: must be 1-15 characters"))
		}
	default:
		errs = append(errs, fmt.Errorf("network.provider: must be none, local or ec2, got %q", c.Network.Provider))
	}
	if c.Network.NamespacePool < 0 || c.Network.NamespacePool > maxPool {
		errs = append(errs, fmt.Errorf("network.namespacePool: must be 0 to %d, got %d", maxPool, c.Network.NamespacePool))
	}
	if c.SocketGroup != "" {
		if _, err := c.socketGID(); err != nil {
			errs = append(errs, fmt.Errorf("socketGroup: %w", err))
		}
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("logLevel: must be debug, info, warn or error, got %q", c.LogLevel))
	}
	if c.MaxTasks < 1 {
		errs = append(errs, errors.New("maxTasks: must be at least 1"))
	}
	errs = append(errs, c.Isolation.validate())
	errs = append(errs, c.Images.validate()...)
	errs = append(errs, c.Registries.ECR.validate()...)
	if err := c.Secrets.validate(c.StateDir); err != nil {
		errs = append(errs, err)
	}
	if err := c.LogShip.validate(); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, c.checkHostPathsPrivate()...)
	return errors.Join(errs...)
}

// maxPool bounds every launch pool: each pooled object holds kernel
// state (a namespace, a veth) or disk space until a launch takes it.
const maxPool = 64

// checkHostPathsPrivate refuses a host path a task may mount that holds,
// or lies within, what the agent keeps from tasks: its state (every
// tenant's spec and environment), the secrets of every task, every task's
// logs, network namespaces and disks, pooled ones included. Such a grant would hand any task that asks
// for it the other tenants'. A grant holding the agent's control socket
// or containerd's is refused too: a task running as root reaches them
// through the mount and becomes the host (the kernel vouches root for the
// agent's socket; containerd's answers anyone).
func (c *Config) checkHostPathsPrivate() []error {
	var errs []error
	dirs := []struct{ key, path string }{{"stateDir", c.StateDir}, {"secrets.dir", c.Secrets.Dir}, {"logDir", c.LogDir}, {"network.netNSDir", c.Network.NetNSDir},
		{"the network namespace pool", c.Network.NamespacePoolDir()}, {"isolation.diskDir", c.Isolation.DiskDir}}
	sockets := []struct{ key, path string }{{"socket", c.Socket}, {"containerd.address", c.Containerd.Address}}
	for _, s := range c.Isolation.AllowedHostPaths {
		hp, err := isolation.ParseHostPath(s)
		if err != nil {
			continue // reported by the isolation checks
		}
		for _, d := range dirs {
			if d.path != "" && (within(hp.Path, d.path) || within(d.path, hp.Path)) {
				errs = append(errs, fmt.Errorf("isolation.allowedHostPaths: %q overlaps %s %s, which no task may see", s, d.key, d.path))
			}
		}
		for _, k := range sockets {
			if k.path != "" && within(k.path, hp.Path) {
				errs = append(errs, fmt.Errorf("isolation.allowedHostPaths: %q holds %s %s, which no task may reach", s, k.key, k.path))
			}
		}
	}
	return errs
}

// within reports whether path is dir or below it.
func within(path, dir string) bool {
	rel, err := filepath.Rel(filepath.Clean(dir), filepath.Clean(path))
	return err == nil && (rel == "." || !strings.HasPrefix(rel, ".."))
}

// socketGID resolves SocketGroup (a name or a number); -1 means root only.
func (c *Config) socketGID() (int, error) {
	if c.SocketGroup == "" {
		return -1, nil
	}
	if n, err := strconv.Atoi(c.SocketGroup); err == nil {
		return n, nil
	}
	g, err := user.LookupGroup(c.SocketGroup)
	if err != nil {
		return -1, err
	}
	return strconv.Atoi(g.Gid)
}

// validate: secrets.dir is absolute and outside stateDir (a value must
// never be where the durable state is, or a backup of it).
func (s SecretsConfig) validate(stateDir string) error {
	if !filepath.IsAbs(s.Dir) {
		return fmt.Errorf("secrets.dir: must be an absolute path, got %q", s.Dir)
	}
	if stateDir != "" {
		if within(s.Dir, stateDir) {
			return fmt.Errorf("secrets.dir: must not be in stateDir %s (a runtime directory such as /run/titus-agent/secrets)", stateDir)
		}
	}
	return nil
}
