package core

import (
	"cmp"
	"slices"
	"time"

	"github.com/titus-agent/titus-agent/pkg/scheduler/constraint"
	"github.com/titus-agent/titus-agent/pkg/scheduler/model"
)

// demand is what one task asks of a host.
type demand struct {
	req   model.Resources
	sgKey string
	// subnets are the subnets the task names (none: the agent's default).
	subnets []string
	spread  bool // service job: avoid hosts already running the job
	// zone is the job's zone balance: none, soft or hard (never default).
	zone       constraint.ZoneBalance
	maxPerHost int
	// place holds the job's hard and soft constraints; nil when it has none.
	place *constraint.Placement
}

// newDemand is what every task of a job asks. The placement was checked at
// submit; one that no longer compiles (a record from a newer scheduler)
// places without constraints rather than not at all.
func newDemand(spec *model.JobSpec, req model.Resources, sg string) (demand, error) {
	d := demand{req: req, sgKey: sg, spread: spec.Batch == nil}
	_, d.subnets = splitSGKey(sg)
	pl, err := constraint.Compile(spec.Placement)
	if err != nil {
		pl = &constraint.Placement{}
	}
	d.maxPerHost, d.zone = pl.MaxPerHost, pl.Zone
	if d.zone == constraint.ZoneDefault {
		d.zone = constraint.ZoneNone
		if d.spread {
			d.zone = constraint.ZoneSoft
		}
	}
	if len(pl.Hard) > 0 || len(pl.Prefs) > 0 {
		d.place = pl
	}
	return d, err
}

// spreadState counts one job's live tasks per host and per AZ.
type spreadState struct {
	onHost map[string]int
	perAZ  map[string]int
}

func newSpread() spreadState { return spreadState{onHost: map[string]int{}, perAZ: map[string]int{}} }

func (s spreadState) add(a *agentState, n int) {
	s.onHost[a.id] += n
	s.perAZ[a.az] += n
}

// placer picks hosts. It looks at no more than sample feasible hosts per
// task (starting where the previous search stopped), so a placement costs
// O(sample) on a fleet of any size while still bin-packing well.
//
// A job with constraints gets its own host lists, built once per round
// from the schedulable hosts: hard constraints filter them, and soft ones
// split them into tiers by the weight of the preferences a host matches,
// searched best first. Constraints are answered per attribute value
// (constraint.Matcher), never by a regex per host per task.
type placer struct {
	base         *tier // every schedulable host
	azs          []string
	all          []*agentState
	sample       int
	now          time.Time
	maxLaunching int
	jobs         map[*jobState]*candidates
	// every is every agent known, schedulable or not; gen names that set
	// of hosts and their attributes (Core.hostGen).
	every []*agentState
	gen   uint64
	// shared are the jobHosts of this gen by placement (Core.hostSets).
	shared map[string]*jobHosts
	// zones are the fleet's findings of subnets' zones.
	zones *subnetZones
}

// jobHosts is what a job's constraints make of the known hosts, kept
// until an agent registers or goes: the hosts every hard constraint
// allows (by id) with their preference weights, and, for the queue
// reason, the constraint that excludes the most. A job whose constraints
// no host meets costs nothing per round (a tenant cannot slow placement
// with jobs that never fit).
type jobHosts struct {
	gen      uint64
	allowed  []*agentState
	pref     []int
	known    int
	worst    constraint.Exclusion
	hasWorst bool
	// byPref are the allowed hosts split by preference weight, heaviest
	// first, each in id order: a round's tiers are these less the hosts
	// not schedulable then.
	byPref []prefHosts
}

type prefHosts struct {
	pref  int
	hosts []*agentState
}

// tier is a list of hosts searched together, in id order, overall and by
// AZ, with where the last search of each stopped.
type tier struct {
	pref   int
	all    []*agentState
	byAZ   map[string][]*agentState
	cursor map[string]int
	// own marks a tier of one job's candidates: a search drops the hosts
	// it finds cannot take the job's task, since within a round hosts only
	// fill up (their use, launches, the job's tasks on them and the IPs
	// taken only grow while c.mu is held), so they never could again.
	own bool
}

func newTier(pref int) *tier {
	return &tier{pref: pref, byAZ: map[string][]*agentState{}, cursor: map[string]int{}}
}

func (t *tier) add(a *agentState) {
	t.all = append(t.all, a)
	t.byAZ[a.az] = append(t.byAZ[a.az], a)
}

// candidates are the hosts one job may use this round.
type candidates struct {
	tiers []*tier
	azs   []string // AZs with a host the job may use, sorted
	count int
	// exhausted marks (tier, AZ) searches that found nothing this round:
	// hosts only fill up within a round, so they would find nothing again.
	exhausted map[tierAZ]bool
}

