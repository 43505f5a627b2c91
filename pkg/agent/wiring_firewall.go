package agent

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/titus-agent/titus-agent/pkg/vpc"
)

// FirewallConfig is the agent's packet filter between tasks and the host
// (vpc.Firewall). It is on whenever tasks have their own network.
type FirewallConfig struct {
	// Enabled keeps tasks off the host's services, the link-local ranges
	// and each other; off leaves that to the host's own rules.
	Enabled bool `json:"enabled"`
	// AllowHostPorts are host ports tasks may reach ("tcp/53", "udp/53").
	AllowHostPorts []string `json:"allowHostPorts"`
	// TaskToTask lets tasks on this host reach each other directly.
	TaskToTask bool `json:"taskToTask"`
}

func (f FirewallConfig) check(c *configChecker) {
	for _, p := range f.AllowHostPorts {
		if _, _, err := vpc.ParseHostPort(p); err != nil {
			c.failf("network.firewall.allowHostPorts", "%v", err)
		}
	}
}

// firewallTable names the agent's nftables tables: one per local bridge
// (two agents on one machine, as in tests, each keep their own), one per
// host netns in ec2 mode.
func firewallTable(cfg NetworkConfig) string {
	if cfg.Provider == "local" {
		return vpc.FirewallTable(cfg.Local.Bridge)
	}
	return "titus_fw"
}

// wireFirewall applies the packet filter before any task is (re)started;
// the tables stay when the agent stops, as its tasks do. Then it removes
// the local-mode tables of bridges that no longer exist, which dead agents
// left (with the filter on or off: such a table filters every agent's
// tasks by its rules); failing that is logged, not fatal. isolatePorts
// says whether the data plane isolates each new task's bridge port.
func wireFirewall(ctx context.Context, cfg NetworkConfig, log *slog.Logger) (isolatePorts bool, err error) {
	fc := vpc.FirewallConfig{
		Table:          firewallTable(cfg),
		HostNetNS:      cfg.HostNetNS,
		AllowHostPorts: cfg.Firewall.AllowHostPorts,
		TaskToTask:     cfg.Firewall.TaskToTask,
	}
	if cfg.Provider == "local" {
		fc.Bridge = cfg.Local.Bridge
	}
	fw, err := vpc.NewFirewall(fc)
	if err != nil {
		return false, err
	}
	if !cfg.Firewall.Enabled {
		log.Warn("network.firewall.enabled is false: tasks reach the host's services, link-local addresses and each other unless the host's own rules stop them")
	} else {
		if err := fw.Ensure(ctx); err != nil {
			return false, fmt.Errorf("firewall: %w", err)
		}
		log.Info("host firewall", "table", fw.Table(), "allowHostPorts", fc.AllowHostPorts, "taskToTask", fc.TaskToTask)
	}
	removed, err := fw.RemoveStale(ctx)
	if len(removed) > 0 {
		log.Warn("removed firewall tables of bridges that no longer exist", "tables", removed)
	}
	if err != nil {
		// Not a reason to stay down: the agent's own filter is in place.
		log.Error("stale firewall tables not removed", "err", err)
	}
	return cfg.Firewall.Enabled && fw.IsolatesPorts(), nil
}
