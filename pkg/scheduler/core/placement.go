package core

import (
	"cmp"
	"slices"
	"time"

	"github.com/titus-agent/titus-agent/pkg/scheduler/model"
)

// demand is what one task asks of a host.
type demand struct {
	req    model.Resources
	sgKey  string
	spread bool // service job: balance AZs, avoid hosts already running the job
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
type placer struct {
	byAZ         map[string][]*agentState
	azs          []string
	all          []*agentState
	cursor       map[string]int
	sample       int
	now          time.Time
	maxLaunching int
}

func newPlacer(agents []*agentState, sample, maxLaunching int, now time.Time) *placer {
	p := &placer{byAZ: map[string][]*agentState{}, cursor: map[string]int{}, sample: sample, now: now, maxLaunching: maxLaunching}
	for _, a := range agents {
		if !a.schedulable(now) {
			continue
		}
		p.all = append(p.all, a)
		p.byAZ[a.az] = append(p.byAZ[a.az], a)
	}
	slices.SortFunc(p.all, func(a, b *agentState) int { return cmp.Compare(a.id, b.id) })
	for az, l := range p.byAZ {
		slices.SortFunc(l, func(a, b *agentState) int { return cmp.Compare(a.id, b.id) })
		p.azs = append(p.azs, az)
	}
	slices.Sort(p.azs)
	return p
}

// fits reports whether a can take d now.
func (p *placer) fits(a *agentState, d demand) bool {
	return a.launching < p.maxLaunching && d.req.FitsIn(a.capacity.Sub(a.used)) && a.ipFits(d.sgKey)
}

// score is higher for better hosts: fuller after placement (bin-packing),
// and, for spread jobs, fewer of the job's tasks already there.
func score(a *agentState, d demand, sp spreadState) float64 {
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

// pick returns the best host for d, or nil when none fits.
func (p *placer) pick(d demand, sp spreadState) *agentState {
	if !d.spread {
		return p.best("", p.all, d, sp)
	}
	// Balance AZs: try the AZs holding the fewest of the job's tasks first.
	azs := slices.Clone(p.azs)
	slices.SortStableFunc(azs, func(a, b string) int { return cmp.Compare(sp.perAZ[a], sp.perAZ[b]) })
	for _, az := range azs {
		if a := p.best(az, p.byAZ[az], d, sp); a != nil {
			return a
		}
	}
	return nil
}

func (p *placer) best(key string, list []*agentState, d demand, sp spreadState) *agentState {
	n := len(list)
	if n == 0 {
		return nil
	}
	start := 0
	if n > p.sample {
		start = p.cursor[key] % n
	}
	var best *agentState
	var bestScore float64
	found, i := 0, 0
	for ; i < n && found < p.sample; i++ {
		a := list[(start+i)%n]
		if !p.fits(a, d) {
			continue
		}
		found++
		sc := score(a, d, sp)
		if best == nil || sc > bestScore || (sc == bestScore && a.id < best.id) {
			best, bestScore = a, sc
		}
	}
	if n > p.sample {
		// Start the next search past the hosts just looked at, less one so a
		// host with room left is looked at again (bin-packing).
		p.cursor[key] = start + max(i-1, 0)
	}
	return best
}
