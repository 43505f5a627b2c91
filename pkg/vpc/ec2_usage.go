package vpc

import (
	"sort"
	"time"
)

// Usage is what the ec2 provider offers the scheduler: its ENI and IP
// limits and the live use of each security-group set, so placement never
// sends a task the host would refuse for lack of an IP or an ENI.
type Usage struct {
	// ENIs usable by tasks (the primary and foreign ENIs excluded) and
	// secondary IPs per ENI (its primary address excluded).
	ENIs, IPsPerENI int
	// ReuseCooldown keeps a released IP from the next task.
	ReuseCooldown time.Duration
	SGSets        []SGSetUsage
	// AttachableENIs is how many ENIs a new SG set can still get: free
	// slots plus idle ENIs (no IP in use) of other sets.
	AttachableENIs int
	// DefaultGroups (sorted, comma-joined) and DefaultSubnetID are what a
	// task naming none gets.
	DefaultGroups, DefaultSubnetID string
	// ZoneSubnets and OtherZoneSubnets are the subnets tasks named that
	// the provider looked up, in the host's zone and out of it (sorted): a
	// task takes its IP in the first of its subnets in the zone.
	ZoneSubnets, OtherZoneSubnets []string
}

// SGSetUsage is one pool key's ENIs and addresses.
type SGSetUsage struct {
	SecurityGroups string // sorted, comma-joined
	SubnetID       string
	Default        bool // the set tasks naming no security group use
	// ENIs with an address in use; addresses in use, ready (assigned and
	// cooled down, or room to assign on those ENIs) and cooling down.
	ENIs, UsedIPs, FreeIPs, CoolingIPs int
}

// Host is the instance the provider runs on.
func (p *EC2Provider) Host() HostInfo { return p.cfg.Host }

// Usage reports the provider's limits and live use without calling EC2.
func (p *EC2Provider) Usage() Usage {
	p.mu.Lock()
	defer p.mu.Unlock()
	u := p.pool.usage(p.now())
	u.DefaultGroups, u.DefaultSubnetID = p.pool.defaultKey.Groups, p.pool.defaultKey.SubnetID
	for id, in := range p.subnetZone {
		if in {
			u.ZoneSubnets = append(u.ZoneSubnets, id)
		} else {
			u.OtherZoneSubnets = append(u.OtherZoneSubnets, id)
		}
	}
	sort.Strings(u.ZoneSubnets)
	sort.Strings(u.OtherZoneSubnets)
	return u
}

func (p *pool) usage(now time.Time) Usage {
	u := Usage{ENIs: p.maxTaskENIs(), IPsPerENI: p.perENI(), ReuseCooldown: p.cfg.ReuseCooldown}
	sets := map[PoolKey]*SGSetUsage{}
	held := 0
	for _, e := range p.enis {
		s := sets[e.Key]
		if s == nil {
			s = &SGSetUsage{SecurityGroups: e.Key.Groups, SubnetID: e.Key.SubnetID, Default: e.Key == p.defaultKey}
			sets[e.Key] = s
		}
		used := e.used()
		s.UsedIPs += used
		s.CoolingIPs += e.cooling(now)
		s.FreeIPs += e.free(now)
		if used > 0 {
			s.ENIs++
			held++
			s.FreeIPs += max(u.IPsPerENI-len(e.IPs), 0)
		}
	}
	u.AttachableENIs = max(u.ENIs-held, 0)
	for _, s := range sets {
		u.SGSets = append(u.SGSets, *s)
	}
	sort.Slice(u.SGSets, func(i, j int) bool {
		a, b := u.SGSets[i], u.SGSets[j]
		if a.SecurityGroups != b.SecurityGroups {
			return a.SecurityGroups < b.SecurityGroups
		}
		return a.SubnetID < b.SubnetID
	})
	return u
}
