package vpc

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestNewPoolKey(t *testing.T) {
	for _, tc := range []struct {
		name   string
		groups []string
		want   PoolKey
	}{
		{"sorted", []string{"sg-b", "sg-a"}, PoolKey{"subnet-a", "sg-a,sg-b"}},
		{"dedup", []string{"sg-a", "sg-b", "sg-a"}, PoolKey{"subnet-a", "sg-a,sg-b"}},
		{"one", []string{"sg-a"}, PoolKey{"subnet-a", "sg-a"}},
		{"none", nil, PoolKey{"subnet-a", ""}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, NewPoolKey("subnet-a", tc.groups)); diff != "" {
				t.Errorf("key (-want +got):\n%s", diff)
			}
		})
	}
	if got := NewPoolKey("s", []string{"b", "a"}).GroupIDs(); !cmp.Equal(got, []string{"a", "b"}) {
		t.Errorf("GroupIDs = %v", got)
	}
}

func TestLimitsTaskIPs(t *testing.T) {
	for _, tc := range []struct {
		l    Limits
		want int
	}{
		{Limits{3, 4}, 6},
		{Limits{3, 10}, 18},
		{Limits{1, 10}, 0},
		{Limits{2, 1}, 0},
	} {
		if got := tc.l.TaskIPs(); got != tc.want {
			t.Errorf("%+v.TaskIPs() = %d, want %d", tc.l, got, tc.want)
		}
	}
}

var (
	keyA  = NewPoolKey("subnet-a", []string{"sg-1"})
	keyA2 = NewPoolKey("subnet-a", []string{"sg-2"})
	keyB  = NewPoolKey("subnet-b", []string{"sg-1"})
	t0    = time.Unix(1_000_000, 0)
)

// eni builds pool state: ips maps address → task ("" free, "~" cooling).
func eni(id string, dev int, key PoolKey, ips map[string]string) *eniState {
	e := &eniState{ID: id, DeviceIndex: dev, SubnetID: key.SubnetID, Key: key, IPs: map[string]*ipSlot{}}
	for ip, task := range ips {
		s := &ipSlot{TaskID: task}
		if task == "~" {
			s.TaskID, s.CoolUntil = "", t0.Add(time.Hour)
		}
		e.IPs[ip] = s
	}
	return e
}

func testPool(enis ...*eniState) *pool {
	p := newPool(PoolConfig{WarmIPs: 2, ReleaseAfter: time.Minute, ReuseCooldown: 10 * time.Second}, Limits{MaxENIs: 3, IPv4PerENI: 4}, keyA)
	for _, e := range enis {
		p.enis[e.ID] = e
		for ip, s := range e.IPs {
			if s.TaskID != "" {
				p.tasks[s.TaskID] = taskIP{ENI: e.ID, IP: ip, Key: e.Key}
			}
		}
	}
	return p
}

func TestPlanGrow(t *testing.T) {
	for _, tc := range []struct {
		name   string
		enis   []*eniState
		key    PoolKey
		need   int
		demand bool
		want   step
	}{
		{"empty host creates", nil, keyA, 3, false, step{Kind: stepCreate, Key: keyA, Count: 3}},
		{"create capped per ENI", nil, keyA, 9, false, step{Kind: stepCreate, Key: keyA, Count: 3}},
		{"assign on ENI with room", []*eniState{eni("e1", 1, keyA, map[string]string{"198.18.1.5": "t1"})}, keyA, 5, false,
			step{Kind: stepAssign, Key: keyA, ENI: "e1", Count: 2}},
		{"nothing needed", nil, keyA, 0, true, step{}},
		{"full ENI, free slot: create", []*eniState{eni("e1", 1, keyA, map[string]string{"1": "t1", "2": "t2", "3": "t3"})}, keyA, 1, false,
			step{Kind: stepCreate, Key: keyA, Count: 1}},
		{"instance full, background never steals", []*eniState{
			eni("e1", 1, keyA, map[string]string{"1": "t1", "2": "t2", "3": "t3"}),
			eni("e2", 2, keyA2, map[string]string{"4": ""}),
		}, keyA, 1, false, step{}},
		{"instance full, launch regroups idle ENI of same subnet", []*eniState{
			eni("e1", 1, keyA, map[string]string{"1": "t1", "2": "t2", "3": "t3"}),
			eni("e2", 2, keyA2, map[string]string{"4": ""}),
		}, keyA, 1, true, step{Kind: stepRegroup, Key: keyA, ENI: "e2"}},
		{"instance full, idle ENI in other subnet is deleted", []*eniState{
			eni("e1", 1, keyA, map[string]string{"1": "t1", "2": "t2", "3": "t3"}),
			eni("e2", 2, keyB, map[string]string{"4": "~"}),
		}, keyA, 1, true, step{Kind: stepDelete, Key: keyB, ENI: "e2"}},
		{"instance full, all busy: no capacity", []*eniState{
			eni("e1", 1, keyA, map[string]string{"1": "t1", "2": "t2", "3": "t3"}),
			eni("e2", 2, keyA2, map[string]string{"4": "t4"}),
		}, keyA, 1, true, step{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := testPool(tc.enis...)
			got := p.planGrow(tc.key, tc.need, tc.demand, t0)
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("planGrow (-want +got):\n%s", diff)
			}
		})
	}
}

