package vpc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"

	"github.com/titus-agent/titus-agent/pkg/backoff"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// ErrInvalidNetworkRequest is returned when a request names no usable
// subnet or security group.
var ErrInvalidNetworkRequest = errors.New("invalid network request")

// ErrSubnetNotInZone is returned (with ErrInvalidNetworkRequest) when none
// of a request's subnets lies in the host's zone: another host may serve
// it.
var ErrSubnetNotInZone = errors.New("no subnet in the host's zone")

// EC2ProviderConfig configures the production IP provider.
type EC2ProviderConfig struct {
	API  EC2API
	Host HostInfo
	// AgentID goes into the ENI tags (e.g. the agent's hostname).
	AgentID string
	// DefaultSubnetID and DefaultSecurityGroups are used when a task names
	// none; the subnet defaults to the primary ENI's.
	DefaultSubnetID       string
	DefaultSecurityGroups []string
	Pool                  PoolConfig
	// RecordPath is the JSON file allocations are recorded in.
	RecordPath string
	// RefillInterval is how often the background loop checks the pools
	// (it also runs after every allocate/release). Zero means 1s.
	RefillInterval time.Duration
	// RefillBackoffMax caps the per-pool backoff after failed refills. Zero means 1m.
	RefillBackoffMax time.Duration
	Logger           *slog.Logger
	Now              func() time.Time
}

// EC2Provider hands out secondary IPv4s of ENIs attached to this instance,
// from warm pools keyed by (subnet, SG set).
type EC2Provider struct {
	cfg    EC2ProviderConfig
	log    *slog.Logger
	now    func() time.Time
	eni    *eniManager
	record *allocRecord

	mu   sync.Mutex // guards pool, backoff, subnetZone
	pool *pool
	// subnetZone says, of the subnets tasks named and EC2 described,
	// whether each lies in this host's zone (reported to the scheduler:
	// Usage). At most maxReportedSubnets.
	subnetZone map[string]bool
	// backoff holds, per key, when the next background refill may run and
	// the current delay.
	backoff map[PoolKey]refillBackoff

	growMu sync.Mutex // serialises EC2 changes to ENIs (device indexes, counts)

	kick   chan struct{}
	stop   chan struct{}
	doneWG sync.WaitGroup
	once   sync.Once
}

type refillBackoff struct {
	next  time.Time
	delay time.Duration
	fails int
}

