package vpc

import (
	"context"
	"time"
)

// PoolStatus is the operator's view of the ec2 provider: every task ENI
// with its addresses, and every pool with its target.
type PoolStatus struct {
	Host   HostInfo        `json:"host"`
	Limits Limits          `json:"limits"`
	ENIs   []ENIStatus     `json:"enis"`
	Pools  []PoolKeyStatus `json:"pools"`
}

// ENIStatus is one task ENI.
type ENIStatus struct {
	ID             string     `json:"id"`
	MAC            string     `json:"mac"`
	DeviceIndex    int        `json:"deviceIndex"`
	SubnetID       string     `json:"subnetId"`
	SecurityGroups []string   `json:"securityGroups"`
	PrimaryIP      string     `json:"primaryIp"`
	IPs            []IPStatus `json:"ips"`
	Free           int        `json:"free"`
	Cooling        int        `json:"cooling"`
	Used           int        `json:"used"`
}

// IPStatus is one secondary address.
type IPStatus struct {
	IP           string     `json:"ip"`
	IPv6         string     `json:"ipv6,omitempty"`
	TaskID       string     `json:"taskId,omitempty"`
	CoolingUntil *time.Time `json:"coolingUntil,omitempty"`
}

// PoolKeyStatus is one warm pool.
type PoolKeyStatus struct {
	SubnetID       string   `json:"subnetId"`
	SecurityGroups []string `json:"securityGroups"`
	ENIs           int      `json:"enis"`
	Free           int      `json:"free"`
	Cooling        int      `json:"cooling"`
	Used           int      `json:"used"`
	Target         int      `json:"target"`
	RefillFailures int      `json:"refillFailures,omitempty"`
}

// Name is ProviderEC2.
func (p *EC2Provider) Name() string { return ProviderEC2 }

// Status is PoolStatus, for the operator view.
func (p *EC2Provider) Status(ctx context.Context) (any, error) { return p.PoolStatus(ctx), nil }

// PoolStatus reports the pools without calling EC2.
func (p *EC2Provider) PoolStatus(_ context.Context) PoolStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	st := PoolStatus{Host: p.cfg.Host, Limits: p.pool.limits, ENIs: []ENIStatus{}, Pools: []PoolKeyStatus{}}
	for _, e := range p.pool.sortedENIs(nil) {
		es := ENIStatus{
			ID: e.ID, MAC: e.MAC, DeviceIndex: e.DeviceIndex, SubnetID: e.SubnetID,
			SecurityGroups: e.Key.GroupIDs(), PrimaryIP: e.PrimaryIP, IPs: []IPStatus{},
			Free: e.free(now), Cooling: e.cooling(now), Used: e.used(),
		}
		ips := make([]string, 0, len(e.IPs))
		for ip := range e.IPs {
			ips = append(ips, ip)
		}
		sortIPs(ips)
		for _, ip := range ips {
			s := e.IPs[ip]
			is := IPStatus{IP: ip, IPv6: s.IPv6, TaskID: s.TaskID}
			if s.TaskID == "" && now.Before(s.CoolUntil) {
				t := s.CoolUntil
				is.CoolingUntil = &t
			}
			es.IPs = append(es.IPs, is)
		}
		st.ENIs = append(st.ENIs, es)
	}
	for _, k := range p.pool.keys(now) {
		free, cooling, used := p.pool.counts(k, now)
		st.Pools = append(st.Pools, PoolKeyStatus{
			SubnetID: k.SubnetID, SecurityGroups: k.GroupIDs(), ENIs: len(p.pool.sortedENIs(&k)),
			Free: free, Cooling: cooling, Used: used, Target: p.pool.target(k, now),
			RefillFailures: p.backoff[k].fails,
		})
	}
	return st
}
