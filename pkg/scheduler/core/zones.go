package core

import (
	"slices"
)

// subnetZones is what the fleet's agents have found out about the zones of
// the subnets tasks name. An agent looks a subnet up when a task names it
// and reports, with its ENI use, the subnets it found in its own zone and
// out of it. A task takes its IP in the first of its subnets in the host's
// zone; a host none of whose zone holds any of them must refuse it. A
// subnet's zone never changes, so one agent's finding holds for every host
// of its zone: once an agent of zone Z found subnet S outside Z, no host of
// Z is sent a task whose only subnets are like S.
//
// Only findings of absence are used across hosts, and only while no agent
// of the same zone says the subnet is in it: a broken or hostile agent can
// at most keep a subnet's tasks off the hosts of its own zone until an
// honest agent of that zone has seen the subnet, and it can never draw
// tasks to itself (a claim of presence is used for its own host alone).
type subnetZones struct {
	// out and in count, per subnet and zone, the agents of that zone
	// whose last report has the subnet out of it, and in it.
	out, in map[string]map[string]int
	// by is each agent's last counted report.
	by map[*agentState]zoneReport
}

type zoneReport struct {
	az      string
	in, out []string
}

// note counts a's report of zone findings in place of its previous one.
func (z *subnetZones) note(a *agentState, in, out []string) {
	if a.az == "" {
		return // an agent that knows no zone takes every subnet as its own
	}
	prev, ok := z.by[a]
	if ok && prev.az == a.az && slices.Equal(prev.in, in) && slices.Equal(prev.out, out) {
		return // the common case: a heartbeat with nothing new
	}
	if z.by == nil {
		z.by, z.out, z.in = map[*agentState]zoneReport{}, map[string]map[string]int{}, map[string]map[string]int{}
	}
	if ok {
		count(z.in, prev.in, prev.az, -1)
		count(z.out, prev.out, prev.az, -1)
	}
	r := zoneReport{az: a.az, in: slices.Clone(in), out: slices.Clone(out)}
	count(z.in, r.in, r.az, 1)
	count(z.out, r.out, r.az, 1)
	z.by[a] = r
}

func count(m map[string]map[string]int, subnets []string, az string, n int) {
	for _, s := range subnets {
		byZone := m[s]
		if byZone == nil {
			byZone = map[string]int{}
			m[s] = byZone
		}
		byZone[az] += n
		if byZone[az] <= 0 {
			delete(byZone, az)
			if len(byZone) == 0 {
				delete(m, s)
			}
		}
	}
}

// outOf reports whether an agent of zone az found subnet s outside it, and
// none found it inside.
func (z *subnetZones) outOf(s, az string) bool {
	return z.out[s][az] > 0 && z.in[s][az] == 0
}

// zoneFits reports whether a task asking for subnets (none: the agent's
// default, always in its zone) may take its IP on a: some subnet is not
// known to lie outside a's zone, by a's own report or by an agent of the
// same zone.
func (a *agentState) zoneFits(subnets []string, z *subnetZones) bool {
	if len(subnets) == 0 || a.az == "" {
		return true
	}
	for _, s := range subnets {
		in, seen := a.net.inZone[s]
		switch {
		case seen && in:
			return true
		case seen:
		case z == nil || !z.outOf(s, a.az):
			return true // cannot tell: the agent looks it up
		}
	}
	return false
}