// NewEC2Provider reads the instance limits, loads the allocation record and
// rebuilds the pools from it and from the ENIs EC2 shows as ours: tagged
// ENIs left detached (a crash between create and attach) are deleted,
// recorded allocations whose IP is gone are dropped. Call Start to run the
// background refill.
func NewEC2Provider(ctx context.Context, cfg EC2ProviderConfig) (*EC2Provider, error) {
	if cfg.API == nil || cfg.Host.InstanceID == "" {
		return nil, errors.New("ec2 provider: API and Host.InstanceID are required")
	}
	if cfg.RecordPath == "" {
		return nil, errors.New("ec2 provider: RecordPath is required")
	}
	if cfg.DefaultSubnetID == "" {
		cfg.DefaultSubnetID = cfg.Host.SubnetID
	}
	if cfg.RefillInterval <= 0 {
		cfg.RefillInterval = time.Second
	}
	if cfg.RefillBackoffMax <= 0 {
		cfg.RefillBackoffMax = time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	p := &EC2Provider{
		cfg: cfg, log: cfg.Logger, now: cfg.Now,
		eni:     &eniManager{api: cfg.API, host: cfg.Host, agentID: cfg.AgentID},
		backoff: map[PoolKey]refillBackoff{},
		kick:    make(chan struct{}, 1),
		stop:    make(chan struct{}),
	}
	var lc limitsCache
	limits, err := lc.get(ctx, cfg.API, cfg.Host.InstanceType)
	if err != nil {
		return nil, err
	}
	if p.record, err = openRecord(cfg.RecordPath); err != nil {
		return nil, err
	}
	p.pool = newPool(cfg.Pool, limits, NewPoolKey(cfg.DefaultSubnetID, cfg.DefaultSecurityGroups))
	if err := p.rebuild(ctx); err != nil {
		return nil, err
	}
	return p, nil
}

// rebuild adopts our attached ENIs, deletes our detached ones and binds
// recorded allocations to the IPs EC2 still shows.
func (p *EC2Provider) rebuild(ctx context.Context) error {
	ours, err := p.eni.ourENIs(ctx)
	if err != nil {
		return err
	}
	attached, err := p.eni.attachedENIs(ctx)
	if err != nil {
		return err
	}
	ourIDs := map[string]bool{}
	for _, n := range ours {
		id := aws.ToString(n.NetworkInterfaceId)
		ourIDs[id] = true
		if n.Attachment != nil && aws.ToString(n.Attachment.InstanceId) == p.cfg.Host.InstanceID {
			continue
		}
		if n.Attachment != nil && aws.ToString(n.Attachment.InstanceId) != "" {
			continue // attached elsewhere: not ours to delete
		}
		p.log.Info("deleting leaked ENI", "eni", id)
		if err := p.eni.detachDelete(ctx, id, ""); err != nil {
			return fmt.Errorf("delete leaked ENI %s: %w", id, err)
		}
	}
	foreign := 0
	for _, n := range attached {
		id := aws.ToString(n.NetworkInterfaceId)
		if !ourIDs[id] {
			if n.Attachment != nil && aws.ToInt32(n.Attachment.DeviceIndex) != 0 {
				foreign++
			}
			continue
		}
		p.pool.putENI(stateFromEC2(n))
	}
	p.pool.foreign = foreign
	subnets := []string{p.cfg.DefaultSubnetID}
	for _, e := range p.pool.enis {
		subnets = append(subnets, e.SubnetID)
	}
	if _, err := p.eni.describeSubnets(ctx, slices.Compact(slices.Sorted(slices.Values(subnets)))); err != nil {
		return err
	}
	now := p.now()
	for taskID, r := range p.record.entries() {
		e, ok := p.pool.enis[r.ENI]
		var slot *ipSlot
		if ok {
			slot = e.IPs[r.IP]
		}
		if r.State != recordAssigned || slot == nil || slot.TaskID != "" || e.Key != r.Key {
			p.log.Info("dropping stale allocation record", "task", taskID, "state", r.State, "ip", r.IP)
			if err := p.record.remove(taskID); err != nil {
				return err
			}
			continue
		}
		if r.IPv6 != "" && slot.IPv6 != r.IPv6 {
			// Keep the recorded pair: swap with the slot EC2's order gave it to.
			other := ""
			for _, s := range e.IPs {
				if s.IPv6 == r.IPv6 && s.TaskID == "" {
					s.IPv6, other = slot.IPv6, r.IPv6
				}
			}
			if other == "" {
				p.log.Info("dropping allocation record whose IPv6 is gone", "task", taskID, "ipv6", r.IPv6)
				if err := p.record.remove(taskID); err != nil {
					return err
				}
				continue
			}
			slot.IPv6 = r.IPv6
		}
		slot.TaskID = taskID
		p.pool.tasks[taskID] = taskIP{ENI: r.ENI, IP: r.IP, IPv6: r.IPv6, Key: r.Key}
		p.pool.lastUsed[r.Key] = now
	}
	return nil
}

// Start runs the background refill/release loop until Close.
func (p *EC2Provider) Start() {
	p.doneWG.Add(1)
	go p.loop()
}

// Close stops the background loop. It does not touch ENIs or IPs.
func (p *EC2Provider) Close() error {
	p.once.Do(func() { close(p.stop) })
	p.doneWG.Wait()
	return nil
}

func (p *EC2Provider) poke() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// keyFor maps a request to its pool: the first of its subnets in this
// host's AZ (or the default subnet) and its SG set (or the default SGs).
func (p *EC2Provider) keyFor(ctx context.Context, req task.NetworkRequest) (PoolKey, subnetInfo, error) {
	groups := req.SecurityGroupIDs
	if len(groups) == 0 {
		groups = p.cfg.DefaultSecurityGroups
	}
	if len(groups) == 0 {
		return PoolKey{}, subnetInfo{}, fmt.Errorf("%w: no security groups and no default", ErrInvalidNetworkRequest)
	}
	subnets := req.SubnetIDs
	if len(subnets) == 0 {
		subnets = []string{p.cfg.DefaultSubnetID}
	}
	infos, err := p.eni.describeSubnets(ctx, subnets)
	if err != nil {
		return PoolKey{}, subnetInfo{}, err
	}
	p.noteZones(subnets, infos)
	for _, id := range subnets {
		if s := infos[id]; s.AZ == p.cfg.Host.AvailabilityZone || p.cfg.Host.AvailabilityZone == "" {
			if req.IPv6 && !s.IPv6.IsValid() {
				return PoolKey{}, subnetInfo{}, fmt.Errorf("%w: IPv6 asked for, but subnet %s has no IPv6 CIDR", ErrInvalidNetworkRequest, id)
			}
			return NewPoolKey(id, groups), s, nil
		}
	}
	return PoolKey{}, subnetInfo{}, fmt.Errorf("%w: %w: none of subnets %v is in %s", ErrInvalidNetworkRequest, ErrSubnetNotInZone, subnets, p.cfg.Host.AvailabilityZone)
}

// maxReportedSubnets bounds the subnets whose zone the provider reports.
const maxReportedSubnets = 256

// noteZones records which of the described subnets lie in the host's zone.
func (p *EC2Provider) noteZones(ids []string, infos map[string]subnetInfo) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.subnetZone == nil {
		p.subnetZone = map[string]bool{}
	}
	for _, id := range ids {
		s, ok := infos[id]
		if _, known := p.subnetZone[id]; !ok || known || len(p.subnetZone) >= maxReportedSubnets {
			continue
		}
		p.subnetZone[id] = s.AZ == p.cfg.Host.AvailabilityZone || p.cfg.Host.AvailabilityZone == ""
	}
}

