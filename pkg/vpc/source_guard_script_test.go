package vpc

import (
	"fmt"
	"net"
	"strings"
)

// guardScript is the source guard in nft's own syntax, the reference
// guardRules is held to (TestGuardNetlinkMatchesScript): it replaces the source guard of a task's host veth: at the
// veth's ingress (what the task sends), before the bridge or the host's
// routing see it, frames pass only from the task's own MAC, IPv4 only from
// its address, ARP only for that address and MAC, IPv6 only from its
// address, its link-local addresses (neighbour discovery) or the
// unspecified address (duplicate address detection); frames of any other
// type (VLAN tags included) are dropped. A task has neither CAP_NET_ADMIN
// (a second address, another MAC) nor CAP_NET_RAW (forged packets): the
// guard holds if it ever has them, or gets past them another way. The
// table is bound to the veth, so it touches no other agent's tasks, needs
// nothing after an agent restart, and goes at teardown (or, orphaned, at
// the next agent start: Firewall.RemoveStale).
func guardScript(hostVeth string, mac net.HardwareAddr, a Allocation) string {
	t := GuardTable(hostVeth)
	v6 := "::, fe80::/10"
	if a.IPv6.IsValid() {
		v6 += ", " + a.IPv6.String()
	}
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	w("table netdev %s {}", t)
	w("delete table netdev %s", t)
	w("table netdev %s {", t)
	w("  counter %s {}", CounterSpoofed)
	w("  chain ingress {")
	w("    type filter hook ingress device %q priority -500; policy accept;", hostVeth)
	if len(mac) > 0 {
		w("    ether saddr != %s counter name %s drop", mac, CounterSpoofed)
		w("    ether type arp arp saddr ether != %s counter name %s drop", mac, CounterSpoofed)
	}
	w("    ether type ip ip saddr != %s counter name %s drop", a.IPv4.Addr(), CounterSpoofed)
	w("    ether type arp arp saddr ip != %s counter name %s drop", a.IPv4.Addr(), CounterSpoofed)
	w("    ether type ip6 ip6 saddr != { %s } counter name %s drop", v6, CounterSpoofed)
	w("    ether type != { ip, arp, ip6 } counter name %s drop", CounterSpoofed)
	w("  }")
	w("}")
	return b.String()
}

// removeGuardScript deletes a guard table; a missing one is no error.
func removeGuardScript(hostVeth string) string {
	t := GuardTable(hostVeth)
	return fmt.Sprintf("table netdev %[1]s {}\ndelete table netdev %[1]s\n", t)
}
