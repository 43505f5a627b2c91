package vpc

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/titus-agent/titus-agent/pkg/hostcmd"
)

// FirewallConfig says what tasks may reach on and through the host.
type FirewallConfig struct {
	// Table names the agent's nftables tables (an inet one, and a bridge
	// one in local mode); "titus_fw" if empty.
	Table string
	// HostNetNS is the host's netns path; empty = this process's.
	HostNetNS string
	// Bridge is the local provider's bridge; empty in ec2 mode.
	Bridge string
	// AllowHostPorts are the host's ports tasks may open connections to,
	// as "tcp/53" or "udp/53"; nothing else on the host answers them.
	AllowHostPorts []string
	// TaskToTask lets tasks on this host reach each other directly (across
	// the local bridge, or routed between their veths in ec2 mode).
	TaskToTask bool
}

// ParseHostPort checks a "tcp/N" or "udp/N" entry of AllowHostPorts.
func ParseHostPort(s string) (proto string, port int, err error) {
	proto, p, ok := strings.Cut(s, "/")
	port, perr := strconv.Atoi(p)
	if !ok || (proto != "tcp" && proto != "udp") || perr != nil || port < 1 || port > 65535 {
		return "", 0, fmt.Errorf("host port %q: want tcp/N or udp/N with N in 1-65535", s)
	}
	return proto, port, nil
}

// Firewall is the agent's own nftables table on the host: traffic from a
// task's interfaces to the host is dropped (but for AllowHostPorts and
// replies to what the host opened), nothing from a task is forwarded to a
// link-local address (169.254.0.0/16: the cloud's IMDS, DNS, time and the
// like) or to fd00:ec2::/32 (their IPv6 side) even with metadata off,
// tasks do not reach each other on the host unless TaskToTask, and task
// traffic is forwarded only out of the host's own interfaces; anything
// else from a task is dropped. The task's metadata service is not
// affected: it listens inside the task's own netns.
//
// Between two tasks on the local bridge no IP hook sees the frames; there
// the bridge's own port isolation keeps them apart (IsolatesPorts; the
// data plane isolates each new port, Ensure every existing one). It holds
// on this agent's bridge only: an nft bridge rule would match every task
// port on the machine by name (this kernel has no meta ibrname), other
// agents' bridges whose tasks may meet among them.
//
// Ensure replaces the tables in one nft transaction, so re-applying it at
// agent start leaves no moment without rules. The tables outlive the
// agent (tasks outlive it too); Remove takes them away.
type Firewall struct {
	cfg  FirewallConfig
	nft  nftRunner
	host firewallHost
}

// taskVethPrefix starts the name of every task's host veth (HostVeth).
const taskVethPrefix = "tt"

// Counters the firewall keeps, one per kind of refused packet.
const (
	CounterTaskToHost      = "task_to_host"
	CounterTaskToLinkLocal = "task_to_linklocal"
	CounterTaskToTask      = "task_to_task"
)

// NewFirewall checks the config; call Ensure to apply it.
func NewFirewall(cfg FirewallConfig) (*Firewall, error) {
	if cfg.Table == "" {
		cfg.Table = "titus_fw"
	}
	for _, p := range cfg.AllowHostPorts {
		if _, _, err := ParseHostPort(p); err != nil {
			return nil, fmt.Errorf("vpc: firewall: %w", err)
		}
	}
	return &Firewall{cfg: cfg, nft: netnsNFT{ns: cfg.HostNetNS}, host: netnsHost{ns: cfg.HostNetNS}}, nil
}

// Table is the name of the firewall's tables.
func (f *Firewall) Table() string { return f.cfg.Table }

// Ensure applies the rules, replacing any earlier version atomically.
func (f *Firewall) Ensure(ctx context.Context) error {
	if err := f.nft.Run(ctx, f.script()); err != nil {
		return fmt.Errorf("vpc: firewall: %w", err)
	}
	if f.cfg.Bridge == "" {
		return nil
	}
	if err := f.host.IsolatePorts(f.cfg.Bridge, f.IsolatesPorts()); err != nil {
		return fmt.Errorf("vpc: firewall: bridge %s: %w", f.cfg.Bridge, err)
	}
	return nil
}

// IsolatesPorts says whether the task ports of the local bridge are to be
// isolated from each other: in local mode, unless TaskToTask.
func (f *Firewall) IsolatesPorts() bool { return f.cfg.Bridge != "" && !f.cfg.TaskToTask }

