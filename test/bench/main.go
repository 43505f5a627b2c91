// Command bench measures titus-agent against baselines taken in the same
// run on the same machine, and prints the figures as ratios (`make bench`).
// Each part lives in its own file and registers itself with part().
package main

import (
	"flag"
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"

	"github.com/titus-agent/titus-agent/test/testenv"
)

// benchFlags are the knobs every part may use.
type benchFlags struct {
	n, concurrent int
	// profile, if set, is a directory for the parts that profile (scheduler).
	profile string
}

type benchPart struct {
	order int
	run   func(tb *testenv.Standalone, f benchFlags)
}

var parts = map[string]benchPart{}

// part registers a benchmark part; order decides the running order.
func part(name string, order int, run func(tb *testenv.Standalone, f benchFlags)) {
	parts[name] = benchPart{order: order, run: run}
}

func init() {
	part("launch", 10, func(tb *testenv.Standalone, f benchFlags) { benchLaunch(tb, f.n, f.concurrent) })
	part("disk", 50, func(tb *testenv.Standalone, f benchFlags) { benchDisk(tb, min(f.n, 30)) })
}

func main() {
	n := flag.Int("n", 100, "sequential launches per path")
	conc := flag.Int("concurrent", 20, "concurrent launches")
	names := make([]string, 0, len(parts))
	for name := range parts {
		names = append(names, name)
	}
	sort.Slice(names, func(i, j int) bool { return parts[names[i]].order < parts[names[j]].order })
	only := flag.String("only", "", "run only these parts, comma-separated: "+strings.Join(names, ", "))
	profile := flag.String("profile", "", "write profiles to this directory: CPU, mutex and block of each scheduler placement phase; "+
		"fullstack: the agents' CPU, mutex and block profiles and an execution trace of the sequential launches")
	debug := flag.Bool("debug", false, "keep the agent's debug log in /tmp/titus-bench-agent.log")
	flag.IntVar(&profileSeconds, "profile-seconds", 20, "fullstack: length of the CPU profile (the trace is a quarter of it)")
	flag.Parse()
	if *debug {
		agentLogLevel = "debug"
	}
	profileDir = *profile
	if profileDir != "" {
		if err := os.MkdirAll(profileDir, 0o755); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(2)
		}
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "bench: must run as root")
		os.Exit(2)
	}
	want := strings.Split(*only, ",")
	for _, w := range want {
		if _, ok := parts[w]; w != "" && !ok {
			fmt.Fprintf(os.Stderr, "bench: unknown part %q (have %s)\n", w, strings.Join(names, ", "))
			os.Exit(2)
		}
	}
	tb := &testenv.Standalone{}
	defer testenv.RemoveBuilt() // after the cleanups: they stop what runs the binaries
	defer tb.RunCleanups()
	for _, name := range names {
		if *only != "" && !slices.Contains(want, name) {
			continue
		}
		fmt.Printf("\n== %s ==\n", name)
		parts[name].run(tb, benchFlags{n: *n, concurrent: *conc, profile: *profile})
		tb.RunCleanups()
	}
}