func TestPlanShrink(t *testing.T) {
	for _, tc := range []struct {
		name string
		enis []*eniState
		key  PoolKey
		// first is the plan when the surplus is first seen, later the plan
		// after ReleaseAfter.
		first, later []step
	}{
		{"at target", []*eniState{eni("e1", 1, keyA, map[string]string{"1": "t1", "2": "", "3": ""})}, keyA, nil, nil},
		{"surplus IPs unassigned from the top", []*eniState{
			eni("e1", 1, keyA, map[string]string{"198.18.1.4": "t1", "198.18.1.5": "", "198.18.1.6": ""}),
			eni("e2", 2, keyA, map[string]string{"198.18.1.7": "t2", "198.18.1.8": "", "198.18.1.9": ""}),
		}, keyA, nil, []step{{Kind: stepUnassign, Key: keyA, ENI: "e2", IPs: []string{"198.18.1.8", "198.18.1.9"}}}},
		{"idle ENI deleted whole", []*eniState{
			eni("e1", 1, keyA, map[string]string{"1": "t1", "2": "", "3": ""}),
			eni("e2", 2, keyA, map[string]string{"4": "", "5": ""}),
		}, keyA, nil, []step{{Kind: stepDelete, Key: keyA, ENI: "e2"}}},
		{"unused key released entirely", []*eniState{
			eni("e2", 2, keyA2, map[string]string{"4": "", "5": ""}),
		}, keyA2, nil, []step{{Kind: stepDelete, Key: keyA2, ENI: "e2"}}},
		{"cooling IPs are kept", []*eniState{
			eni("e2", 2, keyA2, map[string]string{"4": "~", "5": ""}),
		}, keyA2, nil, []step{{Kind: stepUnassign, Key: keyA2, ENI: "e2", IPs: []string{"5"}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := testPool(tc.enis...)
			if diff := cmp.Diff(tc.first, p.planShrink(tc.key, t0)); diff != "" {
				t.Errorf("first planShrink (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.later, p.planShrink(tc.key, t0.Add(time.Minute+time.Second))); diff != "" {
				t.Errorf("later planShrink (-want +got):\n%s", diff)
			}
		})
	}
}

func TestTakeReleaseCooldown(t *testing.T) {
	p := testPool(eni("e1", 1, keyA, map[string]string{"198.18.1.5": "", "198.18.1.6": ""}))
	a, ok := p.take(keyA, "t1", t0, false)
	if !ok || a.IP != "198.18.1.5" {
		t.Fatalf("take t1 = %+v %v", a, ok)
	}
	if again, _ := p.take(keyA, "t1", t0, false); again != a {
		t.Fatalf("take is not idempotent: %+v vs %+v", again, a)
	}
	if _, ok := p.release("t1", t0); !ok {
		t.Fatal("release t1 failed")
	}
	b, ok := p.take(keyA, "t2", t0.Add(time.Second), false)
	if !ok || b.IP != "198.18.1.6" {
		t.Fatalf("take t2 during cool-down = %+v %v, want the other IP", b, ok)
	}
	if _, ok := p.take(keyA, "t3", t0.Add(time.Second), false); ok {
		t.Fatal("took a cooling IP")
	}
	c, ok := p.take(keyA, "t3", t0.Add(11*time.Second), false)
	if !ok || c.IP != "198.18.1.5" {
		t.Fatalf("take t3 after cool-down = %+v %v", c, ok)
	}
	if _, ok := p.take(keyB, "t4", t0, false); ok {
		t.Fatal("took an IP of another key")
	}
}

func TestTargets(t *testing.T) {
	p := newPool(PoolConfig{WarmIPs: 3, MinDefaultIPs: 1, ReleaseAfter: time.Minute}, Limits{3, 4}, keyA)
	for _, tc := range []struct {
		key  PoolKey
		at   time.Time
		want int
	}{
		{keyA, t0, 1},
		{keyA2, t0, 0},
	} {
		if got := p.target(tc.key, tc.at); got != tc.want {
			t.Errorf("target(%s) = %d, want %d", tc.key, got, tc.want)
		}
	}
	p.lastUsed[keyA2] = t0
	if got := p.target(keyA2, t0.Add(30*time.Second)); got != 3 {
		t.Errorf("recently used key target = %d, want 3", got)
	}
	if got := p.target(keyA2, t0.Add(2*time.Minute)); got != 0 {
		t.Errorf("idle key target = %d, want 0", got)
	}
}

func TestFullJitter(t *testing.T) {
	j := fullJitter{base: 100 * time.Millisecond, max: time.Second}
	for attempt, cap := range []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond, time.Second, time.Second} {
		for range 50 {
			d, _ := j.BackoffDelay(attempt, nil)
			if d < 0 || d > cap {
				t.Fatalf("attempt %d: delay %s outside [0, %s]", attempt, d, cap)
			}
		}
	}
	if d, _ := j.BackoffDelay(200, nil); d > time.Second {
		t.Fatalf("huge attempt: %s", d)
	}
}