// Allocate gives taskID an IP of the pool for req. From a warm pool it makes
// no EC2 call. Otherwise it grows the pool (assign IPs in a batch, take an
// idle ENI over, or create one) and fails with ErrNoCapacity when the
// instance has no room left. Allocating twice for a task returns the same IP.
// It returns once the allocation is recorded on disk.
func (p *EC2Provider) Allocate(ctx context.Context, taskID string, req task.NetworkRequest) (Allocation, error) {
	a, gen, fresh, err := p.allocate(ctx, taskID, req)
	if err != nil {
		return a, err
	}
	if err := p.record.sync(gen); err != nil {
		p.mu.Lock()
		if t, ok := p.pool.tasks[taskID]; ok && fresh && t.IP == a.IPv4.Addr().String() {
			p.pool.untake(taskID)
			p.record.stageRemove(taskID)
		}
		p.mu.Unlock()
		return Allocation{}, err
	}
	return a, nil
}

// AllocateDeferred is Allocate without waiting for a warm allocation's
// record to reach the disk: durable returns once it has (group-committed
// with other launches' records). The caller may wire the address
// meanwhile, but must not let the task use it (start its process) before
// durable returned nil: until then a crash forgets the allocation, and the
// restarted agent may give the address to another task (the resumed
// launch's Setup then drops it from the first: DataPlane.Setup).
func (p *EC2Provider) AllocateDeferred(ctx context.Context, taskID string, req task.NetworkRequest) (a Allocation, durable func(context.Context) error, err error) {
	a, gen, _, err := p.allocate(ctx, taskID, req)
	if err != nil {
		return a, nil, err
	}
	return a, func(context.Context) error { return p.record.sync(gen) }, nil
}

