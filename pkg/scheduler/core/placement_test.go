package core

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/titus-agent/titus-agent/pkg/scheduler/model"
)

func testAgent(id, az string, cpu, usedCPU int64) *agentState {
	a := newAgent(id)
	a.az, a.capacity, a.used = az, model.Resources{CPU: cpu, Mem: 16384}, model.Resources{CPU: usedCPU}
	a.sess, a.healthy = newSession(), true
	return a
}

func TestPlacement(t *testing.T) {
	now := time.Unix(1000, 0)
	small := demand{req: model.Resources{CPU: 1000, Mem: 512}}
	tests := []struct {
		name   string
		agents func() []*agentState
		d      demand
		n      int
		want   []string
	}{
		{"bin-packs onto the fuller host", func() []*agentState {
			return []*agentState{testAgent("a", "az1", 8000, 0), testAgent("b", "az1", 8000, 4000)}
		}, small, 2, []string{"b", "b"}},
		{"skips hosts without room", func() []*agentState {
			return []*agentState{testAgent("a", "az1", 8000, 7500), testAgent("b", "az1", 8000, 0)}
		}, small, 1, []string{"b"}},
		{"skips drained, unhealthy, quarantined and disconnected hosts", func() []*agentState {
			d, u, q, x := testAgent("d", "az1", 8000, 0), testAgent("u", "az1", 8000, 0), testAgent("q", "az1", 8000, 0), testAgent("x", "az1", 8000, 0)
			d.drained, u.healthy, q.quarantinedUntil, x.sess = true, false, now.Add(time.Minute), nil
			return []*agentState{d, u, q, x, testAgent("ok", "az1", 8000, 0)}
		}, small, 1, []string{"ok"}},
		{"none fits", func() []*agentState { return []*agentState{testAgent("a", "az1", 500, 0)} }, small, 1, []string{""}},
		{"spreads a service over AZs then hosts", func() []*agentState {
			return []*agentState{testAgent("a1", "az1", 8000, 0), testAgent("a2", "az1", 8000, 0), testAgent("b1", "az2", 8000, 0)}
		}, demand{req: small.req, spread: true}, 4, []string{"a1", "b1", "a2", "b1"}},
		{"GPUs", func() []*agentState {
			g := testAgent("gpu", "az1", 8000, 0)
			g.capacity.GPUs = 1
			return []*agentState{testAgent("a", "az1", 8000, 4000), g}
		}, demand{req: model.Resources{CPU: 100, Mem: 10, GPUs: 1}}, 2, []string{"gpu", ""}},
		{"ENI capacity per security-group set", func() []*agentState {
			a := testAgent("a", "az1", 8000, 0)
			a.enis, a.ipsPerENI = 1, 2
			a.sgSets["sg-other"], a.enisUsed = 1, 1
			return []*agentState{a}
		}, demand{req: model.Resources{CPU: 10, Mem: 10}, sgKey: "sg-1"}, 1, []string{""}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			agents := tt.agents()
			p := newPlacer(agents, placeSample, 32, now)
			sp := newSpread()
			var got []string
			for range tt.n {
				a := p.pick(tt.d, sp)
				if a == nil {
					got = append(got, "")
					continue
				}
				got = append(got, a.id)
				a.used = a.used.Add(tt.d.req)
				sp.add(a, 1)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("placements (-want +got):\n%s", diff)
			}
		})
	}
}

func TestLaunchingCap(t *testing.T) {
	a := testAgent("a", "az1", 8000, 0)
	a.launching = 2
	p := newPlacer([]*agentState{a}, placeSample, 2, time.Unix(0, 0))
	if got := p.pick(demand{req: model.Resources{CPU: 1}}, newSpread()); got != nil {
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