type tierAZ struct {
	tier  int
	zoned bool
	az    string
}

func newPlacer(agents []*agentState, sample, maxLaunching int, now time.Time) *placer {
	p := &placer{base: newTier(0), sample: sample, now: now, maxLaunching: maxLaunching, jobs: map[*jobState]*candidates{}, every: agents}
	for _, a := range agents {
		if a.schedulable(now) {
			p.all = append(p.all, a)
		}
	}
	slices.SortFunc(p.all, func(a, b *agentState) int { return cmp.Compare(a.id, b.id) })
	for _, a := range p.all {
		p.base.add(a)
	}
	for az := range p.base.byAZ {
		p.azs = append(p.azs, az)
	}
	slices.Sort(p.azs)
	return p
}

// candidatesOf builds (once per round) the hosts j may use.
func (p *placer) candidatesOf(j *jobState) *candidates {
	if c := p.jobs[j]; c != nil {
		return c
	}
	c := &candidates{exhausted: map[tierAZ]bool{}}
	pl := j.d.place
	if pl == nil {
		c.tiers, c.azs, c.count = []*tier{p.base}, p.azs, len(p.all)
		p.jobs[j] = c
		return c
	}
	h := p.hostsOf(j)
	for _, ph := range h.byPref {
		t := newTier(ph.pref)
		t.own = true
		t.all = make([]*agentState, 0, len(ph.hosts))
		for _, a := range ph.hosts {
			if a.schedulable(p.now) {
				t.add(a)
			}
		}
		if len(t.all) > 0 {
			c.tiers = append(c.tiers, t)
			c.count += len(t.all)
		}
	}
	for _, az := range p.azs {
		for _, t := range c.tiers {
			if len(t.byAZ[az]) > 0 {
				c.azs = append(c.azs, az)
				break
			}
		}
	}
	p.jobs[j] = c
	return c
}

// candidateHosts are the hosts j may use this round, as candidatesOf
// first built them (its searches drop hosts that fill up).
func (p *placer) candidateHosts(j *jobState) []*agentState {
	if j.d.place == nil {
		return p.all
	}
	var out []*agentState
	for _, ph := range p.hostsOf(j).byPref {
		for _, a := range ph.hosts {
			if a.schedulable(p.now) {
				out = append(out, a)
			}
		}
	}
	return out
}

// hostsOf is j's jobHosts for the current hosts, recomputed when they changed.
func (p *placer) hostsOf(j *jobState) *jobHosts {
	if h := j.hosts; h != nil && h.gen == p.gen && p.gen != 0 {
		return h
	}
	pl := j.d.place
	key := pl.HostsKey()
	if h := p.shared[key]; h != nil && h.gen == p.gen && p.gen != 0 {
		j.hosts = h
		return h
	}
	h := &jobHosts{gen: p.gen, known: len(p.every)}
	attrs := make([]map[string]string, 0, len(p.every))
	for _, a := range p.every {
		attrs = append(attrs, a.attrs)
		if pl.Allows(a.attrs) {
			h.allowed = append(h.allowed, a)
		}
	}
	slices.SortFunc(h.allowed, func(a, b *agentState) int { return cmp.Compare(a.id, b.id) })
	h.pref = make([]int, len(h.allowed))
	idx := map[int]int{}
	for i, a := range h.allowed {
		w := pl.Preference(a.attrs)
		h.pref[i] = w
		k, ok := idx[w]
		if !ok {
			k = len(h.byPref)
			idx[w] = k
			h.byPref = append(h.byPref, prefHosts{pref: w})
		}
		h.byPref[k].hosts = append(h.byPref[k].hosts, a)
	}
	slices.SortFunc(h.byPref, func(a, b prefHosts) int { return cmp.Compare(b.pref, a.pref) })
	if len(pl.Hard) > 0 {
		h.worst, h.hasWorst = pl.WorstExclusion(attrs)
	}
	j.hosts = h
	if p.shared != nil && p.gen != 0 {
		p.shared[key] = h
	}
	return h
}

// fits reports whether a can take one more of j's tasks now.
func (p *placer) fits(a *agentState, d *demand, sp spreadState) bool {
	return a.launching < p.maxLaunching && d.req.FitsIn(a.capacity.Sub(a.used)) &&
		(d.maxPerHost <= 0 || sp.onHost[a.id] < d.maxPerHost) && a.zoneFits(d.subnets, p.zones) && a.ipFits(d.sgKey, p.now)
}