// allocate takes or grows; gen is the record change to sync before the
// task may use the address; fresh says this call took it.
func (p *EC2Provider) allocate(ctx context.Context, taskID string, req task.NetworkRequest) (_ Allocation, gen uint64, fresh bool, _ error) {
	key, sn, err := p.keyFor(ctx, req)
	if err != nil {
		return Allocation{}, 0, false, err
	}
	p.mu.Lock()
	if t, ok := p.pool.tasks[taskID]; ok {
		a := p.allocationLocked(taskID, t)
		p.mu.Unlock()
		// Its record may be staged, not yet written: wait for all.
		return a, p.record.staging(), false, nil
	}
	// Warm: the one record change is the assignment, staged in memory
	// under the lock and written (group-committed) outside it.
	a, gen, ok := p.takeLocked(taskID, key, req.IPv6)
	if ok {
		p.mu.Unlock()
		p.poke()
		return a, gen, true, nil
	}
	// Cold: the intent is on disk before EC2 is touched.
	_, _, gen = p.record.stagePut(taskID, recordEntry{State: recordPending, Key: key})
	p.mu.Unlock()
	if err := p.record.sync(gen); err != nil {
		p.mu.Lock()
		p.record.stageRemove(taskID)
		p.mu.Unlock()
		return Allocation{}, 0, false, err
	}
	a, gen, err = p.allocateSlow(ctx, taskID, key, sn, req.IPv6)
	if err != nil {
		_ = p.record.remove(taskID)
	}
	p.poke()
	return a, gen, err == nil, err
}

// takeLocked takes a free IP of key for taskID and stages its record
// (durable once record.sync(gen) returned).
func (p *EC2Provider) takeLocked(taskID string, key PoolKey, ipv6 bool) (Allocation, uint64, bool) {
	t, ok := p.pool.take(key, taskID, p.now(), ipv6)
	if !ok {
		return Allocation{}, 0, false
	}
	_, _, gen := p.record.stagePut(taskID, recordEntry{State: recordAssigned, Key: key, ENI: t.ENI, IP: t.IP, IPv6: t.IPv6})
	return p.allocationLocked(taskID, t), gen, true
}

func (p *EC2Provider) allocateSlow(ctx context.Context, taskID string, key PoolKey, _ subnetInfo, ipv6 bool) (Allocation, uint64, error) {
	p.growMu.Lock()
	defer p.growMu.Unlock()
	for range 8 {
		p.mu.Lock()
		a, gen, ok := p.takeLocked(taskID, key, ipv6)
		if ok {
			p.mu.Unlock()
			return a, gen, nil
		}
		free, cooling, _ := p.pool.counts(key, p.now())
		need := 1 + p.pool.cfg.WarmIPs - free - cooling
		st := p.pool.planGrow(key, max(need, 1), true, p.now())
		p.mu.Unlock()
		if st.Kind == stepNone {
			return Allocation{}, 0, fmt.Errorf("%w: instance %s (%s) has no room for another IP in %s with groups %s",
				ErrNoCapacity, p.cfg.Host.InstanceID, p.cfg.Host.InstanceType, key.SubnetID, key.Groups)
		}
		if err := p.apply(ctx, st); err != nil {
			return Allocation{}, 0, fmt.Errorf("grow pool %s: %w", key, err)
		}
	}
	return Allocation{}, 0, fmt.Errorf("%w: pool %s did not grow", ErrNoCapacity, key)
}

