package constraint

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// ZoneBalance says how a job's tasks spread over zones.
type ZoneBalance int

// Zone balance modes, in the wire enum's order.
const (
	ZoneDefault ZoneBalance = iota // soft for a service job, none for a batch job
	ZoneNone
	ZoneSoft
	ZoneHard
)

func (z ZoneBalance) String() string {
	return [...]string{"default", "none", "soft", "hard"}[z]
}

// Spec is a job's placement as submitted.
type Spec struct {
	Constraints      []string
	Preferences      []PreferenceSpec
	MaxPerHost       uint32
	UniqueHost       bool
	ZoneBalance      ZoneBalance
	InstanceFamilies []string
}

// PreferenceSpec is a soft constraint as submitted.
type PreferenceSpec struct {
	Constraint string
	Weight     int32
}

// Empty reports whether s asks nothing.
func (s *Spec) Empty() bool {
	return len(s.Constraints) == 0 && len(s.Preferences) == 0 && s.MaxPerHost == 0 && !s.UniqueHost &&
		s.ZoneBalance == ZoneDefault && len(s.InstanceFamilies) == 0
}

// Clone copies s's slices.
func (s Spec) Clone() Spec {
	s.Constraints = slices.Clone(s.Constraints)
	s.Preferences = slices.Clone(s.Preferences)
	s.InstanceFamilies = slices.Clone(s.InstanceFamilies)
	return s
}

// Bounds of a job's placement.
const (
	MaxConstraints = 16
	MaxPreferences = 16
	MaxFamilies    = 32
	MaxRegexes     = 8
	MaxWeight      = 100
)

// Placement is a compiled Spec. It caches answers per attribute value and
// is not safe for concurrent use.
type Placement struct {
	Hard       []*Matcher
	Prefs      []*Matcher
	Weights    []int
	MaxPerHost int
	Zone       ZoneBalance
	hostsKey   string
}

// HostsKey names what the placement makes of a set of hosts: which it
// allows, each one's preference weight and the worst exclusion. Two
// placements with the same key answer the same for every host.
func (p *Placement) HostsKey() string {
	if p.hostsKey == "" {
		// Every field quoted or a number, so no two placements share a key.
		var b strings.Builder
		con := func(c Constraint) {
			fmt.Fprintf(&b, "%q %d", c.Attr, c.Op)
			for _, v := range c.Values {
				fmt.Fprintf(&b, " %q", v)
			}
			b.WriteByte(';')
		}
		for _, m := range p.Hard {
			con(m.C)
		}
		b.WriteByte('|')
		for i, m := range p.Prefs {
			fmt.Fprintf(&b, "%d ", p.Weights[i])
			con(m.C)
		}
		p.hostsKey = b.String()
	}
	return p.hostsKey
}

var familyRE = regexp.MustCompile(`^[a-z][a-z0-9-]{0,15}$`)

// Compile checks s and compiles it. Errors name the field:
// placement.constraints[1]: ...
func Compile(s Spec) (*Placement, error) {
	p := &Placement{Zone: s.ZoneBalance, MaxPerHost: int(s.MaxPerHost)}
	if len(s.Constraints) > MaxConstraints {
		return nil, fieldErr("placement.constraints", "at most %d", MaxConstraints)
	}
	if len(s.Preferences) > MaxPreferences {
		return nil, fieldErr("placement.preferences", "at most %d", MaxPreferences)
	}
	if len(s.InstanceFamilies) > MaxFamilies {
		return nil, fieldErr("placement.instance_families", "at most %d", MaxFamilies)
	}
	if s.ZoneBalance < ZoneDefault || s.ZoneBalance > ZoneHard {
		return nil, fieldErr("placement.zone_balance", "unknown value %d", s.ZoneBalance)
	}
	if s.UniqueHost {
		if s.MaxPerHost > 1 {
			return nil, fieldErr("placement.unique_host", "contradicts max_per_host %d", s.MaxPerHost)
		}
		p.MaxPerHost = 1
	}
	regexes := 0
	for i, e := range s.Constraints {
		c, err := Parse(e)
		if err != nil {
			return nil, fieldErr("placement.constraints[%d]", "%w", i, err)
		}
		if c.Regex() {
			regexes++
		}
		p.Hard = append(p.Hard, NewMatcher(c))
	}
	if len(s.InstanceFamilies) > 0 {
		for i, f := range s.InstanceFamilies {
			if !familyRE.MatchString(f) {
				return nil, fieldErr("placement.instance_families[%d]", "%w: %q is not an instance family (m5, c6i, p5)", i, ErrSyntax, f)
			}
		}
		p.Hard = append(p.Hard, NewMatcher(Constraint{Attr: AttrInstanceFamily, Op: In, Values: slices.Clone(s.InstanceFamilies)}))
	}
	for i, pr := range s.Preferences {
		c, err := Parse(pr.Constraint)
		if err != nil {
			return nil, fieldErr("placement.preferences[%d].constraint", "%w", i, err)
		}
		if c.Regex() {
			regexes++
		}
		w := int(pr.Weight)
		if w == 0 {
			w = 1
		}
		if w < 0 || w > MaxWeight {
			return nil, fieldErr("placement.preferences[%d].weight", "%d not in 1..%d", i, pr.Weight, MaxWeight)
		}
		p.Prefs = append(p.Prefs, NewMatcher(c))
		p.Weights = append(p.Weights, w)
	}
	if regexes > MaxRegexes {
		return nil, fieldErr("placement", "at most %d regex (=~, !~) constraints, got %d", MaxRegexes, regexes)
	}
	return p, nil
}

