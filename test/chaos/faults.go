package chaos

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// faultKinds are the faults the soak can inject, each switchable by flag.
var faultKinds = []string{"agent-kill", "containerd-kill", "leader-kill", "etcd-kill", "partition", "ec2-throttle", "sts-outage", "disk-full"}

// fault is one scheduled fault and what happened to it.
type fault struct {
	at     time.Duration // after the soak's start
	kind   string
	target int           // host or etcd member index
	hold   time.Duration // until the heal or restart
	note   string
	host   string // the target host's instance id (faults on one host)

	injected, healed time.Duration
}

func (f fault) String() string {
	return fmt.Sprintf("%-15s target %d hold %-5s planned +%-6s injected +%-6s healed +%-6s %s",
		f.kind, f.target, f.hold, f.at.Round(time.Second), f.injected.Round(100*time.Millisecond), f.healed.Round(100*time.Millisecond), f.note)
}

// schedule draws the faults of a run from rng: one every `every` from 10s
// after the start until 25s before the end, cycling through the enabled
// kinds in an order drawn per cycle, each on a drawn target.
func schedule(rng *rand.Rand, enabled []string, d, every time.Duration, hosts int) []fault {
	var out []fault
	if len(enabled) == 0 {
		return nil
	}
	var cycle []string
	for at := 10 * time.Second; at+25*time.Second <= d; at += every {
		if len(cycle) == 0 {
			cycle = append([]string(nil), enabled...)
			rng.Shuffle(len(cycle), func(i, j int) { cycle[i], cycle[j] = cycle[j], cycle[i] })
		}
		f := fault{at: at, kind: cycle[0], hold: 5 * time.Second}
		cycle = cycle[1:]
		switch f.kind {
		case "agent-kill", "containerd-kill", "partition", "disk-full":
			f.target = rng.IntN(hosts)
		case "etcd-kill":
			f.target = rng.IntN(3)
		}
		switch f.kind {
		case "partition":
			// Either a blip the link rides out or one past the agent TTL
			// (the host is lost and its tasks replaced).
			f.hold = []time.Duration{3 * time.Second, agentTTL + 4*time.Second}[rng.IntN(2)]
		case "ec2-throttle", "sts-outage", "disk-full":
			f.hold = 10 * time.Second
		case "containerd-kill":
			f.hold = time.Second
		}
		out = append(out, f)
	}
	return out
}

// parseFaults reads "all" or a comma-separated list of kinds.
func parseFaults(s string) ([]string, error) {
	if s == "all" {
		return faultKinds, nil
	}
	if s == "" || s == "none" {
		return nil, nil
	}
	var out []string
	for _, k := range strings.Split(s, ",") {
		k = strings.TrimSpace(k)
		if !contains(faultKinds, k) {
			return nil, fmt.Errorf("fault %q: want one of %v, all or none", k, faultKinds)
		}
		out = append(out, k)
	}
	return out, nil
}

// inject runs one fault to its heal; it blocks for its hold.
func (fl *fleet) inject(f *fault, start time.Time) {
	since := func() time.Duration { return time.Since(start) }
	switch f.kind {
	case "agent-kill":
		h := fl.hosts[f.target]
		f.host = h.sim.InstanceID
		h.mu.Lock()
		f.injected = since()
		h.agent.Kill9()
		time.Sleep(f.hold)
		h.agent.Start()
		f.healed = since()
		h.mu.Unlock()
		f.note = h.sim.InstanceID
	case "containerd-kill":
		h := fl.hosts[f.target]
		f.host = h.sim.InstanceID
		f.injected = since()
		_ = h.ctd.Proc.Cmd.Process.Kill()
		_ = h.ctd.Proc.Cmd.Wait()
		time.Sleep(f.hold)
		h.ctd.Kill9Restart(fl.t) // already dead: starts it again
		f.healed = since()
		f.note = h.sim.InstanceID
	case "leader-kill":
		r := fl.leader()
		if r == nil {
			f.note = "no leader to kill"
			return
		}
		f.injected = since()
		r.kill9()
		f.note = "killed " + r.addr
		time.Sleep(f.hold)
		r.start(fl.t, fl.cli)
		f.healed = since()
	case "etcd-kill":
		m := fl.etcd[f.target]
		f.injected = since()
		m.kill9()
		time.Sleep(f.hold)
		m.start(fl.t)
		f.healed = since()
		f.note = m.name
	case "partition":
		h := fl.hosts[f.target]
		f.host = h.sim.InstanceID
		f.injected = since()
		if err := fl.partition(h, true); err != nil {
			fl.t.Errorf("partition %s: %v", h.sim.InstanceID, err)
		}
		time.Sleep(f.hold)
		if err := fl.partition(h, false); err != nil {
			fl.t.Errorf("heal the partition of %s: %v", h.sim.InstanceID, err)
		}
		f.healed = since()
		f.note = h.sim.InstanceID + " eth0 down"
	case "ec2-throttle":
		f.injected = since()
		fl.ec2.Throttle("", 0.7)
		time.Sleep(f.hold)
		fl.ec2.Throttle("", 0)
		f.healed = since()
		f.note = "70% of EC2 calls RequestLimitExceeded"
	case "disk-full":
		h := fl.hosts[f.target]
		f.host = h.sim.InstanceID
		filler := filepath.Join(h.state, "filler")
		f.injected = since()
		out, err := exec.Command("dd", "if=/dev/zero", "of="+filler, "bs=64k").CombinedOutput()
		if err == nil || !strings.Contains(string(out), "No space left") {
			f.note = fmt.Sprintf("filling %s: %v %s; ", h.state, err, out)
		}
		time.Sleep(f.hold)
		_ = os.Remove(filler)
		f.healed = since()
		f.note += h.sim.InstanceID + " state disk full"
	case "sts-outage":
		f.injected = since()
		fl.sts.Throttle("", 1)
		time.Sleep(f.hold)
		fl.sts.Throttle("", 0)
		f.healed = since()
		f.note = "every STS call fails"
	}
}
