package core

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/titus-agent/titus-agent/pkg/scheduler/constraint"
	"github.com/titus-agent/titus-agent/pkg/scheduler/model"
)

func testAgent(id, az string, cpu, usedCPU int64) *agentState {
	a := newAgent(id)
	a.az, a.capacity, a.used = az, model.Resources{CPU: cpu, Mem: 16384}, model.Resources{CPU: usedCPU}
	a.sess, a.healthy = newSession(), true
	a.instanceType = "m5.large"
	a.setAttributes(model.HostAttributes{})
	return a
}

// withLabels gives a test agent labels (and so label.* attributes).
func withLabels(a *agentState, kv ...string) *agentState {
	a.labels = map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		a.labels[kv[i]] = kv[i+1]
	}
	a.setAttributes(a.attributes)
	return a
}

func testJob(t *testing.T, d demand, pl constraint.Spec) *jobState {
	t.Helper()
	if !pl.Empty() {
		spec := model.JobSpec{Placement: pl, Service: &model.ServiceJob{}}
		if !d.spread {
			spec.Service, spec.Batch = nil, &model.BatchJob{}
		}
		nd, err := newDemand(&spec, d.req, d.sgKey)
		if err != nil {
			t.Fatal(err)
		}
		d = nd
	}
	return &jobState{rec: &model.Job{ID: "j"}, d: d, spread: newSpread()}
}