// FieldError is a placement error of one field of the job spec.
type FieldError struct {
	Field string // placement.constraints[1]
	Err   error
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Err.Error() }
func (e *FieldError) Unwrap() error { return e.Err }

func fieldErr(field, format string, args ...any) error {
	n := strings.Count(field, "%d")
	idx, args := args[:n], args[n:]
	return &FieldError{Field: fmt.Sprintf(field, idx...), Err: fmt.Errorf(format, args...)}
}

// Allows reports whether every hard constraint holds on a host.
func (p *Placement) Allows(attrs map[string]string) bool {
	for _, m := range p.Hard {
		if !m.Holds(attrs) {
			return false
		}
	}
	return true
}

// Preference is the total weight of the preferences that hold on a host.
func (p *Placement) Preference(attrs map[string]string) int {
	s := 0
	for i, m := range p.Prefs {
		if m.Holds(attrs) {
			s += p.Weights[i]
		}
	}
	return s
}

// Matcher evaluates one constraint with a cache of its answer per
// attribute value: a fleet has few distinct values, so a regex runs once
// per value, not once per host.
type Matcher struct {
	C    Constraint
	memo map[string]bool
}

// NewMatcher wraps c.
func NewMatcher(c Constraint) *Matcher { return &Matcher{C: c, memo: map[string]bool{}} }

// Holds reports whether c holds on a host with these attributes.
func (m *Matcher) Holds(attrs map[string]string) bool {
	v, ok := attrs[m.C.Attr]
	if !ok {
		return m.C.Holds("", false)
	}
	r, seen := m.memo[v]
	if !seen {
		r = m.C.Holds(v, true)
		if len(m.memo) < 4096 {
			m.memo[v] = r
		}
	}
	return r
}

// Exclusion is how many hosts one hard constraint keeps a job from.
type Exclusion struct {
	Constraint Constraint
	// Lacking hosts have no such attribute; Other hosts have a value that fails.
	Lacking, Other int
}

// Total is Lacking + Other.
func (e Exclusion) Total() int { return e.Lacking + e.Other }

// WorstExclusion finds the hard constraint that excludes the most of hosts
// (ok false when none excludes any).
func (p *Placement) WorstExclusion(hosts []map[string]string) (Exclusion, bool) {
	var worst Exclusion
	found := false
	for _, m := range p.Hard {
		e := Exclusion{Constraint: m.C}
		for _, h := range hosts {
			if m.Holds(h) {
				continue
			}
			if _, ok := h[m.C.Attr]; ok {
				e.Other++
			} else {
				e.Lacking++
			}
		}
		if e.Total() > worst.Total() {
			worst, found = e, true
		}
	}
	return worst, found
}

// HostInfo is what the scheduler knows of a host, as attributes come from.
type HostInfo struct {
	InstanceType, Zone, AMI, AgentVersion, Kernel, Cgroup string
	GPUs                                                  int
	GPUModel                                              string
	GPUMemoryMiB                                          int64
	Labels                                                map[string]string
}

// HostAttributes is a host's attribute map; empty fields are left out, so
// constraints on them see a host lacking the attribute.
func HostAttributes(h HostInfo) map[string]string {
	m := make(map[string]string, 10+len(h.Labels))
	set := func(k, v string) {
		if v != "" {
			m[k] = v
		}
	}
	set(AttrInstanceType, h.InstanceType)
	if fam, _, ok := strings.Cut(h.InstanceType, "."); ok {
		set(AttrInstanceFamily, fam)
	}
	set(AttrZone, h.Zone)
	set(AttrAMI, h.AMI)
	set(AttrAgentVersion, h.AgentVersion)
	set(AttrKernel, h.Kernel)
	set(AttrCgroup, h.Cgroup)
	m[AttrGPUCount] = strconv.Itoa(h.GPUs)
	set(AttrGPUModel, h.GPUModel)
	if h.GPUMemoryMiB > 0 {
		m[AttrGPUMemory] = strconv.FormatInt(h.GPUMemoryMiB, 10)
	}
	for k, v := range h.Labels {
		m[LabelPrefix+k] = v
	}
	return m
}
