package vpc

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/titus-agent/titus-agent/pkg/hostcmd"
)

// bridgeTablePrefix starts the name of every local-mode firewall table.
const bridgeTablePrefix = "titus_fw_"

// FirewallTable names the firewall's tables for a local bridge: one per
// bridge, so agents on one machine (as in tests) each keep their own.
func FirewallTable(bridge string) string {
	return bridgeTablePrefix + strings.ReplaceAll(bridge, "-", "_")
}

// nftTable is one nftables table: its family and name.
type nftTable struct{ Family, Name string }

// firewallHost is what the firewall reads and sets on the host besides
// its tables: the nftables tables and links' names RemoveStale reads, the
// bridge port isolation Ensure sets (netns-aware in production, a fake in
// tests).
type firewallHost interface {
	Tables(ctx context.Context) ([]nftTable, error)
	Links() ([]string, error)
	// IsolatePorts sets every task port of the bridge isolated or not; a
	// missing bridge has none.
	IsolatePorts(bridge string, on bool) error
}

// RemoveStale deletes the local-mode firewall tables (titus_fw_<bridge>,
// inet and bridge families) and the local provider's NAT tables
// (titus_<bridge>, ip) whose bridge is gone, and the task source guards
// (titus_guard_<veth>, netdev) whose veth is gone, and returns them as
// "family name". A dead agent's firewall table matches every task veth by
// name ("tt*"), so left behind it filters other agents' tasks by its own
// rules; its NAT table masquerades its CIDR, which a later agent may be
// given, out of every interface but the gone bridge.
// A table whose bridge still exists is another live (or restartable)
// agent's and is left alone: an agent makes its bridge before its table,
// and the tables are listed before the links, so a table made meanwhile
// is never taken for stale. The firewall's own table is never touched.
func (f *Firewall) RemoveStale(ctx context.Context) ([]string, error) {
	tables, err := f.host.Tables(ctx)
	if err != nil {
		return nil, fmt.Errorf("vpc: firewall: list tables: %w", err)
	}
	links, err := f.host.Links()
	if err != nil {
		return nil, fmt.Errorf("vpc: firewall: list links: %w", err)
	}
	live := map[string]bool{}
	for _, l := range links {
		live[FirewallTable(l)] = true
	}
	var script strings.Builder
	var removed []string
	for _, l := range links {
		live["netdev "+GuardTable(l)] = true
		live["ip "+NATTable(l)] = true
	}
	for _, t := range tables {
		firewall := (t.Family == "inet" || t.Family == "bridge") && strings.HasPrefix(t.Name, bridgeTablePrefix) &&
			t.Name != f.cfg.Table && !live[t.Name]
		guard := t.Family == "netdev" && strings.HasPrefix(t.Name, guardTablePrefix) && !live["netdev "+t.Name]
		nat := t.Family == "ip" && strings.HasPrefix(t.Name, natTablePrefix) && !live["ip "+t.Name]
		if !firewall && !guard && !nat {
			continue
		}
		// Declared first: a table another agent removed meanwhile is no error.
		fmt.Fprintf(&script, "table %[1]s %[2]s {}\ndelete table %[1]s %[2]s\n", t.Family, t.Name)
		removed = append(removed, t.Family+" "+t.Name)
	}
	if len(removed) == 0 {
		return nil, nil
	}
	if err := f.nft.Run(ctx, script.String()); err != nil {
		return nil, fmt.Errorf("vpc: firewall: remove stale tables: %w", err)
	}
	slices.Sort(removed)
	return removed, nil
}

// netnsHost reads tables and links in a network namespace (empty: this
// process's).
type netnsHost struct{ ns string }

func (n netnsHost) Tables(ctx context.Context) ([]nftTable, error) {
	args := []string{"nft", "list", "tables"}
	if n.ns != "" {
		args = append([]string{"nsenter", "--net=" + n.ns, "--"}, args...)
	}
	out, err := hostcmd.Run(ctx, args[0], args[1:]...)
	if err != nil {
		return nil, err
	}
	return parseTables(string(out)), nil
}

// parseTables reads `nft list tables`: one "table FAMILY NAME" a line.
func parseTables(out string) []nftTable {
	var ts []nftTable
	for line := range strings.Lines(out) {
		if f := strings.Fields(line); len(f) == 3 && f[0] == "table" {
			ts = append(ts, nftTable{Family: f[1], Name: f[2]})
		}
	}
	return ts
}

func (n netnsHost) Links() ([]string, error) {
	h, err := handleAt(n.ns)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	ls, err := h.LinkList()
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(ls))
	for _, l := range ls {
		names = append(names, l.Attrs().Name)
	}
	return names, nil
}
