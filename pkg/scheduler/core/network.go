package core

import (
	"time"

	"github.com/titus-agent/titus-agent/pkg/scheduler/constraint"
	"github.com/titus-agent/titus-agent/pkg/scheduler/model"
)

// agentNet is what the scheduler knows of a host's task ENIs besides its
// own live tasks. The agent gives tasks of one security-group set and
// subnet (a pool) the same ENIs; a task's subnet is the first of those it
// names that lies in the host's zone, or the agent's default. The agent
// reports, with every heartbeat, the IPs each pool has in use or cooling
// down (a released IP is kept from the next task for a cool-down, and a
// task's IP is released only after its final state is reported, when its
// network is torn down), the ENIs each holds, and which subnets it has
// seen in its zone or out of it. The report lags: tasks placed since it
// was made are not in it, nor are listed tasks whose network is not set
// up yet (no IP in their status), so both count as unreported. So a pool's taken IPs are the larger of the
// scheduler's count (its live tasks, plus released IPs still cooling by
// its own clock) and the report's plus the live tasks the report did not
// know (the heartbeat lists every task the agent knew when it made it),
// including those that ended since: such a task may have taken an IP
// after the report, and the agent keeps it in use until the task's
// network is torn down and cooling from there, past the scheduler's own
// cool-down. A report counts such an ended task only if it lists it with
// its IP or ended: a heartbeat made before the task took its IP can
// arrive after the task's final state (the agent sends both on one
// stream, not in the order it made them), so one that does not list it
// is not trusted for it, up to endedReports reports.
// A task whose pool the scheduler cannot tell yet (a subnet the agent
// has not looked up) is counted in a pool of its own and placed only
// where a new ENI can still be had. That keeps placement from sending a
// task the agent would refuse for lack of an IP or an ENI.
type agentNet struct {
	cooldown time.Duration
	// cooling holds, per sgKey, when each released IP is free again by
	// the scheduler's clock (ascending); for agents that send no report.
	cooling map[string][]time.Time
	// report is the agent's last report (nil: it sends none); taken and
	// enis are its IPs in use or cooling and ENIs in use per pool
	// (poolName); unreported counts tasks per sgKey placed on the host
	// that the report did not know, live or ended since it (an ended one
	// may hold an IP the next report will show, in use or cooling).
	report     *model.NetworkUsage
	taken      map[string]int
	enis       map[string]int
	unreported map[string]int
	// ended holds, by task id, the tasks that ended while the last report
	// did not know them: each stays in unreported until a report lists it
	// with its IP or ended, or endedReports reports have come without it.
	ended map[string]endedTask
	// inZone says, of the subnets the agent has seen, which lie in its
	// zone; defGroups and defSubnet are what a task naming none gets.
	inZone               map[string]bool
	defGroups, defSubnet string
	// pools caches poolOf's answers for this report.
	pools map[string]pool
	// refused holds the sgKeys the agent refused a task of for lack of an
	// IP or an ENI since its last heartbeat: no task of those is placed
	// there until the next one tells what it has.
	refused map[string]bool
}

// endedTask is a task that ended unreported: its sgKey, and how many more
// reports may come that do not list it.
type endedTask struct {
	key  string
	left int
}

// endedReports bounds how many reports an ended task no report listed
// stays counted for (an agent lists a task's final state in its first
// heartbeat made after it, so one that never does never had the task).
const endedReports = 3

// endedUnreported notes that t ended while the last report did not know
// it: it may have taken an IP since.
func (a *agentState) endedUnreported(t *taskState) {
	if a.net.report == nil || t.inReport {
		return
	}
	if a.net.ended == nil {
		a.net.ended = map[string]endedTask{}
	}
	a.net.ended[t.rec.ID] = endedTask{key: t.d.sgKey, left: endedReports}
}

// pool is where a task of one sgKey takes its IP on a host: name, and
// known false when the scheduler cannot tell (its own stand-in pool).
type pool struct {
	name  string
	known bool
}

func poolName(groups, subnet string) string { return groups + "/" + subnet }

// setReport takes the agent's ENI use, made knowing the tasks listed
// (every task the agent knew).
func (a *agentState) setReport(u *model.NetworkUsage, listed []model.TaskStatus) {
	a.setReportOf(u, listed, false)
}

// setReportOf takes the agent's ENI use, made knowing the tasks listed:
// every task the agent knew, or, with changesOnly, those whose status
// changed since its previous heartbeat (what it said of the others
// holds: a task it listed with an IP still has it in this report).
func (a *agentState) setReportOf(u *model.NetworkUsage, listed []model.TaskStatus, changesOnly bool) {
	if u == nil {
		return
	}
	n := &a.net
	n.report = u
	n.taken = make(map[string]int, len(u.SGSets))
	n.enis = make(map[string]int, len(u.SGSets))
	n.inZone = make(map[string]bool, len(u.ZoneSubnets)+len(u.OtherZoneSubnets)+len(u.SGSets))
	n.pools = map[string]pool{}
	n.defGroups, n.defSubnet = u.DefaultSecurityGroups, u.DefaultSubnetID
	for _, sn := range u.OtherZoneSubnets {
		n.inZone[sn] = false
	}
	for _, sn := range u.ZoneSubnets {
		n.inZone[sn] = true
	}
	for _, s := range u.SGSets {
		k := poolName(s.SecurityGroups, s.SubnetID)
		n.taken[k] += s.UsedIPs + s.CoolingIPs
		n.enis[k] += s.ENIs
		if s.SubnetID != "" {
			n.inZone[s.SubnetID] = true // the agent made the pool for a subnet of its zone
		}
		if s.Default && n.defGroups == "" && n.defSubnet == "" {
			n.defGroups, n.defSubnet = s.SecurityGroups, s.SubnetID
		}
	}
	// A listed task holds one of the report's IPs only once it has one:
	// the agent lists a task it accepted before its network is set up,
	// and that task's IP is in none of the report's counts.
	known := make(map[string]bool, len(listed))
	for _, st := range listed {
		known[st.TaskID] = st.IP != "" || st.State.Terminal()
	}
	n.unreported = map[string]int{}
	for id, t := range a.tasks {
		if k, ok := known[id]; ok || !changesOnly {
			t.inReport = k
		}
		if !t.inReport {
			n.unreported[t.d.sgKey]++
		}
	}
	for id, e := range n.ended {
		if known[id] {
			delete(n.ended, id) // the report counts its IP if the agent holds it
			continue
		}
		if e.left--; e.left <= 0 {
			delete(n.ended, id)
			continue
		}
		n.ended[id] = e
		n.unreported[e.key]++
	}
}

