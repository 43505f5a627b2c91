package core

import (
	"time"

	"github.com/titus-agent/titus-agent/pkg/scheduler/constraint"
	"github.com/titus-agent/titus-agent/pkg/scheduler/model"
)

// agentNet is what the scheduler knows of a host's task ENIs besides its
// own placements: IPs cooling down after a task ended (the agent keeps a
// released IP from the next task for cooldown) and the ENIs each SG set
// holds as the agent last reported them. Together they keep placement from
// sending a task the agent would refuse for lack of an IP or an ENI.
type agentNet struct {
	cooldown time.Duration
	// cooling holds, per SG set, when each released IP is free again (ascending).
	cooling map[string][]time.Time
	// reported is the ENIs each SG set holds per the agent's last report;
	// "" is the agent's default set.
	reported map[string]int
	report   *model.NetworkUsage
}

// setReport takes the agent's latest ENI use.
func (n *agentNet) setReport(u *model.NetworkUsage) {
	if u == nil {
		return
	}
	n.report = u
	n.reported = make(map[string]int, len(u.SGSets)+1)
	for _, s := range u.SGSets {
		n.reported[s.SecurityGroups] += s.ENIs
		if s.Default {
			n.reported[""] += s.ENIs
		}
	}
}

// released starts a task IP's cool-down.
func (a *agentState) released(sg string, now time.Time) {
	if a.net.cooldown <= 0 || a.ipsPerENI <= 0 {
		return
	}
	if a.net.cooling == nil {
		a.net.cooling = map[string][]time.Time{}
	}
	a.net.cooling[sg] = append(a.net.cooling[sg], now.Add(a.net.cooldown))
}

// coolingIPs counts sg's IPs still cooling at now, forgetting the others.
func (a *agentState) coolingIPs(sg string, now time.Time) int {
	l := a.net.cooling[sg]
	i := 0
	for i < len(l) && !l[i].After(now) {
		i++
	}
	if i == len(l) {
		if l != nil {
			delete(a.net.cooling, sg)
		}
		return 0
	}
	if i > 0 {
		a.net.cooling[sg] = l[i:]
	}
	return len(l) - i
}

// held is how many ENIs sg holds with n IPs taken (in use or cooling): at
// least what n needs, and at least what the agent reported (its IPs may be
// spread over more ENIs than n needs).
func (a *agentState) held(sg string, n int) int {
	h := (n + a.ipsPerENI - 1) / a.ipsPerENI
	return max(h, a.net.reported[sg])
}

// heldENIs is how many of the host's task ENIs every SG set holds.
func (a *agentState) heldENIs(now time.Time) int {
	if a.ipsPerENI <= 0 {
		return 0
	}
	total := 0
	for sg, n := range a.sgSets {
		total += a.held(sg, n+a.coolingIPs(sg, now))
	}
	for sg := range a.net.cooling {
		if _, ok := a.sgSets[sg]; !ok {
			total += a.held(sg, a.coolingIPs(sg, now))
		}
	}
	for sg, r := range a.net.reported {
		_, live := a.sgSets[sg]
		_, cool := a.net.cooling[sg]
		if !live && !cool && sg != "" {
			total += r
		}
	}
	return total
}

// ipFits reports whether a task of SG set sg can get an IP now: one of
// the set's ENIs has an address neither in use nor cooling down, or a new
// ENI can still be attached for it. Agents that report no ENI limits are
// not limited.
func (a *agentState) ipFits(sg string, now time.Time) bool {
	if a.enis <= 0 || a.ipsPerENI <= 0 {
		return true
	}
	n := a.sgSets[sg] + a.coolingIPs(sg, now)
	if n < a.held(sg, n)*a.ipsPerENI {
		return true
	}
	return a.heldENIs(now) < a.enis
}

// setAttributes records what the host is and builds the attribute map
// constraints read.
func (a *agentState) setAttributes(attrs model.HostAttributes) {
	a.attributes = attrs
	h := constraint.HostInfo{InstanceType: a.instanceType, Zone: a.az, AMI: attrs.AMIID, AgentVersion: attrs.AgentVersion,
		Kernel: attrs.Kernel, Cgroup: attrs.CgroupMode, GPUs: len(attrs.GPUs), Labels: a.labels}
	if len(attrs.GPUs) > 0 {
		h.GPUModel, h.GPUMemoryMiB = attrs.GPUs[0].Model, attrs.GPUs[0].MemoryMiB
	}
	if a.capacity.GPUs > int64(h.GPUs) {
		h.GPUs = int(a.capacity.GPUs)
	}
	a.attrs = constraint.HostAttributes(h)
}
