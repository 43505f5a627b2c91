package main

import (
	"fmt"
	"io"
	"time"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
)

// printLaunchSteps prints the timed launch steps the transitions carry:
// when each began and ended counted from the first transition (Accepted),
// and how long it took. Steps of one stage overlap. Nothing is printed for
// a task without steps (re-adopted, or launched by an older agent).
func printLaunchSteps(out io.Writer, trs []*agentv1.Transition) {
	if len(trs) == 0 {
		return
	}
	t0 := trs[0].GetTime().AsTime()
	var tw *table
	for _, tr := range trs {
		for _, s := range tr.GetSteps() {
			if tw == nil {
				fmt.Fprintln(out, "Launch steps (from accepted):")
				tw = newTable(out, "  STEP", "BEGAN", "READY", "TOOK")
			}
			start := s.GetStart().AsTime()
			took := s.GetTook().AsDuration()
			tookS := msec(took)
			if s.GetFailed() {
				tookS += " failed"
			}
			tw.row("  "+s.GetName(), offset(start.Sub(t0)), offset(start.Add(took).Sub(t0)), tookS)
		}
		if tw != nil && len(tr.GetSteps()) > 0 {
			tw.row("  -> "+stateName(tr.GetState()), "", offset(tr.GetTime().AsTime().Sub(t0)))
		}
	}
	if tw != nil {
		tw.flush()
	}
}

func offset(d time.Duration) string { return "+" + msec(d) }

func msec(d time.Duration) string { return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond)) }
