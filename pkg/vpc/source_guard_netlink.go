package vpc

import (
	"context"
	"fmt"
	"net"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// sourceGuards applies and removes the tasks' source guards (nftables
// netlink in production, a recording fake in unit tests).
type sourceGuards interface {
	// Guard replaces the source guard of hostVeth in one transaction.
	Guard(ctx context.Context, hostVeth string, mac net.HardwareAddr, a Allocation) error
	// Unguard deletes it; a missing guard is no error.
	Unguard(ctx context.Context, hostVeth string) error
}

// netlinkGuards programs the source guards through nftables netlink in the
// host netns (ns; empty: this process's), one transaction per call, so a
// launch spawns no nft process (each spawn cost ~50 ms on a loaded host).
//
// The guard, at the veth's ingress (what the task sends), before the bridge
// or the host's routing see it: frames pass only from the task's own MAC,
// IPv4 only from its address, ARP only for that address and MAC, IPv6 only
// from its address, its link-local addresses (neighbour discovery) or the
// unspecified address (duplicate address detection); frames of any other
// type (VLAN tags included) are dropped and counted. A task has neither
// CAP_NET_ADMIN (a second address, another MAC) nor CAP_NET_RAW (forged
// packets): the guard holds if it ever has them, or gets past them another
// way. The table is bound to the veth, so it touches no other agent's
// tasks, needs nothing after an agent restart, and goes at teardown (or,
// orphaned, at the next agent start: Firewall.RemoveStale). In nft's own
// syntax it is guardScript (source_guard_script_test.go), and the test
// TestGuardNetlinkMatchesScript holds the two to the same kernel table.
type netlinkGuards struct{ ns string }

func (g netlinkGuards) Guard(_ context.Context, hostVeth string, mac net.HardwareAddr, a Allocation) error {
	return g.apply(func(c *nftables.Conn) error { return guardRules(c, hostVeth, mac, a) })
}

func (g netlinkGuards) Unguard(_ context.Context, hostVeth string) error {
	return g.apply(func(c *nftables.Conn) error {
		t := &nftables.Table{Family: nftables.TableFamilyNetdev, Name: GuardTable(hostVeth)}
		c.AddTable(t) // so that deleting a missing table is no error
		c.DelTable(t)
		return nil
	})
}

// apply queues what build adds on a connection in the host netns and
// commits it as one transaction.
func (g netlinkGuards) apply(build func(c *nftables.Conn) error) error {
	var opts []nftables.ConnOption
	if g.ns != "" {
		ns, err := netns.GetFromPath(g.ns)
		if err != nil {
			return fmt.Errorf("netns %s: %w", g.ns, err)
		}
		defer ns.Close()
		opts = append(opts, nftables.WithNetNSFd(int(ns)))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	if err := build(c); err != nil {
		return err
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	return nil
}

// Ethernet types the guard knows, as on the wire.
var (
	etherIPv4 = []byte{0x08, 0x00}
	etherARP  = []byte{0x08, 0x06}
	etherIPv6 = []byte{0x86, 0xdd}
)

// guardRules queues the guard of hostVeth on c: the table replaced (added,
// deleted, added again, all in c's one transaction), its counter, the
// ingress chain and its rules, each as nft itself compiles the rule of
// guardScript.
func guardRules(c *nftables.Conn, hostVeth string, mac net.HardwareAddr, a Allocation) error {
	if !a.IPv4.Addr().Is4() {
		return fmt.Errorf("guard %s: IPv4 address %v", hostVeth, a.IPv4)
	}
	t := &nftables.Table{Family: nftables.TableFamilyNetdev, Name: GuardTable(hostVeth)}
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)
	c.AddObj(&nftables.CounterObj{Table: t, Name: CounterSpoofed})
	accept := nftables.ChainPolicyAccept
	ch := c.AddChain(&nftables.Chain{Name: "ingress", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookIngress, Priority: nftables.ChainPriorityRef(-500), Policy: &accept, Device: hostVeth})
	rule := func(match ...expr.Any) {
		// In the netdev family nft first checks that the frame is
		// Ethernet before reading its header.
		exprs := []expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIFTYPE, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint16(unix.ARPHRD_ETHER)},
		}
		exprs = append(exprs, match...)
		exprs = append(exprs, &expr.Objref{Type: int(nftables.ObjTypeCounter), Name: CounterSpoofed}, &expr.Verdict{Kind: expr.VerdictDrop})
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: exprs})
	}
	load := func(base expr.PayloadBase, offset, n uint32) expr.Any {
		return &expr.Payload{DestRegister: 1, Base: base, Offset: offset, Len: n}
	}
	cmp := func(op expr.CmpOp, b []byte) expr.Any { return &expr.Cmp{Op: op, Register: 1, Data: b} }
	etherType := func(b []byte) []expr.Any {
		return []expr.Any{load(expr.PayloadBaseLLHeader, 12, 2), cmp(expr.CmpOpEq, b)}
	}
	ip := a.IPv4.Addr().As4()
	if len(mac) > 0 {
		// ether saddr != MAC
		rule(load(expr.PayloadBaseLLHeader, 6, 6), cmp(expr.CmpOpNeq, mac))
		// ether type arp arp saddr ether != MAC
		rule(append(etherType(etherARP), load(expr.PayloadBaseNetworkHeader, 8, 6), cmp(expr.CmpOpNeq, mac))...)
	}
	// ether type ip ip saddr != IP
	rule(append(etherType(etherIPv4), load(expr.PayloadBaseNetworkHeader, 12, 4), cmp(expr.CmpOpNeq, ip[:]))...)
	// ether type arp arp saddr ip != IP
	rule(append(etherType(etherARP), load(expr.PayloadBaseNetworkHeader, 14, 4), cmp(expr.CmpOpNeq, ip[:]))...)

	// ether type ip6 ip6 saddr != { ::, fe80::/10, IPv6 }
	v6 := &nftables.Set{Table: t, ID: 1, Name: "__set%d", Anonymous: true, Constant: true, Interval: true, KeyType: nftables.TypeIP6Addr}
	v6Elems := append(interval(netip.MustParsePrefix("::/128")), interval(netip.MustParsePrefix("fe80::/10"))...)
	if a.IPv6.IsValid() {
		v6Elems = append(v6Elems, interval(netip.PrefixFrom(a.IPv6, 128))...)
	}
	if err := c.AddSet(v6, v6Elems); err != nil {
		return fmt.Errorf("guard %s: %w", hostVeth, err)
	}
	rule(append(etherType(etherIPv6), load(expr.PayloadBaseNetworkHeader, 8, 16),
		&expr.Lookup{SourceRegister: 1, SetID: v6.ID, SetName: v6.Name, Invert: true})...)

	// ether type != { ip, arp, ip6 }
	types := &nftables.Set{Table: t, ID: 2, Name: "__set%d", Anonymous: true, Constant: true, KeyType: nftables.TypeEtherType}
	if err := c.AddSet(types, []nftables.SetElement{{Key: etherIPv4}, {Key: etherARP}, {Key: etherIPv6}}); err != nil {
		return fmt.Errorf("guard %s: %w", hostVeth, err)
	}
	rule(load(expr.PayloadBaseLLHeader, 12, 2), &expr.Lookup{SourceRegister: 1, SetID: types.ID, SetName: types.Name, Invert: true})
	return nil
}

// interval is an IPv6 prefix as the two elements of an interval set: its
// first address and, flagged as the end, the first address after it (none
// when the prefix reaches the end of the address space).
func interval(p netip.Prefix) []nftables.SetElement {
	p = p.Masked()
	first := p.Addr()
	b := first.As16()
	// Add 1 at the prefix's last bit: the address after its range.
	bit := p.Bits() - 1
	for ; bit >= 0; bit-- {
		mask := byte(0x80 >> (bit % 8))
		if b[bit/8]&mask == 0 {
			b[bit/8] |= mask
			break
		}
		b[bit/8] &^= mask
	}
	f := first.As16()
	elems := []nftables.SetElement{{Key: f[:]}}
	if bit >= 0 {
		elems = append(elems, nftables.SetElement{Key: b[:], IntervalEnd: true})
	}
	return elems
}