// poolOf is the pool a task of sgKey key takes its IP from on this host.
// Without a report each key is its own pool (as the agent's are unknown).
func (a *agentState) poolOf(key string) pool {
	n := &a.net
	if n.report == nil {
		return pool{key, true}
	}
	if p, ok := n.pools[key]; ok {
		return p
	}
	p := pool{name: "?" + key} // a stand-in of its own: never shared
	groups, subnets := splitSGKey(key)
	if groups == "" {
		groups = n.defGroups
	}
	if _, ok := n.taken[poolName(groups, "")]; ok {
		p = pool{poolName(groups, ""), true} // a report naming no subnets
	} else if len(subnets) == 0 {
		if n.defSubnet != "" {
			p = pool{poolName(groups, n.defSubnet), true}
		}
	} else {
		for _, sn := range subnets {
			in, seen := n.inZone[sn]
			if !seen {
				break // the agent might take this one: cannot tell
			}
			if in {
				p = pool{poolName(groups, sn), true}
				break
			}
		}
	}
	if groups == "" {
		p = pool{name: "?" + key}
	}
	n.pools[key] = p
	return p
}

// keys are the sgKeys with live tasks or cooling IPs on the host.
func (a *agentState) eachKey(fn func(key string)) {
	for k := range a.sgSets {
		fn(k)
	}
	for k := range a.net.cooling {
		if _, live := a.sgSets[k]; !live {
			fn(k)
		}
	}
}

// refusedIP notes that the agent refused a task of sgKey sg for lack of
// an IP or an ENI: the host takes no more of them until its next heartbeat.
func (a *agentState) refusedIP(sg string) {
	if a.net.refused == nil {
		a.net.refused = map[string]bool{}
	}
	a.net.refused[sg] = true
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

// poolTaken is how many of pool p's IPs are in use or cooling down at now.
func (a *agentState) poolTaken(p string, now time.Time) int {
	if a.net.report == nil {
		return a.sgSets[p] + a.coolingIPs(p, now)
	}
	own, unreported := 0, 0
	a.eachKey(func(k string) {
		if a.poolOf(k).name == p {
			own += a.sgSets[k] + a.coolingIPs(k, now)
			unreported += a.net.unreported[k]
		}
	})
	return max(own, a.net.taken[p]+unreported)
}

// held is how many ENIs pool p holds with n IPs taken: at least what n
// needs, and at least what the agent reported (its IPs may be spread over
// more ENIs than n needs).
func (a *agentState) held(p string, n int) int {
	h := (n + a.ipsPerENI - 1) / a.ipsPerENI
	return max(h, a.net.enis[p])
}

// heldENIs is how many of the host's task ENIs every pool holds.
func (a *agentState) heldENIs(now time.Time) int {
	if a.ipsPerENI <= 0 {
		return 0
	}
	own, unreported := map[string]int{}, map[string]int{}
	a.eachKey(func(k string) {
		p := a.poolOf(k).name
		own[p] += a.sgSets[k] + a.coolingIPs(k, now)
		unreported[p] += a.net.unreported[k]
	})
	total := 0
	for p, n := range own {
		total += a.held(p, max(n, a.net.taken[p]+unreported[p]))
	}
	// Pools only the report knows (tasks the scheduler did not place, or
	// IPs cooling down).
	for p, n := range a.net.taken {
		if _, ok := own[p]; !ok {
			total += a.held(p, n)
		}
	}
	return total
}

// ipFits reports whether a task of sgKey sg can get an IP now: its pool's
// ENIs have an address neither in use nor cooling down, or a new ENI can
// still be attached for it. Agents that report no ENI limits are not
// limited.
func (a *agentState) ipFits(sg string, now time.Time) bool {
	if a.net.refused[sg] {
		return false
	}
	if a.enis <= 0 || a.ipsPerENI <= 0 {
		return true
	}
	if p := a.poolOf(sg); p.known {
		// The pool's ENIs, as many as its taken IPs need but never more
		// than the host has slots for beside the other pools' ENIs: the
		// count may be over the truth (a task both in the report and not
		// yet known there), and one past the pool's last address rounded
		// up to another ENI the host cannot attach.
		n := a.poolTaken(p.name, now)
		if mine := a.held(p.name, n); n < mine*a.ipsPerENI {
			if mine <= a.net.enis[p.name] {
				return true // ENIs the agent reports it has
			}
			others := max(0, a.heldENIs(now)-mine)
			if n < min(mine, a.enis-others)*a.ipsPerENI {
				return true
			}
		}
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
