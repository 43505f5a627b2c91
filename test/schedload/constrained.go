package schedload

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
	"github.com/titus-agent/titus-agent/pkg/scheduler"
)

// The simulated fleet's attributes: one host in five runs an old kernel
// (the hard constraint excludes it), every other host is "gold" (the soft
// constraint prefers it).
func simKernel(i int) string {
	if i%5 == 4 {
		return "5.10.0-26-cloud-amd64"
	}
	return "6.1.0-13-cloud-amd64"
}

func simLabels(i int) map[string]string {
	if i%2 == 0 {
		return map[string]string{"tier": "gold"}
	}
	return map[string]string{"tier": "silver"}
}

const (
	hardConstraint = "kernel >= 6.1"
	softConstraint = "label.tier = gold"
)

// runConstrained submits o.Tasks more tasks in jobs of up to 1000, each with
// the hard constraint, the soft one (weight 10) and zoneBalance hard, waits
// for all to be placed, then checks every placement against the fleet.
func runConstrained(ctx context.Context, api schedv1.SchedulerClient, s *scheduler.Scheduler, o Options, placedAll func() error) (ConstrainedReport, error) {
	rep := ConstrainedReport{Tasks: o.Tasks,
		Constraints: fmt.Sprintf("hard %q, soft %q (weight 10), zoneBalance hard", hardConstraint, softConstraint)}
	placement := &schedv1.Placement{Constraints: []string{hardConstraint},
		Preferences: []*schedv1.Preference{{Constraint: softConstraint, Weight: 10}}, ZoneBalance: schedv1.ZoneBalance_ZONE_BALANCE_HARD}
	var jobs []string
	base := s.Stats().Placed
	start, cpu0 := time.Now(), processCPU()
	for left := o.Tasks; left > 0; left -= 1000 {
		n := min(left, 1000)
		resp, err := api.SubmitJob(ctx, &schedv1.SubmitJobRequest{Spec: &schedv1.JobSpec{
			OwnerEmail: "load@example.com", Application: "load", Placement: placement,
			Kind: &schedv1.JobSpec_Batch{Batch: &schedv1.BatchJob{Size: uint32(n)}},
			Task: &agentv1.TaskSpec{Image: "registry.example/load:1", Command: []string{"sleep", "inf"},
				Resources: &agentv1.Resources{CpuMillicores: 100, MemoryMib: 128}, Network: &agentv1.NetworkRequest{SecurityGroupIds: []string{"sg-1"}}},
		}})
		if err != nil {
			return rep, fmt.Errorf("constrained submit: %w", err)
		}
		jobs = append(jobs, resp.JobId)
	}
	if err := waitFor(ctx, func() bool { return s.Stats().Placed-base >= int64(o.Tasks) }); err != nil {
		return rep, fmt.Errorf("constrained: placed %d of %d: %w", s.Stats().Placed-base, o.Tasks, err)
	}
	rep.PlaceDuration, rep.PlaceCPU = time.Since(start), processCPU()-cpu0
	rep.Placed = int(s.Stats().Placed - base)
	rep.PlacementsPerSec = float64(rep.Placed) / rep.PlaceDuration.Seconds()
	if err := placedAll(); err != nil {
		return rep, err
	}

	// Every placement against the fleet's attributes.
	preferred, total := 0, 0
	for _, id := range jobs {
		perAZ := map[string]int{}
		token := ""
		for {
			resp, err := api.ListTasks(ctx, &schedv1.ListTasksRequest{JobId: id, PageSize: 1000, PageToken: token}, grpc.MaxCallRecvMsgSize(64<<20))
			if err != nil {
				return rep, fmt.Errorf("list tasks: %w", err)
			}
			for _, t := range resp.Tasks {
				i, err := strconv.Atoi(strings.TrimPrefix(t.AgentId, "sim-"))
				if err != nil {
					return rep, fmt.Errorf("task %s on unknown agent %q", t.Id, t.AgentId)
				}
				if simKernel(i) < "6.1" {
					return rep, fmt.Errorf("task %s on %s, whose kernel %s breaks %q", t.Id, t.AgentId, simKernel(i), hardConstraint)
				}
				if simLabels(i)["tier"] == "gold" {
					preferred++
				}
				total++
				perAZ[t.Az]++
			}
			if token = resp.NextPageToken; token == "" {
				break
			}
		}
		lo, hi := -1, 0
		for az := range o.AZs {
			n := perAZ["az-"+strconv.Itoa(az)]
			if lo < 0 || n < lo {
				lo = n
			}
			hi = max(hi, n)
		}
		if hi-lo > 1 {
			return rep, fmt.Errorf("job %s unbalanced across zones: %v", id, perAZ)
		}
	}
	rep.Checked = total == rep.Placed
	if total > 0 {
		rep.Preferred = float64(preferred) / float64(total)
	}
	return rep, nil
}