func TestPlacement(t *testing.T) {
	now := time.Unix(1000, 0)
	small := demand{req: model.Resources{CPU: 1000, Mem: 512}}
	tests := []struct {
		name      string
		agents    func() []*agentState
		d         demand
		placement constraint.Spec
		n         int
		want      []string
	}{
		{name: "bin-packs onto the fuller host", agents: func() []*agentState {
			return []*agentState{testAgent("a", "az1", 8000, 0), testAgent("b", "az1", 8000, 4000)}
		}, d: small, n: 2, want: []string{"b", "b"}},
		{name: "skips hosts without room", agents: func() []*agentState {
			return []*agentState{testAgent("a", "az1", 8000, 7500), testAgent("b", "az1", 8000, 0)}
		}, d: small, n: 1, want: []string{"b"}},
		{name: "skips drained, unhealthy, quarantined and disconnected hosts", agents: func() []*agentState {
			d, u, q, x := testAgent("d", "az1", 8000, 0), testAgent("u", "az1", 8000, 0), testAgent("q", "az1", 8000, 0), testAgent("x", "az1", 8000, 0)
			d.drained, u.healthy, q.quarantinedUntil, x.sess = true, false, now.Add(time.Minute), nil
			return []*agentState{d, u, q, x, testAgent("ok", "az1", 8000, 0)}
		}, d: small, n: 1, want: []string{"ok"}},
		{name: "none fits", agents: func() []*agentState { return []*agentState{testAgent("a", "az1", 500, 0)} }, d: small, n: 1, want: []string{""}},
		{name: "spreads a service over AZs then hosts", agents: func() []*agentState {
			return []*agentState{testAgent("a1", "az1", 8000, 0), testAgent("a2", "az1", 8000, 0), testAgent("b1", "az2", 8000, 0)}
		}, d: demand{req: small.req, spread: true}, n: 4, want: []string{"a1", "b1", "a2", "b1"}},
		{name: "GPUs", agents: func() []*agentState {
			g := testAgent("gpu", "az1", 8000, 0)
			g.capacity.GPUs = 1
			return []*agentState{testAgent("a", "az1", 8000, 4000), g}
		}, d: demand{req: model.Resources{CPU: 100, Mem: 10, GPUs: 1}}, n: 2, want: []string{"gpu", ""}},
		{name: "ENI capacity per security-group set", agents: func() []*agentState {
			a := testAgent("a", "az1", 8000, 0)
			a.enis, a.ipsPerENI = 1, 2
			a.sgSets["sg-other"] = 1
			return []*agentState{a}
		}, d: demand{req: model.Resources{CPU: 10, Mem: 10}, sgKey: "sg-1"}, n: 1, want: []string{""}},
		{name: "a set fills its own ENIs, then takes a free one", agents: func() []*agentState {
			a := testAgent("a", "az1", 8000, 0)
			a.enis, a.ipsPerENI = 2, 2
			a.sgSets["sg-other"] = 1
			return []*agentState{a}
		}, d: demand{req: model.Resources{CPU: 10, Mem: 10}, sgKey: "sg-1"}, n: 3, want: []string{"a", "a", ""}},
		{name: "cooling IPs hold their ENI", agents: func() []*agentState {
			a := testAgent("a", "az1", 8000, 0)
			a.enis, a.ipsPerENI, a.net.cooldown = 1, 2, 10*time.Second
			a.released("sg-other", now.Add(-5*time.Second)) // cooling until now+5s
			b := testAgent("b", "az1", 8000, 0)
			b.enis, b.ipsPerENI, b.net.cooldown = 1, 2, 10*time.Second
			b.released("sg-other", now.Add(-11*time.Second)) // cooled down
			return []*agentState{a, b}
		}, d: demand{req: model.Resources{CPU: 10, Mem: 10}, sgKey: "sg-1"}, n: 3, want: []string{"b", "b", ""}},
		{name: "ENIs the agent reports held count", agents: func() []*agentState {
			a := testAgent("a", "az1", 8000, 0)
			a.enis, a.ipsPerENI = 2, 4
			// Tasks the scheduler does not know (launched at the host) hold both ENIs.
			a.setReport(&model.NetworkUsage{SGSets: []model.SGSetENIs{{SecurityGroups: "sg-local", ENIs: 2, UsedIPs: 2}}}, nil)
			return []*agentState{a}
		}, d: demand{req: model.Resources{CPU: 10, Mem: 10}, sgKey: "sg-1"}, n: 1, want: []string{""}},
		{name: "IPs the agent reports in use or cooling count, plus tasks it did not know", agents: func() []*agentState {
			a := testAgent("a", "az1", 8000, 0)
			a.enis, a.ipsPerENI = 1, 4
			// The agent still holds 2 IPs of ended tasks (tearing down, cooling).
			a.setReport(&model.NetworkUsage{SGSets: []model.SGSetENIs{{SecurityGroups: "sg-1", ENIs: 1, UsedIPs: 1, CoolingIPs: 1}}}, nil)
			return []*agentState{a}
		}, d: demand{req: model.Resources{CPU: 10, Mem: 10}, sgKey: "sg-1"}, n: 3, want: []string{"a", "a", ""}},
		{name: "the default set reported under its name and as the default", agents: func() []*agentState {
			a := testAgent("a", "az1", 8000, 0)
			a.enis, a.ipsPerENI = 2, 4
			a.setReport(&model.NetworkUsage{SGSets: []model.SGSetENIs{{SecurityGroups: "sg-d", Default: true, ENIs: 1, UsedIPs: 4}}}, nil)
			return []*agentState{a}
		}, d: demand{req: model.Resources{CPU: 10, Mem: 10}, sgKey: ""}, n: 5, want: []string{"a", "a", "a", "a", ""}},
		{name: "hard constraint", agents: func() []*agentState {
			return []*agentState{testAgent("a", "az1", 8000, 4000), withLabels(testAgent("b", "az1", 8000, 0), "tier", "gold")}
		}, d: small, placement: constraint.Spec{Constraints: []string{"label.tier = gold"}}, n: 9, want: []string{"b", "b", "b", "b", "b", "b", "b", "b", ""}},
		{name: "soft constraint prefers, never excludes", agents: func() []*agentState {
			return []*agentState{testAgent("a", "az1", 2000, 0), withLabels(testAgent("b", "az1", 2000, 0), "tier", "gold")}
		}, d: small, placement: constraint.Spec{Preferences: []constraint.PreferenceSpec{{Constraint: "label.tier = gold", Weight: 5}}}, n: 5,
			want: []string{"b", "b", "a", "a", ""}},
		{name: "heavier preferences first", agents: func() []*agentState {
			return []*agentState{withLabels(testAgent("a", "az1", 1000, 0), "x", "1"), withLabels(testAgent("b", "az1", 1000, 0), "y", "1"),
				withLabels(testAgent("c", "az1", 1000, 0), "x", "1", "y", "1")}
		}, d: small, placement: constraint.Spec{Preferences: []constraint.PreferenceSpec{{Constraint: "label.x = 1", Weight: 1}, {Constraint: "label.y = 1", Weight: 2}}}, n: 3,
			want: []string{"c", "b", "a"}},
		{name: "maxPerHost", agents: func() []*agentState {
			return []*agentState{testAgent("a", "az1", 8000, 0), testAgent("b", "az1", 8000, 0)}
		}, d: small, placement: constraint.Spec{MaxPerHost: 1}, n: 3, want: []string{"a", "b", ""}},
		{name: "unique host", agents: func() []*agentState {
			return []*agentState{testAgent("a", "az1", 8000, 0)}
		}, d: small, placement: constraint.Spec{UniqueHost: true}, n: 2, want: []string{"a", ""}},
		{name: "hard zone balance waits rather than unbalance", agents: func() []*agentState {
			return []*agentState{testAgent("a", "az1", 8000, 0), testAgent("b", "az2", 1000, 0)}
		}, d: small, placement: constraint.Spec{ZoneBalance: constraint.ZoneHard}, n: 4, want: []string{"a", "b", "a", ""}},
		{name: "soft zone balance on a batch job", agents: func() []*agentState {
			return []*agentState{testAgent("a", "az1", 8000, 0), testAgent("b", "az2", 1000, 0)}
		}, d: small, placement: constraint.Spec{ZoneBalance: constraint.ZoneSoft}, n: 4, want: []string{"a", "b", "a", "a"}},
		{name: "instance families", agents: func() []*agentState {
			c := testAgent("c", "az1", 8000, 0)
			c.instanceType = "c6i.large"
			c.setAttributes(c.attributes)
			return []*agentState{testAgent("a", "az1", 8000, 0), c}
		}, d: small, placement: constraint.Spec{InstanceFamilies: []string{"c6i"}}, n: 1, want: []string{"c"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			agents := tt.agents()
			p := newPlacer(agents, placeSample, 32, now)
			j := testJob(t, tt.d, tt.placement)
			var got []string
			for range tt.n {
				a := p.pick(j)
				if a == nil {
					got = append(got, "")
					continue
				}
				got = append(got, a.id)
				a.used = a.used.Add(j.d.req)
				a.sgSets[j.d.sgKey]++
				if a.net.report != nil {
					a.net.unreported[j.d.sgKey]++ // as attach does
				}
				j.spread.add(a, 1)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("placements (-want +got):\n%s", diff)
			}
		})
	}
}

