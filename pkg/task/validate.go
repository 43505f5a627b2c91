package task

import (
	"fmt"
	"net/mail"
	"regexp"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"github.com/distribution/reference"
)

// Limits bound every variable-size field so a hostile spec cannot exhaust
// the agent. They are documented in docs/task-spec.md (TestLimitsDocumented).
const (
	MaxIDLen          = 128
	MaxImageRefLen    = 512
	MaxArgs           = 256
	MaxArgLen         = 8192
	MaxCommandBytes   = 64 << 10
	MaxEnv            = 512
	MaxEnvKeyLen      = 256
	MaxEnvValueLen    = 32 << 10
	MaxEnvBytes       = 256 << 10
	MaxLabels         = 64
	MaxLabelKeyLen    = 128
	MaxLabelValueLen  = 1024
	MaxSecurityGroups = 5
	MaxSubnets        = 16
	MaxCPUMillicores  = 1024 * 1000
	MaxMemoryMiB      = 4 << 20
	MinMemoryMiB      = 6
	MaxDiskMiB        = 16 << 20
	MaxNetworkMbps    = 400_000
	MaxGPUs           = 64
	MaxPids           = 1 << 22
	MaxKillGrace      = time.Hour
	MaxRuntimeLimit   = 365 * 24 * time.Hour
	// Health checks: an interval below MinHealthInterval would let a
	// tenant make the agent spin; output is capped by MaxHealthOutput.
	MinHealthInterval     = time.Second
	MaxHealthInterval     = time.Hour
	MaxHealthStartPeriod  = time.Hour
	MaxHealthThreshold    = 100
	MaxHealthPathLen      = 1024
	MaxHealthCommandBytes = 8192
)

