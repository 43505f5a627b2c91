package chaos

import (
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
	"time"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// userReasons are a task's own doing (or its owner's): they do not count
// against the platform. Everything else a Failed or Lost task ends with
// does.
var userReasons = map[string]bool{
	string(task.ReasonNonZeroExit): true, string(task.ReasonOOMKilled): true, string(task.ReasonKilledByUser): true,
	string(task.ReasonImageNotFound): true, string(task.ReasonInvalidSpec): true,
	string(task.ReasonRuntimeLimitExceeded): true, string(task.ReasonHealthCheckFailed): true,
}

// objectives are the soak's SLOs (docs/slo.md, "Under faults").
type objectives struct {
	launchP99     time.Duration
	platformShare float64 // max share of ended tasks Failed/Lost for a platform reason
	availability  float64 // min share of CLI calls that succeeded
}

// report is what the run observed.
type report struct {
	start    time.Time // when the load and the faults began
	seed     uint64
	duration time.Duration
	hosts    int

	jobsByKind      map[string]int
	launched, ended int
	latencies       []time.Duration
	platform        map[string]int // reason → tasks
	platformTasks   int
	userEnded       map[string]int
	apiOK, apiTotal int
	apiByOp         map[string][2]int
	apiErrors       map[string]int
	twice           []string
	lostNoReason    []string
	metaOK, metaAll int
	leaks           map[string][]string
	faults          []fault
	unfinished      int
	stuck           []string
	missed          []string
}

func endedAt(t *schedv1.Task) time.Time {
	if t.Ended == nil {
		return time.Time{}
	}
	return t.Ended.AsTime()
}

func quantile(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[min(len(s)-1, int(math.Ceil(q*float64(len(s))))-1)]
}

// build computes the report from the observer and the load.
func build(o *observer, l *load, r *report) {
	r.jobsByKind, r.platform, r.userEnded, r.apiByOp, r.apiErrors = map[string]int{}, map[string]int{}, map[string]int{}, map[string][2]int{}, map[string]int{}
	l.mu.Lock()
	kinds := map[string]string{}
	for id, j := range l.jobs {
		r.jobsByKind[j.kind]++
		kinds[id] = j.kind
	}
	for _, c := range l.api {
		r.apiTotal++
		v := r.apiByOp[c.op]
		v[1]++
		if c.ok {
			r.apiOK++
			v[0]++
		} else {
			r.apiErrors[c.err]++
		}
		r.apiByOp[c.op] = v
	}
	l.mu.Unlock()

	o.mu.Lock()
	defer o.mu.Unlock()
	completed := map[string]int{} // batch job.index → attempts that completed
	for id, t := range o.tasks {
		if t.Started != nil {
			r.launched++
			if t.Placed != nil {
				r.latencies = append(r.latencies, t.Started.AsTime().Sub(t.Placed.AsTime()))
			}
		}
		if !terminalTask(t.State) {
			continue
		}
		r.ended++
		kind := kinds[t.JobId]
		if kind == "meta" && t.Started != nil {
			r.metaAll++
			if t.State == agentv1.TaskState_TASK_STATE_FINISHED {
				r.metaOK++
			}
		}
		if t.State == agentv1.TaskState_TASK_STATE_FINISHED && kind != "service" {
			completed[fmt.Sprintf("%s.%d", t.JobId, t.Index)]++
		}
		if t.State != agentv1.TaskState_TASK_STATE_FAILED && t.State != agentv1.TaskState_TASK_STATE_LOST {
			continue
		}
		if t.Reason == "" {
			r.lostNoReason = append(r.lostNoReason, id+" "+t.State.String())
			continue
		}
		if userReasons[t.Reason] {
			r.userEnded[t.Reason]++
			continue
		}
		r.platformTasks++
		r.platform[t.State.String()+" "+t.Reason+" "+r.after(endedAt(t))]++
	}
	for id, hosts := range o.seenOn {
		if len(hosts) > 1 {
			r.twice = append(r.twice, fmt.Sprintf("%s on %d hosts", id, len(hosts)))
		}
	}
	for slot, n := range completed {
		if n > 1 {
			r.twice = append(r.twice, fmt.Sprintf("batch slot %s completed %d times", slot, n))
		}
	}
	sort.Strings(r.twice)
	sort.Strings(r.lostNoReason)
}

// after names the fault an end at t most likely follows: the last one
// injected before t and healed at most agentTTL+30s before it.
func (r *report) after(t time.Time) string {
	if r.start.IsZero() || t.IsZero() {
		return "(no fault)"
	}
	off := t.Sub(r.start)
	for i := len(r.faults) - 1; i >= 0; i-- {
		f := r.faults[i]
		if f.injected > 0 && f.injected <= off {
			if off <= f.healed+agentTTL+30*time.Second {
				return fmt.Sprintf("(after %s +%s)", f.kind, f.injected.Round(time.Second))
			}
			break
		}
	}
	return "(no fault)"
}

// check fills r.missed with every objective the run missed.
func (r *report) check(obj objectives) {
	miss := func(format string, a ...any) { r.missed = append(r.missed, fmt.Sprintf(format, a...)) }
	if p99 := quantile(r.latencies, 0.99); p99 > obj.launchP99 {
		miss("launch latency p99 %s > %s", p99.Round(time.Millisecond), obj.launchP99)
	}
	if r.ended > 0 && float64(r.platformTasks)/float64(r.ended) > obj.platformShare {
		miss("platform-failed share %.1f%% > %.1f%%", 100*float64(r.platformTasks)/float64(r.ended), 100*obj.platformShare)
	}
	if r.apiTotal > 0 && float64(r.apiOK)/float64(r.apiTotal) < obj.availability {
		miss("API availability %.2f%% < %.2f%%", 100*float64(r.apiOK)/float64(r.apiTotal), 100*obj.availability)
	}
	if len(r.twice) > 0 {
		miss("tasks launched twice: %d", len(r.twice))
	}
	if len(r.lostNoReason) > 0 {
		miss("tasks failed or lost without a reason: %d", len(r.lostNoReason))
	}
	for kind, l := range r.leaks {
		if len(l) > 0 {
			miss("leaked %s: %d", kind, len(l))
		}
	}
	if r.unfinished > 0 {
		miss("jobs not ended after the drain: %d", r.unfinished)
	}
	if r.launched == 0 {
		miss("no task launched: the soak did nothing")
	}
}

func (r *report) print(w io.Writer) {
	fmt.Fprintf(w, "=== CHAOS SLO REPORT  seed=%d  duration=%s  hosts=%d\n", r.seed, r.duration, r.hosts)
	var kinds []string
	for k, n := range r.jobsByKind {
		kinds = append(kinds, fmt.Sprintf("%s=%d", k, n))
	}
	sort.Strings(kinds)
	fmt.Fprintf(w, "jobs submitted: %s\n", strings.Join(kinds, " "))
	fmt.Fprintf(w, "tasks: launched %d, ended %d\n", r.launched, r.ended)
	fmt.Fprintf(w, "launch latency (placed→running): p50 %s  p99 %s  (n=%d)\n",
		quantile(r.latencies, 0.5).Round(time.Millisecond), quantile(r.latencies, 0.99).Round(time.Millisecond), len(r.latencies))
	share := 0.0
	if r.ended > 0 {
		share = 100 * float64(r.platformTasks) / float64(r.ended)
	}
	fmt.Fprintf(w, "failed/lost for a platform reason: %d of %d ended (%.1f%%)\n", r.platformTasks, r.ended, share)
	printCounts(w, "  ", r.platform)
	fmt.Fprintf(w, "ended by the task or its owner (not counted):\n")
	printCounts(w, "  ", r.userEnded)
	fmt.Fprintf(w, "metadata+credentials tasks: %d of %d succeeded\n", r.metaOK, r.metaAll)
	avail := 100.0
	if r.apiTotal > 0 {
		avail = 100 * float64(r.apiOK) / float64(r.apiTotal)
	}
	fmt.Fprintf(w, "API availability (CLI calls as the user sees them, retries inside): %d of %d (%.2f%%)\n", r.apiOK, r.apiTotal, avail)
	var ops []string
	for op, v := range r.apiByOp {
		ops = append(ops, fmt.Sprintf("%s %d/%d", op, v[0], v[1]))
	}
	sort.Strings(ops)
	fmt.Fprintf(w, "  %s\n", strings.Join(ops, ", "))
	printCounts(w, "  error: ", r.apiErrors)
	fmt.Fprintf(w, "tasks launched twice: %d\n", len(r.twice))
	for _, s := range r.twice {
		fmt.Fprintf(w, "  %s\n", s)
	}
	fmt.Fprintf(w, "failed/lost without a reason: %d\n", len(r.lostNoReason))
	for _, s := range r.lostNoReason {
		fmt.Fprintf(w, "  %s\n", s)
	}
	fmt.Fprintf(w, "leaks after drain:")
	for _, kind := range []string{"moto", "netns", "links", "mounts", "loop devices", "containers", "shims", "cgroups", "etcd keys"} {
		fmt.Fprintf(w, " %s=%d", kind, len(r.leaks[kind]))
	}
	fmt.Fprintln(w)
	for kind, l := range r.leaks {
		for _, s := range l[:min(len(l), 5)] {
			fmt.Fprintf(w, "  %s: %s\n", kind, s)
		}
	}
	for _, s := range r.stuck {
		fmt.Fprintf(w, "  not ended: %s\n", s)
	}
	fmt.Fprintf(w, "faults injected: %d\n", len(r.faults))
	for _, f := range r.faults {
		fmt.Fprintf(w, "  %s\n", f)
	}
	if len(r.missed) == 0 {
		fmt.Fprintf(w, "objectives: all met\n")
	}
	for _, m := range r.missed {
		fmt.Fprintf(w, "OBJECTIVE MISSED: %s\n", m)
	}
}

func printCounts(w io.Writer, prefix string, m map[string]int) {
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(w, "%s%s: %d\n", prefix, k, m[k])
	}
}