func TestQueuedReason(t *testing.T) {
	now := time.Unix(1000, 0)
	fleet := func() []*agentState {
		var l []*agentState
		for i := range 5000 {
			a := testAgent(strings.Repeat("h", 1)+string(rune('a'+i%26))+"-"+string(rune('0'+i%10))+thousands(i), "az1", 8000, 0)
			if i < 20 {
				a.setAttributes(model.HostAttributes{GPUs: []model.GPU{{Model: "A100"}}})
			}
			l = append(l, a)
		}
		return l
	}
	small := demand{req: model.Resources{CPU: 1000, Mem: 512}}
	for _, tt := range []struct {
		name      string
		agents    func() []*agentState
		d         demand
		placement constraint.Spec
		place     int
		want      string
	}{
		{name: "the constraint that excludes the most", agents: fleet, d: small,
			placement: constraint.Spec{Constraints: []string{"gpu.model in [H100]", "zone = az1"}},
			want:      "no host with gpu.model in [H100]: 4,980 of 5,000 hosts lack the attribute, 20 of 5,000 hosts have another gpu.model"},
		{name: "constraints that together exclude every host", agents: func() []*agentState {
			return []*agentState{testAgent("a", "az1", 8000, 0), testAgent("b", "az2", 8000, 0), withLabels(testAgent("c", "az2", 8000, 0), "tier", "gold")}
		}, d: small, placement: constraint.Spec{Constraints: []string{"label.tier = gold", "zone = az1"}},
			want: "no host with label.tier = gold: 2 of 3 hosts lack the attribute; with the job's other constraints no host of 3 is left"},
		{name: "max per host", agents: func() []*agentState {
			return []*agentState{testAgent("a", "az1", 8000, 0), testAgent("b", "az2", 8000, 0)}
		}, d: small, placement: constraint.Spec{MaxPerHost: 1}, place: 2,
			want: "maxPerHost 1: 2 of the 2 hosts the job may use already run 1 of its tasks"},
		{name: "no IP", agents: func() []*agentState {
			a := testAgent("a", "az1", 8000, 0)
			a.enis, a.ipsPerENI = 1, 4
			a.sgSets["sg-other"] = 1
			return []*agentState{a}
		}, d: demand{req: small.req, sgKey: "sg-1"},
			want: "no free IP: 1 of the 1 hosts the job may use have room but no IP for security groups [sg-1] (every ENI is held by other security-group sets, or its IPs are in use or cooling down)"},
		{name: "full hosts that match", agents: func() []*agentState {
			return []*agentState{withLabels(testAgent("a", "az1", 500, 0), "tier", "gold"), testAgent("b", "az1", 8000, 0)}
		}, d: small, placement: constraint.Spec{Constraints: []string{"label.tier = gold"}},
			want: "1 of 2 hosts match the job's constraints (label.tier = gold excludes 1); no agent can take a task now"},
		{name: "hard zone balance", agents: func() []*agentState {
			return []*agentState{testAgent("a", "az1", 8000, 0), testAgent("b", "az2", 1000, 0)}
		}, d: small, placement: constraint.Spec{ZoneBalance: constraint.ZoneHard}, place: 3,
			want: "zoneBalance hard: the job's tasks must go to az2 (fewest of its tasks, 1) where no host can take one now; 1 hosts in other zones could"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			agents := tt.agents()
			p := newPlacer(agents, placeSample, 32, now)
			j := testJob(t, tt.d, tt.placement)
			for i := range tt.place {
				a := p.pick(j)
				if a == nil {
					t.Fatalf("placement %d: no host", i)
				}
				a.used = a.used.Add(j.d.req)
				j.spread.add(a, 1)
			}
			if a := p.pick(j); a != nil {
				t.Fatalf("placed on %s, want none", a.id)
			}
			got := p.explain(j, len(agents))
			if !strings.HasPrefix(got, tt.want) {
				t.Errorf("reason\n got %q\nwant %q...", got, tt.want)
			}
		})
	}
}

