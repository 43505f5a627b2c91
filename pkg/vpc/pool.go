package vpc

import (
	"net/netip"
	"slices"
	"sort"
	"strings"
	"time"
)

// PoolKey identifies a warm pool: tasks with the same subnet and the same
// set of security groups share ENIs (security groups live on the ENI).
type PoolKey struct {
	SubnetID string `json:"subnetId"`
	// Groups is the sorted, de-duplicated, comma-joined SG set.
	Groups string `json:"securityGroups"`
}

// NewPoolKey builds the key for a subnet and an SG set in any order.
func NewPoolKey(subnetID string, groups []string) PoolKey {
	g := slices.Clone(groups)
	sort.Strings(g)
	g = slices.Compact(g)
	return PoolKey{SubnetID: subnetID, Groups: strings.Join(g, ",")}
}

// GroupIDs returns the key's security groups, sorted.
func (k PoolKey) GroupIDs() []string {
	if k.Groups == "" {
		return nil
	}
	return strings.Split(k.Groups, ",")
}

func (k PoolKey) String() string { return k.SubnetID + "/" + k.Groups }

// PoolConfig sizes the warm pools.
type PoolConfig struct {
	// WarmIPs is how many free IPs to keep ready for every key in use. Zero means 2.
	WarmIPs int
	// MinDefaultIPs is kept warm for the default key even before any task uses it.
	MinDefaultIPs int
	// ReleaseAfter is how long a key may sit unused, or a pool over its
	// target, before surplus IPs and ENIs go back to EC2. Zero means 2m.
	ReleaseAfter time.Duration
	// ReuseCooldown keeps a released IP from going to another task at once,
	// so stale connections and ARP entries age out. Zero means 10s.
	ReuseCooldown time.Duration
	// MaxTaskENIs caps ENIs used for tasks below the instance limit (0: no cap).
	MaxTaskENIs int
}

func (c PoolConfig) withDefaults() PoolConfig {
	if c.WarmIPs == 0 {
		c.WarmIPs = 2
	}
	if c.WarmIPs < 0 {
		c.WarmIPs = 0
	}
	if c.ReleaseAfter <= 0 {
		c.ReleaseAfter = 2 * time.Minute
	}
	if c.ReuseCooldown <= 0 {
		c.ReuseCooldown = 10 * time.Second
	}
	return c
}

// eniState is one task ENI attached to this host.
type eniState struct {
	ID           string
	MAC          string
	AttachmentID string
	DeviceIndex  int
	SubnetID     string
	PrimaryIP    string // the ENI's own address, never given to a task
	Key          PoolKey
	IPs          map[string]*ipSlot // secondary IPv4s
}

type ipSlot struct {
	TaskID    string
	CoolUntil time.Time
	// IPv6 is the ENI's IPv6 address paired with this IPv4 (subnets with
	// IPv6 only); it goes to the task with the IPv4 when the task asks.
	IPv6 string
}

// pairIPv6 pairs the ENI's IPv6 addresses with IPv4 slots that have none,
// in address order, leaving existing pairs alone.
func (e *eniState) pairIPv6(v6 []string) {
	paired := map[string]bool{}
	var bare []string
	for ip, s := range e.IPs {
		if s.IPv6 != "" {
			paired[s.IPv6] = true
		} else {
			bare = append(bare, ip)
		}
	}
	sortIPs(bare)
	free := slices.DeleteFunc(slices.Clone(v6), func(a string) bool { return paired[a] })
	sortIPs(free)
	for i, ip := range bare {
		if i < len(free) {
			e.IPs[ip].IPv6 = free[i]
		}
	}
}

func (e *eniState) used() int {
	n := 0
	for _, s := range e.IPs {
		if s.TaskID != "" {
			n++
		}
	}
	return n
}

func (e *eniState) free(now time.Time) int {
	n := 0
	for _, s := range e.IPs {
		if s.TaskID == "" && !now.Before(s.CoolUntil) {
			n++
		}
	}
	return n
}

func (e *eniState) cooling(now time.Time) int {
	n := 0
	for _, s := range e.IPs {
		if s.TaskID == "" && now.Before(s.CoolUntil) {
			n++
		}
	}
	return n
}

// freeIPs returns free, cooled-down IPs in address order.
func (e *eniState) freeIPs(now time.Time) []string { return e.freeIPsFor(now, false) }

// freeIPsFor is freeIPs, only those paired with an IPv6 if ipv6.
func (e *eniState) freeIPsFor(now time.Time, ipv6 bool) []string {
	var out []string
	for ip, s := range e.IPs {
		if s.TaskID == "" && !now.Before(s.CoolUntil) && (!ipv6 || s.IPv6 != "") {
			out = append(out, ip)
		}
	}
	sortIPs(out)
	return out
}