// score is higher for better hosts: fuller after placement (bin-packing),
// and, for spread jobs, fewer of the job's tasks already there.
func score(a *agentState, d *demand, sp spreadState) float64 {
	after := a.used.Add(d.req)
	s := (ratio(after.CPU, a.capacity.CPU) + ratio(after.Mem, a.capacity.Mem)) / 2
	if d.spread {
		s -= float64(sp.onHost[a.id])
	}
	return s
}

func ratio(a, b int64) float64 {
	if b <= 0 {
		return 0
	}
	return float64(a) / float64(b)
}

// pick returns the best host for one of j's tasks, or nil when none fits.
func (p *placer) pick(j *jobState) *agentState {
	c := p.candidatesOf(j)
	d, sp := &j.d, j.spread
	zone := d.zone
	if zone == constraint.ZoneDefault {
		zone = constraint.ZoneNone
		if d.spread {
			zone = constraint.ZoneSoft
		}
	}
	var azs []string
	switch zone {
	case constraint.ZoneSoft:
		// Try the AZs holding the fewest of the job's tasks first.
		azs = slices.Clone(c.azs)
		slices.SortStableFunc(azs, func(a, b string) int { return cmp.Compare(sp.perAZ[a], sp.perAZ[b]) })
	case constraint.ZoneHard:
		azs = minZones(c.azs, sp)
	}
	for ti, t := range c.tiers {
		if zone == constraint.ZoneNone {
			if a := p.bestIn(c, ti, t, false, "", d, sp); a != nil {
				return a
			}
			continue
		}
		for _, az := range azs {
			if a := p.bestIn(c, ti, t, true, az, d, sp); a != nil {
				return a
			}
		}
	}
	return nil
}

// minZones are the AZs (of those the job may use) holding the fewest of
// its tasks: under hard zone balance a task goes only there.
func minZones(azs []string, sp spreadState) []string {
	var out []string
	least := -1
	for _, az := range azs {
		switch n := sp.perAZ[az]; {
		case least < 0 || n < least:
			least, out = n, append(out[:0], az)
		case n == least:
			out = append(out, az)
		}
	}
	return out
}

func (p *placer) bestIn(c *candidates, ti int, t *tier, zoned bool, az string, d *demand, sp spreadState) *agentState {
	k := tierAZ{ti, zoned, az}
	if c.exhausted[k] {
		return nil
	}
	a := p.best(t, zoned, az, d, sp)
	if a == nil {
		c.exhausted[k] = true
	}
	return a
}

// best searches t's hosts (of zone az when zoned) from where the last
// search stopped, and returns the best scoring of the first sample that fit.
func (p *placer) best(t *tier, zoned bool, az string, d *demand, sp spreadState) *agentState {
	list, key := t.all, "\x00all" // no zone is named so
	if zoned {
		list, key = t.byAZ[az], az
	}
	n := len(list)
	if n == 0 {
		return nil
	}
	start := 0
	if n > p.sample {
		start = t.cursor[key] % n
	}
	var best *agentState
	var bestScore float64
	var full []int // positions of hosts that no longer fit (own tiers)
	found, i := 0, 0
	for ; i < n && found < p.sample; i++ {
		k := (start + i) % n
		a := list[k]
		if !p.fits(a, d, sp) {
			if t.own {
				full = append(full, k)
			}
			continue
		}
		found++
		sc := score(a, d, sp)
		if best == nil || sc > bestScore || (sc == bestScore && a.id < best.id) {
			best, bestScore = a, sc
		}
	}
	// Start the next search past the hosts just looked at, less one so a
	// host with room left is looked at again (bin-packing).
	next := (start + max(i-1, 0)) % n
	if len(full) > 0 {
		list, next = dropHosts(list, full, next)
		if zoned {
			t.byAZ[az] = list
		} else {
			t.all = list
		}
		n = len(list)
	}
	if n > p.sample {
		t.cursor[key] = next
	}
	return best
}

// dropHosts removes the hosts at positions drop (ascending mod a
// rotation) from list, keeping the others in order, and moves cursor to
// the same host, or the next one kept when it was dropped.
func dropHosts(list []*agentState, drop []int, cursor int) ([]*agentState, int) {
	slices.Sort(drop)
	out := list[:0]
	newCursor, di := -1, 0
	for k, a := range list {
		if k == cursor {
			newCursor = len(out)
		}
		if di < len(drop) && drop[di] == k {
			di++
			continue
		}
		out = append(out, a)
	}
	clear(list[len(out):])
	if newCursor < 0 || newCursor >= len(out) {
		newCursor = 0
	}
	return out, newCursor
}
