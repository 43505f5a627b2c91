// Command bench measures titus-agent against baselines taken in the same
// run on the same machine, and prints the figures as ratios (`make bench`).
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/titus-agent/titus-agent/test/testenv"
)

func main() {
	n := flag.Int("n", 100, "sequential launches per path")
	conc := flag.Int("concurrent", 20, "concurrent launches")
	only := flag.String("only", "", "run one part: launch, disk")
	debug := flag.Bool("debug", false, "keep the agent's debug log in /tmp/titus-bench-agent.log")
	flag.Parse()
	if *debug {
		agentLogLevel = "debug"
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "bench: must run as root")
		os.Exit(2)
	}
	tb := &testenv.Standalone{}
	defer tb.RunCleanups()
	if *only == "" || *only == "launch" {
		benchLaunch(tb, *n, *conc)
		tb.RunCleanups()
	}
	if *only == "" || *only == "disk" {
		benchDisk(tb, min(*n, 30))
		tb.RunCleanups()
	}
}