func TestLaunchingCap(t *testing.T) {
	a := testAgent("a", "az1", 8000, 0)
	a.launching = 2
	p := newPlacer([]*agentState{a}, placeSample, 2, time.Unix(0, 0))
	if got := p.pick(testJob(t, demand{req: model.Resources{CPU: 1}}, constraint.Spec{})); got != nil {
		t.Fatalf("placed on a host at its launching cap")
	}
}

func TestQuarantineAfterPlatformFailures(t *testing.T) {
	a := testAgent("a", "az1", 8000, 0)
	now := time.Unix(1000, 0)
	for i := range 3 {
		a.recordFailure(now.Add(time.Duration(i)*time.Second), 3, time.Minute)
	}
	if a.schedulable(now.Add(3 * time.Second)) {
		t.Fatal("host not quarantined after 3 failures")
	}
	if !a.schedulable(now.Add(2*time.Minute + 3*time.Second)) {
		t.Fatal("quarantine did not end after the window")
	}
}

func TestThousands(t *testing.T) {
	got := []string{thousands(0), thousands(999), thousands(1000), thousands(4980), thousands(1234567), thousands(-1200)}
	if diff := cmp.Diff([]string{"0", "999", "1,000", "4,980", "1,234,567", "-1,200"}, got); diff != "" {
		t.Error(diff)
	}
}