// apply carries out one pool change against EC2. Callers hold growMu.
func (p *EC2Provider) apply(ctx context.Context, st step) error {
	switch st.Kind {
	case stepCreate:
		e, err := p.eni.create(ctx, st.Key, st.Count, p.pool.limits.MaxENIs, p.subnetHasIPv6(st.Key.SubnetID))
		if err != nil {
			return err
		}
		p.mu.Lock()
		dups, dups6 := p.pool.addENI(e)
		p.mu.Unlock()
		if len(dups) > 0 {
			p.log.Warn("EC2 assigned addresses this host already holds; giving them back", "eni", e.ID, "ips", dups)
			_ = p.eni.unassign(ctx, e.ID, dups, dups6)
		}
		p.log.Info("created ENI", "eni", e.ID, "device", e.DeviceIndex, "key", st.Key.String(), "ips", len(e.IPs))
	case stepAssign:
		p.mu.Lock()
		snap, ok := p.pool.snapshot(st.ENI)
		p.mu.Unlock()
		if !ok {
			return nil
		}
		ips, v6, err := p.eni.assign(ctx, snap, st.Count, p.subnetHasIPv6(st.Key.SubnetID))
		if err != nil {
			return err
		}
		p.mu.Lock()
		dups, dups6 := p.pool.addIPs(st.ENI, ips, v6)
		p.mu.Unlock()
		if len(dups) > 0 {
			p.log.Warn("EC2 assigned addresses this host already holds; giving them back", "eni", st.ENI, "ips", dups)
			_ = p.eni.unassign(ctx, st.ENI, dups, dups6)
		}
	case stepRegroup:
		p.mu.Lock()
		old, ok := p.pool.regroupIdle(st.ENI, st.Key)
		p.mu.Unlock()
		if !ok {
			return nil
		}
		if err := p.eni.regroup(ctx, st.ENI, st.Key.GroupIDs()); err != nil {
			p.mu.Lock()
			p.pool.setKey(st.ENI, old)
			p.mu.Unlock()
			return err
		}
		p.log.Info("moved idle ENI to new security groups", "eni", st.ENI, "from", old.String(), "to", st.Key.String())
	case stepDelete:
		p.mu.Lock()
		e, ok := p.pool.removeIdle(st.ENI)
		p.mu.Unlock()
		if !ok {
			return nil
		}
		if err := p.eni.detachDelete(ctx, e.ID, e.AttachmentID); err != nil {
			p.mu.Lock()
			p.pool.putENI(e)
			p.mu.Unlock()
			return err
		}
		p.log.Info("deleted ENI", "eni", e.ID, "key", e.Key.String())
	case stepUnassign:
		p.mu.Lock()
		ips, v6, gone := p.pool.removeFreeIPs(st.ENI, st.IPs)
		p.mu.Unlock()
		if len(ips) == 0 {
			return nil
		}
		if err := p.eni.unassign(ctx, st.ENI, ips, v6); err != nil {
			p.mu.Lock()
			p.pool.restoreIPs(st.ENI, gone)
			p.mu.Unlock()
			return err
		}
	}
	return nil
}

// Release returns taskID's IP to its pool, where it cools down before
// another task gets it. Releasing an unknown task is a no-op.
// The record change is staged under the lock and written outside it, so a
// release does not hold up other tasks' launches; a crash before it is
// written leaves the allocation recorded, and the restarted agent's
// reconcile releases it again.
func (p *EC2Provider) Release(_ context.Context, taskID string) error {
	p.mu.Lock()
	_, ok := p.pool.release(taskID, p.now())
	gen, staged := p.record.stageRemove(taskID)
	p.mu.Unlock()
	if ok {
		p.poke()
	}
	if !staged {
		return nil
	}
	return p.record.sync(gen)
}

