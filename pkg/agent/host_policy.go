package agent

import (
	"fmt"
	"maps"

	"github.com/titus-agent/titus-agent/pkg/isolation"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// LimitConfig is the host's default and ceiling for one resource a task
// asks for: isolation is the host's floor, not something a task opts into.
type LimitConfig struct {
	// Default is what a task asking 0 gets; 0 leaves 0 (no quota, no
	// shaping).
	Default int64 `json:"default"`
	// Max refuses, at launch, a task asking more; 0 = no host ceiling.
	Max int64 `json:"max"`
}

// User namespace policies (isolation.requireUserNamespace).
const (
	UserNSOptional = ""
	UserNSRefuse   = "refuse"
	UserNSForce    = "force"
)

func (c IsolationConfig) checkPolicy() []error {
	var errs []error
	for _, l := range []struct {
		key string
		l   LimitConfig
	}{{"isolation.diskMiB", c.DiskMiB}, {"isolation.networkMbps", c.NetworkMbps}} {
		if l.l.Default < 0 || l.l.Max < 0 {
			errs = append(errs, fmt.Errorf("%s: default and max must not be negative", l.key))
		}
		if l.l.Max > 0 && l.l.Default > l.l.Max {
			errs = append(errs, fmt.Errorf("%s: default %d is above max %d", l.key, l.l.Default, l.l.Max))
		}
	}
	switch c.RequireUserNamespace {
	case UserNSOptional:
	case UserNSRefuse, UserNSForce:
		if c.UserNamespaces.HostIDBase == 0 {
			errs = append(errs, fmt.Errorf("isolation.requireUserNamespace: %q needs isolation.userNamespaces.hostIDBase", c.RequireUserNamespace))
		}
		if c.DiskMiB.Default <= 0 {
			errs = append(errs, fmt.Errorf("isolation.requireUserNamespace: %q needs isolation.diskMiB.default (a user namespace needs a disk)", c.RequireUserNamespace))
		}
	default:
		errs = append(errs, fmt.Errorf("isolation.requireUserNamespace: must be \"\", refuse or force, got %q", c.RequireUserNamespace))
	}
	return errs
}

// hostPolicy is the launch-time check of a validated spec against the
// host's isolation policy: a task asking 0 disk or bandwidth gets the
// host's default, one asking more than the ceiling is refused with the
// field named, and the user namespace policy is applied (forced tasks get
// the label, so their record says so). The spec it is given is the copy
// that will be recorded.
func hostPolicy(c IsolationConfig) func(s *task.Spec, ck *task.Checker) {
	return func(s *task.Spec, ck *task.Checker) {
		r := &s.Resources
		if r.DiskMiB == 0 {
			r.DiskMiB = c.DiskMiB.Default
		}
		if c.DiskMiB.Max > 0 && r.DiskMiB > c.DiskMiB.Max {
			ck.Failf("resources.disk_mib", "must be at most %d on this host, got %d", c.DiskMiB.Max, r.DiskMiB)
		}
		if r.NetworkMbps == 0 {
			r.NetworkMbps = c.NetworkMbps.Default
		}
		if c.NetworkMbps.Max > 0 && r.NetworkMbps > c.NetworkMbps.Max {
			ck.Failf("resources.network_mbps", "must be at most %d on this host, got %d", c.NetworkMbps.Max, r.NetworkMbps)
		}
		if c.RequireCPUQuota && r.CPUBurst {
			ck.Failf("resources.cpu_burst", "this host holds every task to a CFS quota (isolation.requireCPUQuota): ask for cpu_burst_millicores, a burst allowance within the quota, instead")
		}
		field := "labels[" + isolation.LabelUserNS + "]"
		userNS := s.Labels[isolation.LabelUserNS] == "true"
		switch c.RequireUserNamespace {
		case UserNSForce:
			if !userNS {
				s.Labels = maps.Clone(s.Labels) // the caller's map is not ours
				if s.Labels == nil {
					s.Labels = map[string]string{}
				}
				s.Labels[isolation.LabelUserNS] = "true"
				userNS = true
			}
		case UserNSRefuse:
			if !userNS {
				ck.Failf(field, "this host runs tasks only in their own user namespace: set it to \"true\"")
			}
		}
		if userNS && r.DiskMiB <= 0 {
			ck.Failf("resources.disk_mib", "a user namespace needs a disk quota")
		}
	}
}