// Remove deletes the firewall's tables (agent uninstall, tests).
func (f *Firewall) Remove(ctx context.Context) error {
	script := fmt.Sprintf("table inet %[1]s {}\ndelete table inet %[1]s\n", f.cfg.Table)
	if f.cfg.Bridge != "" {
		script += fmt.Sprintf("table bridge %[1]s {}\ndelete table bridge %[1]s\n", f.cfg.Table)
	}
	if err := f.nft.Run(ctx, script); err != nil {
		return fmt.Errorf("vpc: firewall: %w", err)
	}
	return nil
}

// taskIfaces are the host-side names of task interfaces: every task veth,
// and the local bridge (where bridged tasks' traffic enters the host).
func (f *Firewall) taskIfaces() []string {
	out := []string{strconv.Quote(taskVethPrefix + "*")}
	if f.cfg.Bridge != "" {
		out = append(out, strconv.Quote(f.cfg.Bridge))
	}
	return out
}

func (f *Firewall) script() string {
	var b strings.Builder
	t := f.cfg.Table
	w := func(format string, a ...any) { fmt.Fprintf(&b, format+"\n", a...) }
	// Declaring then deleting makes the delete safe when the table is
	// absent; the whole file is one transaction.
	w("table inet %s {}", t)
	w("delete table inet %s", t)
	if f.cfg.Bridge != "" {
		// Earlier versions kept tasks apart with a bridge table.
		w("table bridge %s {}", t)
		w("delete table bridge %s", t)
	}
	w("table inet %s {", t)
	for _, c := range []string{CounterTaskToHost, CounterTaskToLinkLocal, CounterTaskToTask} {
		w("  counter %s {}", c)
	}
	jumps := func(dir, chain string) {
		for _, i := range f.taskIfaces() {
			w("    %sname %s jump %s", dir, i, chain)
		}
	}
	// Before routing: whatever the routes say, a task's packet to a
	// link-local or the cloud's IPv6 service range goes nowhere.
	w("  chain prerouting {")
	w("    type filter hook prerouting priority raw; policy accept;")
	jumps("iif", "from_task")
	w("  }")
	w("  chain from_task {")
	w("    ip daddr 169.254.0.0/16 counter name %s drop", CounterTaskToLinkLocal)
	w("    ip6 daddr fd00:ec2::/32 counter name %s drop", CounterTaskToLinkLocal)
	w("  }")
	// To the host itself: replies, neighbour discovery and the allowed
	// ports only.
	w("  chain input {")
	w("    type filter hook input priority filter - 10; policy accept;")
	jumps("iif", "task_to_host")
	w("  }")
	w("  chain task_to_host {")
	w("    ct state established,related accept")
	w("    icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept")
	for _, p := range f.cfg.AllowHostPorts {
		proto, port, _ := ParseHostPort(p)
		w("    %s dport %d accept", proto, port)
	}
	w("    counter name %s drop", CounterTaskToHost)
	w("  }")
	// Through the host.
	w("  chain forward {")
	w("    type filter hook forward priority filter - 10; policy accept;")
	jumps("iif", "task_out")
	jumps("oif", "task_in")
	w("  }")
	w("  chain task_out {")
	w("    ip daddr 169.254.0.0/16 counter name %s drop", CounterTaskToLinkLocal)
	w("    ip6 daddr { fd00:ec2::/32, fe80::/10 } counter name %s drop", CounterTaskToLinkLocal)
	for _, i := range f.taskIfaces() {
		w("    oifname %s goto task_to_task", i)
	}
	w("    meta nfproto { ipv4, ipv6 } accept")
	w("    drop")
	w("  }")
	w("  chain task_to_task {")
	if f.cfg.TaskToTask {
		w("    accept")
	} else {
		w("    counter name %s drop", CounterTaskToTask)
	}
	w("  }")
	w("  chain task_in {")
	w("    ct state established,related accept")
	if f.cfg.Bridge != "" {
		// Local mode: nothing outside the host opens connections to tasks
		// behind the NAT.
		w("    iifname != %s drop", strings.Join(f.taskIfaces(), " iifname != "))
	}
	w("  }")
	w("}")
	return b.String()
}

// netnsNFT runs nft in a network namespace (nsenter) or in this process's.
type netnsNFT struct{ ns string }

func (n netnsNFT) Run(ctx context.Context, script string) error {
	if n.ns == "" {
		return execNFT{}.Run(ctx, script)
	}
	_, err := hostcmd.RunInput(ctx, strings.NewReader(script), "nsenter", "--net="+n.ns, "--", "nft", "-f", "-")
	return err
}