func sortIPs(ips []string) {
	sort.Slice(ips, func(i, j int) bool {
		a, errA := netip.ParseAddr(ips[i])
		b, errB := netip.ParseAddr(ips[j])
		if errA != nil || errB != nil {
			return ips[i] < ips[j]
		}
		return a.Less(b)
	})
}

// taskIP is where a task's address lives.
type taskIP struct {
	ENI  string
	IP   string
	IPv6 string // only when the task asked for one
	Key  PoolKey
}

// pool is the accounting of ENIs and IPs. It does no I/O; the provider
// holds its lock around every use.
type pool struct {
	cfg        PoolConfig
	limits     Limits
	defaultKey PoolKey
	enis       map[string]*eniState
	foreign    int // ENIs on the instance that are not ours, besides the primary
	tasks      map[string]taskIP
	lastUsed   map[PoolKey]time.Time
	overSince  map[PoolKey]time.Time
}

func newPool(cfg PoolConfig, limits Limits, defaultKey PoolKey) *pool {
	return &pool{
		cfg: cfg.withDefaults(), limits: limits, defaultKey: defaultKey,
		enis: map[string]*eniState{}, tasks: map[string]taskIP{},
		lastUsed: map[PoolKey]time.Time{}, overSince: map[PoolKey]time.Time{},
	}
}

// sortedENIs returns the ENIs in device-index order, optionally only one key's.
func (p *pool) sortedENIs(key *PoolKey) []*eniState {
	var out []*eniState
	for _, e := range p.enis {
		if key == nil || e.Key == *key {
			out = append(out, e)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].DeviceIndex != out[j].DeviceIndex {
			return out[i].DeviceIndex < out[j].DeviceIndex
		}
		return out[i].ID < out[j].ID
	})
	return out
}

// take gives taskID a free IP of key: the ENI with the most tasks first, so
// ENIs fill up and idle ones can be handed back.
func (p *pool) take(key PoolKey, taskID string, now time.Time, ipv6 bool) (taskIP, bool) {
	if t, ok := p.tasks[taskID]; ok {
		return t, true
	}
	p.lastUsed[key] = now
	var best *eniState
	for _, e := range p.sortedENIs(&key) {
		if len(e.freeIPsFor(now, ipv6)) == 0 {
			continue
		}
		if best == nil || e.used() > best.used() {
			best = e
		}
	}
	if best == nil {
		return taskIP{}, false
	}
	ip := best.freeIPsFor(now, ipv6)[0]
	best.IPs[ip].TaskID = taskID
	t := taskIP{ENI: best.ID, IP: ip, Key: key}
	if ipv6 {
		t.IPv6 = best.IPs[ip].IPv6
	}
	p.tasks[taskID] = t
	return t, true
}

// release frees taskID's IP into its cool-down. It reports what was freed.
func (p *pool) release(taskID string, now time.Time) (taskIP, bool) {
	t, ok := p.tasks[taskID]
	if !ok {
		return taskIP{}, false
	}
	delete(p.tasks, taskID)
	p.lastUsed[t.Key] = now
	if e, ok := p.enis[t.ENI]; ok {
		if s, ok := e.IPs[t.IP]; ok && s.TaskID == taskID {
			s.TaskID = ""
			s.CoolUntil = now.Add(p.cfg.ReuseCooldown)
		}
	}
	return t, true
}

// counts returns free (ready), cooling and used IPs of key.
func (p *pool) counts(key PoolKey, now time.Time) (free, cooling, used int) {
	for _, e := range p.sortedENIs(&key) {
		free += e.free(now)
		cooling += e.cooling(now)
		used += e.used()
	}
	return
}

// inUse: a key is in use while a task holds one of its IPs or one did
// within ReleaseAfter.
func (p *pool) inUse(key PoolKey, now time.Time) bool {
	if _, _, used := p.counts(key, now); used > 0 {
		return true
	}
	t, ok := p.lastUsed[key]
	return ok && now.Sub(t) < p.cfg.ReleaseAfter
}

// target is how many free IPs key should have ready.
func (p *pool) target(key PoolKey, now time.Time) int {
	t := 0
	if p.inUse(key, now) {
		t = p.cfg.WarmIPs
	}
	if key == p.defaultKey && p.cfg.MinDefaultIPs > t {
		t = p.cfg.MinDefaultIPs
	}
	return t
}

