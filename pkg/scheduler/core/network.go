package core

import (
	"time"

	"github.com/titus-agent/titus-agent/pkg/scheduler/constraint"
	"github.com/titus-agent/titus-agent/pkg/scheduler/model"
)

// agentNet is what the scheduler knows of a host's task ENIs besides its
// own live tasks. The agent reports, with every heartbeat, the IPs each
// security-group set has in use or cooling down (a released IP is kept
// from the next task for a cool-down, and a task's IP is released only
// after its final state is reported, when its network is torn down) and
// the ENIs each set holds. The report lags: tasks placed since it was
// made are not in it. So a set's taken IPs are the larger of the
// scheduler's count (its live tasks, plus released IPs still cooling by
// its own clock) and the report's plus the live tasks the report did not
// know (the heartbeat lists every task the agent knew when it made it).
// That keeps placement from sending a task the agent would refuse for
// lack of an IP or an ENI.
type agentNet struct {
	cooldown time.Duration
	// cooling holds, per SG set, when each released IP is free again by
	// the scheduler's clock (ascending); for agents that send no report.
	cooling map[string][]time.Time
	// report is the agent's last report (nil: it sends none); taken and
	// enis are its IPs in use or cooling and ENIs in use per SG set ("" is
	// the agent's default set); unreported counts live tasks per SG set
	// the report did not know.
	report     *model.NetworkUsage
	taken      map[string]int
	enis       map[string]int
	unreported map[string]int
}

// setReport takes the agent's ENI use, made knowing the tasks listed.
func (a *agentState) setReport(u *model.NetworkUsage, listed []model.TaskStatus) {
	if u == nil {
		return
	}
	n := &a.net
	n.report = u
	n.taken = make(map[string]int, len(u.SGSets)+1)
	n.enis = make(map[string]int, len(u.SGSets)+1)
	for _, s := range u.SGSets {
		keys := []string{s.SecurityGroups}
		if s.Default {
			keys = append(keys, "")
		}
		for _, k := range keys {
			n.taken[k] += s.UsedIPs + s.CoolingIPs
			n.enis[k] += s.ENIs
		}
	}
	known := make(map[string]bool, len(listed))
	for _, st := range listed {
		known[st.TaskID] = true
	}
	n.unreported = map[string]int{}
	for id, t := range a.tasks {
		t.inReport = known[id]
		if !t.inReport {
			n.unreported[t.d.sgKey]++
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

// takenIPs is how many of sg's IPs are in use or cooling down at now.
func (a *agentState) takenIPs(sg string, now time.Time) int {
	n := a.sgSets[sg] + a.coolingIPs(sg, now)
	if a.net.report != nil {
		n = max(n, a.net.taken[sg]+a.net.unreported[sg])
	}
	return n
}

// held is how many ENIs sg holds with n IPs taken: at least what n needs,
// and at least what the agent reported (its IPs may be spread over more
// ENIs than n needs).
func (a *agentState) held(sg string, n int) int {
	h := (n + a.ipsPerENI - 1) / a.ipsPerENI
	return max(h, a.net.enis[sg])
}

// heldENIs is how many of the host's task ENIs every SG set holds.
func (a *agentState) heldENIs(now time.Time) int {
	if a.ipsPerENI <= 0 {
		return 0
	}
	total := 0
	seen := func(sg string) bool {
		_, live := a.sgSets[sg]
		_, cool := a.net.cooling[sg]
		return live || cool
	}
	for sg := range a.sgSets {
		total += a.held(sg, a.takenIPs(sg, now))
	}
	for sg := range a.net.cooling {
		if _, live := a.sgSets[sg]; !live {
			total += a.held(sg, a.takenIPs(sg, now))
		}
	}
	// Sets only the report knows (tasks the scheduler did not place, or
	// IPs cooling down); "" doubles the agent's default set, counted under
	// its own name.
	for sg := range a.net.taken {
		if sg != "" && !seen(sg) {
			total += a.held(sg, a.takenIPs(sg, now))
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
	n := a.takenIPs(sg, now)
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
