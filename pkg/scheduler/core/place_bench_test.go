package core

import (
	"log/slog"
	"strconv"
	"testing"
	"time"

	"github.com/titus-agent/titus-agent/pkg/scheduler/constraint"
	"github.com/titus-agent/titus-agent/pkg/scheduler/model"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// The fleet of test/schedload: 5,000 m5.2xlarge hosts in 3 zones, one in
// five on an old kernel, every other one "gold".
const (
	benchAgents = 5000
	benchAZs    = 3
	benchTasks  = 100_000
	benchJob    = 1000
)

// benchCore is a core with the sim fleet registered and no store: the
// benchmark drives planning (planRound) and settles each round as a
// committed, running launch would, without etcd.
func benchCore(b *testing.B) *Core {
	b.Helper()
	c, err := New(Config{}, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	c.jobs, c.tasks, c.agents = map[string]*jobState{}, map[string]*taskState{}, map[string]*agentState{}
	c.q, c.live, c.dirty = newQueues(), live{}, map[*jobState]struct{}{}
	c.gstate = map[string]*groupState{}
	for name, g := range c.groups {
		c.gstate[name] = &groupState{cfg: g}
	}
	for i := range benchAgents {
		a := newAgent("sim-" + strconv.Itoa(i))
		a.instanceType, a.az = "m5.2xlarge", "az-"+strconv.Itoa(i%benchAZs)
		a.labels = map[string]string{"tier": "silver"}
		if i%2 == 0 {
			a.labels["tier"] = "gold"
		}
		kernel := "6.1.0-13-cloud-amd64"
		if i%5 == 4 {
			kernel = "5.10.0-26-cloud-amd64"
		}
		a.capacity = model.Resources{CPU: 8000, Mem: 32768, Disk: 100_000, Net: 10_000}
		a.enis, a.ipsPerENI = 4, 15
		a.setAttributes(model.HostAttributes{Kernel: kernel, AgentVersion: "1.0.0", CgroupMode: "v2"})
		a.sess, a.healthy, a.lastSeen = newSession(), true, time.Now()
		c.agents[a.id] = a
	}
	c.hostGen++
	return c
}

// benchSubmit queues n tasks in batch jobs of up to benchJob, each with pl.
func benchSubmit(b *testing.B, c *Core, n int, pl constraint.Spec) {
	b.Helper()
	now := time.Now()
	for k := 0; n > 0; k++ {
		size := min(n, benchJob)
		n -= size
		spec := model.JobSpec{OwnerEmail: "load@example.com", Application: "load", CapacityGroup: model.DefaultGroup,
			Batch: &model.BatchJob{Size: uint32(size)}, Placement: pl.Clone(),
			Task: &task.Spec{Image: "registry.example/load:1", Command: []string{"sleep", "inf"},
				Resources: task.Resources{CPUMillicores: 100, MemoryMiB: 128}, Network: task.NetworkRequest{SecurityGroupIDs: []string{"sg-1"}}}}
		tmpl, err := ValidateJob(spec)
		if err != nil {
			b.Fatal(err)
		}
		rec := &model.Job{ID: "job-" + strconv.Itoa(k), Spec: spec, State: model.JobAccepted, Created: now.Add(time.Duration(k)), Revision: 1}
		j := c.newJobState(rec, tmpl)
		c.jobs[rec.ID] = j
		for _, sl := range j.slots {
			c.q.enqueue(j, sl, now, now)
		}
	}
}

// benchPlaceAll plans rounds until every queued task is placed, settling
// each round as if committed and reported running (so launch caps never bind).
func benchPlaceAll(b *testing.B, c *Core, want int) {
	b.Helper()
	done, rounds := 0, 0
	var prev []placed
	settle := func(batch []placed) {
		for _, p := range batch {
			t := p.t
			t.committing = false
			t.launching = false
			t.agent.launching--
			t.rec.State = task.Running
		}
	}
	for done < want {
		batch, _ := c.planRound()
		rounds++
		if len(batch) == 0 && len(prev) == 0 {
			b.Fatalf("placed %d of %d", done, want)
		}
		settle(prev) // launches are reported running a round later
		prev = batch
		done += len(batch)
	}
	settle(prev)
	b.Logf("rounds %d", rounds)
}

var benchConstrained = constraint.Spec{
	Constraints: []string{"kernel >= 6.1"},
	Preferences: []constraint.PreferenceSpec{{Constraint: "label.tier = gold", Weight: 10}},
	ZoneBalance: constraint.ZoneHard,
}

// BenchmarkPlace places the load run's 100,000 tasks on 5,000 hosts
// without and with constraints (hard kernel, soft label, hard zone
// balance): the constrained run goes second on the same fleet, as in
// `go run ./test/bench -only scheduler`. Run with
//
//	go test -run '^$' -bench Place -benchtime 1x -cpuprofile cpu.out ./pkg/scheduler/core/
func BenchmarkPlace(b *testing.B) {
	for _, constrained := range []bool{false, true} {
		name := "unconstrained"
		if constrained {
			name = "constrained"
		}
		b.Run(name, func(b *testing.B) {
			var took time.Duration
			for range b.N {
				b.StopTimer()
				c := benchCore(b)
				if constrained {
					benchSubmit(b, c, benchTasks, constraint.Spec{})
					benchPlaceAll(b, c, benchTasks)
				}
				pl := constraint.Spec{}
				if constrained {
					pl = benchConstrained
				}
				benchSubmit(b, c, benchTasks, pl)
				b.StartTimer()
				start := time.Now()
				benchPlaceAll(b, c, benchTasks)
				took += time.Since(start)
			}
			b.ReportMetric(float64(benchTasks*b.N)/took.Seconds(), "placements/s")
		})
	}
}