var (
	idRE     = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)
	envKeyRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	labelRE  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_./-]*$`)
	sgRE     = regexp.MustCompile(`^sg-[0-9a-f]{1,32}$`)
	subnetRE = regexp.MustCompile(`^subnet-[0-9a-f]{1,32}$`)
	roleRE   = regexp.MustCompile(`^arn:aws[a-z-]*:iam::[0-9]{12}:role/([\w+=,.@/-]+)$`) // name <= 512, see validRoleARN
)

// ErrInvalidSpec is wrapped by every validation error.
var ErrInvalidSpec = errdefs.ErrInvalidArgument.WithMessage("invalid task spec")

// FieldError names the field that broke a rule and the rule.
type FieldError struct {
	Field string
	Rule  string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Rule }

// ValidationError lists every broken rule of a spec.
type ValidationError struct{ Fields []*FieldError }

func (e *ValidationError) Error() string {
	parts := make([]string, len(e.Fields))
	for i, f := range e.Fields {
		parts[i] = f.Error()
	}
	return "invalid task spec: " + strings.Join(parts, "; ")
}

func (e *ValidationError) Unwrap() error { return ErrInvalidSpec }

type checker = Checker

// Validate checks every field of a normalized spec and returns a
// *ValidationError naming each field that breaks a rule, or nil.
func (s *Spec) Validate() error {
	c := &checker{}
	switch {
	case s.ID == "":
		c.failf("id", "is required")
	case len(s.ID) > MaxIDLen:
		c.failf("id", "must be at most %d characters", MaxIDLen)
	case !idRE.MatchString(s.ID):
		c.failf("id", "must match %s", idRE)
	}
	if s.OwnerEmail == "" {
		c.failf("owner_email", "is required")
	} else if a, err := mail.ParseAddress(s.OwnerEmail); err != nil || a.Address != s.OwnerEmail || len(s.OwnerEmail) > 254 {
		c.failf("owner_email", "must be a plain email address like team@example.com")
	}
	switch {
	case s.Image == "":
		c.failf("image", "is required")
	case len(s.Image) > MaxImageRefLen:
		c.failf("image", "must be at most %d characters", MaxImageRefLen)
	case strings.ContainsAny(s.Image, " \t\n\r"):
		c.failf("image", "must not contain whitespace")
	default:
		if _, err := reference.ParseNormalizedNamed(s.Image); err != nil {
			c.failf("image", "must be an image reference like registry.example.com/team/app:1.2 (%v)", err)
		}
	}
	s.checkArgs(c)
	s.checkEnv(c)
	s.checkLabels(c)
	r := s.Resources
	c.rangeCheck("resources.cpu_millicores", r.CPUMillicores, 1, MaxCPUMillicores)
	checkCPUBurst(c, r)
	c.rangeCheck("resources.memory_mib", r.MemoryMiB, MinMemoryMiB, MaxMemoryMiB)
	c.rangeCheck("resources.disk_mib", r.DiskMiB, 0, MaxDiskMiB)
	c.rangeCheck("resources.network_mbps", r.NetworkMbps, 0, MaxNetworkMbps)
	c.rangeCheck("resources.gpus", int64(r.GPUs), 0, MaxGPUs)
	c.rangeCheck("resources.pids", r.Pids, 1, MaxPids)
	if s.KillGracePeriod < 0 || s.KillGracePeriod > MaxKillGrace {
		c.failf("kill_grace_period_seconds", "must be between 0 and %d", int64(MaxKillGrace/time.Second))
	}
	if s.MaxRuntime < 0 || s.MaxRuntime > MaxRuntimeLimit {
		c.failf("max_runtime_seconds", "must be between 0 (none) and %d", int64(MaxRuntimeLimit/time.Second))
	}
	if s.IAMRoleARN != "" && !validRoleARN(s.IAMRoleARN) {
		c.failf("iam_role_arn", "must look like arn:aws:iam::123456789012:role/name")
	}
	s.checkNetwork(c)
	s.checkHealth(c)
	s.checkSecrets(c)
	if len(c.errs) == 0 {
		return nil
	}
	return &ValidationError{Fields: c.errs}
}

func (s *Spec) checkArgs(c *checker) {
	total := 0
	for _, f := range []struct {
		name string
		args []string
	}{{"entrypoint", s.Entrypoint}, {"command", s.Command}} {
		name, args := f.name, f.args
		if len(args) > MaxArgs {
			c.failf(name, "must have at most %d arguments", MaxArgs)
		}
		for i, a := range args {
			total += len(a)
			if len(a) > MaxArgLen {
				c.failf(fmt.Sprintf("%s[%d]", name, i), "must be at most %d bytes", MaxArgLen)
			}
			if strings.IndexByte(a, 0) >= 0 {
				c.failf(fmt.Sprintf("%s[%d]", name, i), "must not contain NUL")
			}
		}
	}
	if total > MaxCommandBytes {
		c.failf("command", "entrypoint and command together must be at most %d bytes", MaxCommandBytes)
	}
}

func (s *Spec) checkEnv(c *checker) {
	if len(s.Env) > MaxEnv {
		c.failf("env", "must have at most %d entries, got %d", MaxEnv, len(s.Env))
		return
	}
	total := 0
	for k, v := range s.Env {
		total += len(k) + len(v)
		if len(k) > MaxEnvKeyLen || !envKeyRE.MatchString(k) {
			c.failf("env["+trunc(k)+"]", "name must match %s and be at most %d characters", envKeyRE, MaxEnvKeyLen)
		}
		if len(v) > MaxEnvValueLen || strings.IndexByte(v, 0) >= 0 {
			c.failf("env["+trunc(k)+"]", "value must be at most %d bytes without NUL", MaxEnvValueLen)
		}
	}
	if total > MaxEnvBytes {
		c.failf("env", "must be at most %d bytes in total", MaxEnvBytes)
	}
}

func (s *Spec) checkLabels(c *checker) {
	if len(s.Labels) > MaxLabels {
		c.failf("labels", "must have at most %d entries, got %d", MaxLabels, len(s.Labels))
		return
	}
	for k, v := range s.Labels {
		if len(k) > MaxLabelKeyLen || !labelRE.MatchString(k) {
			c.failf("labels["+trunc(k)+"]", "key must match %s and be at most %d characters", labelRE, MaxLabelKeyLen)
		}
		if strings.HasPrefix(k, "titus.agent/") {
			c.failf("labels["+trunc(k)+"]", "the titus.agent/ prefix is reserved")
		}
		if len(v) > MaxLabelValueLen {
			c.failf("labels["+trunc(k)+"]", "value must be at most %d characters", MaxLabelValueLen)
		}
	}
	if _, fe := LogShippingOf(s.Labels); fe != nil {
		c.errs = append(c.errs, fe)
	}
}

func (s *Spec) checkNetwork(c *checker) {
	n := s.Network
	if len(n.SecurityGroupIDs) > MaxSecurityGroups {
		c.failf("network.security_group_ids", "must have at most %d entries", MaxSecurityGroups)
	}
	seen := map[string]bool{}
	for i, sg := range n.SecurityGroupIDs {
		if !sgRE.MatchString(sg) {
			c.failf(fmt.Sprintf("network.security_group_ids[%d]", i), "must look like sg-0123abcd")
		}
		if seen[sg] {
			c.failf(fmt.Sprintf("network.security_group_ids[%d]", i), "duplicate %s", sg)
		}
		seen[sg] = true
	}
	if len(n.SubnetIDs) > MaxSubnets {
		c.failf("network.subnet_ids", "must have at most %d entries", MaxSubnets)
	}
	for i, sn := range n.SubnetIDs {
		if !subnetRE.MatchString(sn) {
			c.failf(fmt.Sprintf("network.subnet_ids[%d]", i), "must look like subnet-0123abcd")
		}
	}
}

func trunc(s string) string {
	if len(s) > 32 {
		return s[:32] + "…"
	}
	return s
}

func (s *Spec) checkHealth(c *checker) {
	h := s.HealthCheck
	if h == nil {
		return
	}
	const f = "health_check."
	switch h.Kind {
	case HealthExec:
		if len(h.Command) == 0 {
			c.failf(f+"command", "is required for an exec check")
		}
		total := 0
		for i, a := range h.Command {
			total += len(a)
			if strings.IndexByte(a, 0) >= 0 {
				c.failf(fmt.Sprintf("%scommand[%d]", f, i), "must not contain NUL")
			}
		}
		if len(h.Command) > MaxArgs || total > MaxHealthCommandBytes {
			c.failf(f+"command", "must have at most %d arguments and %d bytes", MaxArgs, MaxHealthCommandBytes)
		}
		if h.Port != 0 || h.Path != "" || h.ExpectedStatus != 0 {
			c.failf(f+"kind", "an exec check takes no port, path or expected_status")
		}
	case HealthHTTP, HealthTCP:
		if h.Port < 1 || h.Port > 65535 {
			c.failf(f+"port", "must be between 1 and 65535, got %d", h.Port)
		}
		if len(h.Command) > 0 {
			c.failf(f+"command", "only an exec check takes a command")
		}
		if h.Kind == HealthTCP && (h.Path != "" || h.ExpectedStatus != 0) {
			c.failf(f+"kind", "a tcp check takes no path or expected_status")
		}
		if h.Kind == HealthHTTP {
			switch {
			case len(h.Path) > MaxHealthPathLen:
				c.failf(f+"path", "must be at most %d characters", MaxHealthPathLen)
			case !strings.HasPrefix(h.Path, "/") || strings.HasPrefix(h.Path, "//") || strings.ContainsFunc(h.Path, func(r rune) bool { return r <= ' ' || r == 0x7f }):
				c.failf(f+"path", "must be an absolute path like /healthz, without spaces or control characters")
			}
			if h.ExpectedStatus != 0 && (h.ExpectedStatus < 100 || h.ExpectedStatus > 599) {
				c.failf(f+"expected_status", "must be 0 (any of 200-399) or between 100 and 599, got %d", h.ExpectedStatus)
			}
		}
	case "":
		c.failf(f+"kind", "is required: one of exec, http, tcp")
	default:
		c.failf(f+"kind", "must be one of exec, http, tcp, got %.32q", string(h.Kind))
	}
	if h.Interval < MinHealthInterval || h.Interval > MaxHealthInterval {
		c.failf(f+"interval", "must be between %s and %s, got %s", MinHealthInterval, MaxHealthInterval, h.Interval)
	}
	switch {
	case h.Timeout <= 0:
		c.failf(f+"timeout", "must be positive, got %s", h.Timeout)
	case h.Timeout > h.Interval:
		c.failf(f+"timeout", "must be at most the interval (%s), got %s", h.Interval, h.Timeout)
	}
	if h.StartPeriod < 0 || h.StartPeriod > MaxHealthStartPeriod {
		c.failf(f+"start_period", "must be between 0 and %s, got %s", MaxHealthStartPeriod, h.StartPeriod)
	}
	c.rangeCheck(f+"healthy_threshold", int64(h.HealthyThreshold), 1, MaxHealthThreshold)
	c.rangeCheck(f+"unhealthy_threshold", int64(h.UnhealthyThreshold), 1, MaxHealthThreshold)
}

// validRoleARN checks an IAM role ARN; the name's bound is checked apart
// from roleRE because {1,512} in a regexp compiles to 512 copies.
func validRoleARN(arn string) bool {
	m := roleRE.FindStringSubmatch(arn)
	return m != nil && len(m[1]) <= 512
}

// checkCPUBurst: a burst allowance is unused quota spent later, so it
// needs a quota (not cpu_burst, which has none) and, as the kernel
// requires (cpu.max.burst <= quota), is at most cpu_millicores: a task
// cannot give itself more than its quota allows.
func checkCPUBurst(c *checker, r Resources) {
	b := r.CPUBurstMillicores
	switch {
	case b == 0:
	case r.CPUBurst:
		c.failf("resources.cpu_burst_millicores", "must be 0 with cpu_burst (no CFS quota to burst above), got %d", b)
	case b < 0 || b > r.CPUMillicores:
		c.failf("resources.cpu_burst_millicores", "must be between 0 and cpu_millicores (%d), got %d", r.CPUMillicores, b)
	}
}