// Allocations lists the current allocations, sorted by task id.
func (p *EC2Provider) Allocations(_ context.Context) ([]Allocation, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	ids := make([]string, 0, len(p.pool.tasks))
	for id := range p.pool.tasks {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	out := make([]Allocation, 0, len(ids))
	for _, id := range ids {
		out = append(out, p.allocationLocked(id, p.pool.tasks[id]))
	}
	return out, nil
}

func (p *EC2Provider) allocationLocked(taskID string, t taskIP) Allocation {
	e := p.pool.enis[t.ENI]
	sn, _ := p.eni.cachedSubnet(t.Key.SubnetID)
	ip, _ := netip.ParseAddr(t.IP)
	a := Allocation{
		TaskID:           taskID,
		IPv4:             netip.PrefixFrom(ip, sn.CIDR.Bits()),
		Gateway:          sn.Gateway,
		SubnetIPv6:       sn.IPv6,
		ENIID:            t.ENI,
		SubnetID:         t.Key.SubnetID,
		VPCID:            sn.VPCID,
		SecurityGroupIDs: t.Key.GroupIDs(),
		AvailabilityZone: p.cfg.Host.AvailabilityZone,
		Region:           p.cfg.Host.Region,
	}
	a.Provider = ProviderEC2
	if v6, err := netip.ParseAddr(t.IPv6); err == nil {
		a.IPv6 = v6
	}
	if e != nil {
		a.MAC, a.DeviceIndex, a.RouteTable = e.MAC, e.DeviceIndex, ENIRouteTable(e.DeviceIndex)
	}
	return a
}

func (p *EC2Provider) loop() {
	defer p.doneWG.Done()
	t := time.NewTicker(p.cfg.RefillInterval)
	defer t.Stop()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-p.stop
		cancel()
	}()
	for {
		p.Tick(ctx)
		select {
		case <-p.stop:
			return
		case <-t.C:
		case <-p.kick:
		}
	}
}

// Tick runs one round of background work: refill every pool below its
// target, then hand back what has been surplus for ReleaseAfter. Failed
// refills back off per pool (exponentially from RefillInterval, with
// jitter, on top of the SDK's own jittered retries). Exposed for tests that drive time themselves.
func (p *EC2Provider) Tick(ctx context.Context) {
	p.growMu.Lock()
	defer p.growMu.Unlock()
	now := p.now()
	p.mu.Lock()
	keys := p.pool.keys(now)
	p.mu.Unlock()
	for _, key := range keys {
		if ctx.Err() != nil {
			return
		}
		p.mu.Lock()
		b := p.backoff[key]
		p.mu.Unlock()
		if now.Before(b.next) {
			continue
		}
		if err := p.refill(ctx, key); err != nil {
			p.mu.Lock()
			b.delay = backoff.Policy{Base: p.cfg.RefillInterval, Max: p.cfg.RefillBackoffMax, Jitter: backoff.Equal}.Delay(b.fails)
			b.fails++
			b.next = p.now().Add(b.delay)
			p.backoff[key] = b
			p.mu.Unlock()
			p.log.Warn("pool refill failed; backing off", "key", key.String(), "delay", b.delay, "err", err)
			continue
		}
		p.mu.Lock()
		delete(p.backoff, key)
		steps := p.pool.planShrink(key, p.now())
		p.mu.Unlock()
		for _, st := range steps {
			if err := p.apply(ctx, st); err != nil {
				p.log.Warn("pool release failed", "key", key.String(), "step", st.Kind, "eni", st.ENI, "err", err)
			}
		}
	}
}

func (p *EC2Provider) refill(ctx context.Context, key PoolKey) error {
	for range 4 {
		p.mu.Lock()
		now := p.now()
		free, cooling, _ := p.pool.counts(key, now)
		st := p.pool.planGrow(key, p.pool.target(key, now)-free-cooling, false, now)
		p.mu.Unlock()
		if st.Kind == stepNone {
			return nil
		}
		if err := p.apply(ctx, st); err != nil {
			return err
		}
	}
	return nil
}

func (p *EC2Provider) subnetHasIPv6(id string) bool {
	s, _ := p.eni.cachedSubnet(id)
	return s.IPv6.IsValid()
}

// RefillFailures reports, per pool, how many refills in a row failed (for
// status and tests).
func (p *EC2Provider) RefillFailures() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string]int{}
	for k, b := range p.backoff {
		out[k.String()] = b.fails
	}
	return out
}