// keys returns every key with ENIs, recent use or a standing target, sorted.
func (p *pool) keys(now time.Time) []PoolKey {
	set := map[PoolKey]bool{}
	for _, e := range p.enis {
		set[e.Key] = true
	}
	for k := range p.lastUsed {
		if p.inUse(k, now) {
			set[k] = true
		}
	}
	if p.defaultKey.SubnetID != "" && p.cfg.MinDefaultIPs > 0 {
		set[p.defaultKey] = true
	}
	out := make([]PoolKey, 0, len(set))
	for k := range set {
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	return out
}

// holds reports whether ip is already an address of one of our ENIs.
func (p *pool) holds(ip string) bool {
	for _, e := range p.enis {
		if _, ok := e.IPs[ip]; ok || e.PrimaryIP == ip {
			return true
		}
	}
	return false
}

func (p *pool) perENI() int { return max(p.limits.IPv4PerENI-1, 0) }

func (p *pool) maxTaskENIs() int {
	n := max(p.limits.MaxENIs-1-p.foreign, 0)
	if p.cfg.MaxTaskENIs > 0 && p.cfg.MaxTaskENIs < n {
		n = p.cfg.MaxTaskENIs
	}
	return n
}

// stepKind is one EC2 change that grows or shrinks a pool.
type stepKind string

const (
	stepNone     stepKind = ""         // nothing to do / nothing fits
	stepAssign   stepKind = "assign"   // assign Count secondary IPs on ENI
	stepCreate   stepKind = "create"   // create + attach an ENI for Key with Count IPs
	stepRegroup  stepKind = "regroup"  // move an idle ENI (same subnet) to Key's SGs
	stepDelete   stepKind = "delete"   // detach + delete ENI
	stepUnassign stepKind = "unassign" // unassign IPs from ENI
)

type step struct {
	Kind  stepKind
	Key   PoolKey
	ENI   string
	Count int
	IPs   []string
}

// planGrow picks the next EC2 change that gets key closer to need more
// free IPs. demand is true for a launch waiting on the pool: only then may
// an idle ENI of another key be taken over (background refills never steal).
func (p *pool) planGrow(key PoolKey, need int, demand bool, now time.Time) step {
	if need <= 0 {
		return step{}
	}
	per := p.perENI()
	for _, e := range p.sortedENIs(&key) {
		if room := per - len(e.IPs); room > 0 {
			return step{Kind: stepAssign, Key: key, ENI: e.ID, Count: min(room, need)}
		}
	}
	if len(p.enis) < p.maxTaskENIs() && per > 0 {
		return step{Kind: stepCreate, Key: key, Count: min(per, need)}
	}
	if !demand {
		return step{}
	}
	var other *eniState
	for _, e := range p.sortedENIs(nil) {
		if e.Key == key || e.used() > 0 {
			continue
		}
		if e.SubnetID == key.SubnetID {
			return step{Kind: stepRegroup, Key: key, ENI: e.ID}
		}
		if other == nil {
			other = e
		}
	}
	if other != nil {
		return step{Kind: stepDelete, Key: other.Key, ENI: other.ID}
	}
	return step{}
}

// planShrink lists the EC2 changes that bring key back to its target once it
// has been over it for ReleaseAfter: idle ENIs first, then single IPs from
// the least used ENIs. Cooling IPs are left alone.
func (p *pool) planShrink(key PoolKey, now time.Time) []step {
	free, cooling, _ := p.counts(key, now)
	target := p.target(key, now)
	empty := 0
	for _, e := range p.sortedENIs(&key) {
		if len(e.IPs) == 0 {
			empty++
		}
	}
	if free+cooling <= target && empty == 0 {
		delete(p.overSince, key)
		return nil
	}
	since, ok := p.overSince[key]
	if !ok {
		p.overSince[key] = now
		return nil
	}
	if now.Sub(since) < p.cfg.ReleaseAfter {
		return nil
	}
	surplus := free - max(target-cooling, 0)
	enis := p.sortedENIs(&key)
	// Least used, then highest device index, first.
	sort.SliceStable(enis, func(i, j int) bool {
		if enis[i].used() != enis[j].used() {
			return enis[i].used() < enis[j].used()
		}
		return enis[i].DeviceIndex > enis[j].DeviceIndex
	})
	var out []step
	for _, e := range enis {
		if e.used() == 0 && e.cooling(now) == 0 && len(e.IPs) <= max(surplus, 0) {
			out = append(out, step{Kind: stepDelete, Key: key, ENI: e.ID})
			surplus -= len(e.IPs)
			continue
		}
		if surplus <= 0 {
			continue
		}
		ips := e.freeIPs(now)
		n := min(len(ips), surplus)
		if n == 0 {
			continue
		}
		ips = ips[len(ips)-n:]
		out = append(out, step{Kind: stepUnassign, Key: key, ENI: e.ID, IPs: ips})
		surplus -= n
	}
	return out
}

// The pool's edits: every change apply makes to the ENIs and their
// addresses goes through one of these, under the provider's lock, with an
// undo for when the EC2 call fails.

// addENI puts a newly created ENI into the pool, minus any address one of
// our other ENIs already holds (a task address is never handed out twice);
// it returns those, with their IPv6 pairs, for the caller to give back.
func (p *pool) addENI(e *eniState) (dups, dups6 []string) {
	for ip, s := range e.IPs {
		if p.holds(ip) {
			dups = append(dups, ip)
			if s.IPv6 != "" {
				dups6 = append(dups6, s.IPv6)
			}
			delete(e.IPs, ip)
		}
	}
	sortIPs(dups)
	sortIPs(dups6)
	p.enis[e.ID] = e
	return dups, dups6
}

// snapshot copies an ENI's identity and addresses (without task state) for
// an EC2 call made outside the lock.
func (p *pool) snapshot(id string) (*eniState, bool) {
	e, ok := p.enis[id]
	if !ok {
		return nil, false
	}
	snap := &eniState{ID: e.ID, PrimaryIP: e.PrimaryIP, IPs: map[string]*ipSlot{}}
	for ip, s := range e.IPs {
		snap.IPs[ip] = &ipSlot{IPv6: s.IPv6}
	}
	return snap, true
}

// addIPs records addresses EC2 assigned to ENI id (v6[i] pairs with ips[i]
// when v6 is not nil), except those the pool already holds, which it
// returns with their IPv6 pairs. An ENI gone meanwhile takes nothing.
func (p *pool) addIPs(id string, ips, v6 []string) (dups, dups6 []string) {
	e, ok := p.enis[id]
	if !ok {
		return nil, nil
	}
	for i, ip := range ips {
		s := &ipSlot{}
		if v6 != nil {
			s.IPv6 = v6[i]
		}
		if p.holds(ip) {
			dups = append(dups, ip)
			if s.IPv6 != "" {
				dups6 = append(dups6, s.IPv6)
			}
			continue
		}
		e.IPs[ip] = s
	}
	return dups, dups6
}

// regroupIdle moves ENI id, if no task uses it, to key and returns its old
// key; setKey(id, old) undoes it.
func (p *pool) regroupIdle(id string, key PoolKey) (old PoolKey, ok bool) {
	e, ok := p.enis[id]
	if !ok || e.used() > 0 {
		return PoolKey{}, false
	}
	old, e.Key = e.Key, key
	return old, true
}

// setKey sets ENI id's key, if the ENI is still in the pool.
func (p *pool) setKey(id string, key PoolKey) {
	if e, ok := p.enis[id]; ok {
		e.Key = key
	}
}

// removeIdle takes ENI id out of the pool if no task uses it; putENI undoes it.
func (p *pool) removeIdle(id string) (*eniState, bool) {
	e, ok := p.enis[id]
	if !ok || e.used() > 0 {
		return nil, false
	}
	delete(p.enis, id)
	return e, true
}

// putENI puts an ENI (back) into the pool.
func (p *pool) putENI(e *eniState) { p.enis[e.ID] = e }

// removeFreeIPs takes the listed addresses of ENI id that no task holds out
// of the pool. It returns them, their IPv6 pairs, and the removed slots for
// restoreIPs.
func (p *pool) removeFreeIPs(id string, ips []string) (gone, gone6 []string, slots map[string]*ipSlot) {
	slots = map[string]*ipSlot{}
	e, ok := p.enis[id]
	if !ok {
		return nil, nil, slots
	}
	for _, ip := range ips {
		if s, ok := e.IPs[ip]; ok && s.TaskID == "" {
			gone = append(gone, ip)
			if s.IPv6 != "" {
				gone6 = append(gone6, s.IPv6)
			}
			slots[ip] = s
			delete(e.IPs, ip)
		}
	}
	return gone, gone6, slots
}

// restoreIPs puts addresses removeFreeIPs took back as free (cooled down,
// keeping their IPv6 pairs), if ENI id is still in the pool.
func (p *pool) restoreIPs(id string, slots map[string]*ipSlot) {
	e, ok := p.enis[id]
	if !ok {
		return
	}
	for ip, s := range slots {
		e.IPs[ip] = &ipSlot{IPv6: s.IPv6}
	}
}

// untake undoes take: taskID's address is free again at once, without a
// cool-down (the task never got it).
func (p *pool) untake(taskID string) {
	t, ok := p.release(taskID, time.Time{})
	if !ok {
		return
	}
	if e, ok := p.enis[t.ENI]; ok {
		if s, ok := e.IPs[t.IP]; ok {
			s.CoolUntil = time.Time{}
		}
	}
}
