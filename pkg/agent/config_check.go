package agent

import (
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/titus-agent/titus-agent/pkg/task"
)

// MaxCredentialDuration is the longest role session STS gives.
const MaxCredentialDuration = 12 * time.Hour

// configChecker collects field-named errors (task.FieldError, the same
// form a task spec's errors take) for every value the daemon would only
// fail on later: so `config check` and a starting daemon refuse them up
// front, each naming its key.
type configChecker struct{ errs []error }

func (c *configChecker) failf(field, format string, a ...any) {
	c.errs = append(c.errs, &task.FieldError{Field: field, Rule: fmt.Sprintf(format, a...)})
}

// absPath: an absolute path; empty only if optional.
func (c *configChecker) absPath(field, p string, optional bool) {
	switch {
	case p == "" && optional:
	case p == "":
		c.failf(field, "is required")
	case !filepath.IsAbs(p):
		c.failf(field, "must be an absolute path, got %q", p)
	}
}

// duration: a Go duration (1h, 15m, 90s) in [lo, hi]; empty means the
// default.
func (c *configChecker) duration(field, s string, lo, hi time.Duration) {
	if s == "" {
		return
	}
	d, err := time.ParseDuration(s)
	switch {
	case err != nil:
		c.failf(field, "must be a duration like 1h, 15m or 90s, got %q", s)
	case d < lo || d > hi:
		c.failf(field, "must be between %s and %s, got %s", lo, hi, d)
	}
}

// url: an http or https URL with a host; empty means none or the default.
func (c *configChecker) url(field, s string) {
	if s == "" {
		return
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		c.failf(field, "must be an http:// or https:// URL, got %q", s)
	}
}

// hostPort: host:port with a port number; empty means off.
func (c *configChecker) hostPort(field, s string) {
	if s == "" {
		return
	}
	_, port, err := net.SplitHostPort(s)
	if n, perr := strconv.Atoi(port); err != nil || perr != nil || n < 0 || n > 65535 {
		c.failf(field, "must be host:port, got %q", s)
	}
}

// loopbackHostPort: host:port on a loopback address (127.0.0.0/8, ::1 or
// localhost); empty means off. What it serves must not leave the host.
func (c *configChecker) loopbackHostPort(field, s string) {
	if s == "" {
		return
	}
	host, port, err := net.SplitHostPort(s)
	if n, perr := strconv.Atoi(port); err != nil || perr != nil || n < 0 || n > 65535 {
		c.failf(field, "must be host:port, got %q", s)
		return
	}
	if host == "localhost" {
		return
	}
	if a, err := netip.ParseAddr(host); err != nil || !a.Unmap().IsLoopback() {
		c.failf(field, "must be a loopback address (127.0.0.1:PORT, [::1]:PORT or localhost:PORT), got %q", s)
	}
}

// hostPorts: a comma-separated list of host:port (the replicas of a
// scheduler, tried in turn); empty means off.
func (c *configChecker) hostPorts(field, s string) {
	if s == "" {
		return
	}
	for _, a := range strings.Split(s, ",") {
		if strings.TrimSpace(a) == "" {
			c.failf(field, "must be host:port[,host:port...], got an empty entry in %q", s)
			return
		}
		c.hostPort(field, strings.TrimSpace(a))
	}
}

func (c *configChecker) nonNegative(field string, v int64) {
	if v < 0 {
		c.failf(field, "must not be negative, got %d", v)
	}
}

// cpuSetRE is the kernel's cpuset list syntax: "2", "0-3", "0-3,6,8-9".
var cpuSetRE = regexp.MustCompile(`^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$`)

// check parses and checks the paths, durations, sizes, addresses and
// lists that Validate does not cover otherwise.
func (cfg *Config) check() []error {
	c := &configChecker{}
	c.absPath("socket", cfg.Socket, false)
	c.absPath("stateDir", cfg.StateDir, false)
	c.absPath("logDir", cfg.LogDir, false)
	c.absPath("logs.driver", cfg.Logs.Driver, true)
	cfg.Exec.check(c)
	if a := strings.TrimPrefix(cfg.Containerd.Address, "unix://"); a != "" {
		c.absPath("containerd.address", a, false)
	}
	for i, h := range cfg.Registries.PlainHTTP {
		if h == "" || strings.Contains(h, "/") {
			c.failf(fmt.Sprintf("registries.plainHTTP[%d]", i), "must be a host or host:port, got %q", h)
		}
	}
	n := cfg.Network
	c.absPath("network.netnsDir", n.NetNSDir, false)
	c.absPath("network.hostNetNS", n.HostNetNS, true)
	for i, s := range n.DNS {
		if _, err := netip.ParseAddr(s); err != nil {
			c.failf(fmt.Sprintf("network.dns[%d]", i), "must be an IP address, got %q", s)
		}
	}
	if n.Local.CIDR != "" && n.Provider != "local" { // local: Validate checks it as a pool
		if _, err := netip.ParsePrefix(n.Local.CIDR); err != nil {
			c.failf("network.local.cidr", "must be a CIDR like 198.19.255.0/24, got %q", n.Local.CIDR)
		}
	}
	c.url("network.ec2.endpoint", n.EC2.Endpoint)
	c.nonNegative("network.ec2.warmIPs", int64(n.EC2.WarmIPs))
	c.nonNegative("network.ec2.minWarmIPs", int64(n.EC2.MinWarmIPs))
	c.duration("network.ec2.poolReleaseAfter", n.EC2.PoolReleaseAfter, time.Millisecond, 24*time.Hour)
	c.duration("network.ec2.reuseCooldown", n.EC2.ReuseCooldown, time.Millisecond, 24*time.Hour)
	n.Firewall.check(c)
	m := cfg.Metadata
	c.url("metadata.upstream", m.Upstream)
	c.url("metadata.stsEndpoint", m.STSEndpoint)
	c.duration("metadata.credentialDuration", m.CredentialDuration, time.Second, MaxCredentialDuration)
	c.absPath("isolation.initPath", cfg.Isolation.InitPath, false)
	c.absPath("isolation.diskDir", cfg.Isolation.DiskDir, false)
	if s := cfg.Isolation.CPUSet; s != "" && !cpuSetRE.MatchString(s) {
		c.failf("isolation.cpuSet", "must be a CPU list like 2-3 or 0,4-7, got %q", s)
	}
	c.absPath("gpu.devRoot", cfg.GPU.DevRoot, false)
	c.absPath("gpu.nvidiaSMI", cfg.GPU.NvidiaSMI, true)
	for i, d := range cfg.GPU.CDISpecDirs {
		c.absPath(fmt.Sprintf("gpu.cdiSpecDirs[%d]", i), d, false)
	}
	for i, g := range cfg.GPU.DriverFiles {
		c.absPath(fmt.Sprintf("gpu.driverFiles[%d]", i), g, false)
	}
	c.hostPort("metricsListen", cfg.MetricsListen)
	c.loopbackHostPort("debugListen", cfg.DebugListen)
	c.hostPorts("scheduler.address", cfg.Scheduler.Address)
	c.nonNegative("scheduler.networkMbps", cfg.Scheduler.NetworkMbps)
	return c.errs
}
