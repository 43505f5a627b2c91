package vpc

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestGuardScript(t *testing.T) {
	mac := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x0a}
	got := guardScript("tt628b49d96d", mac, withIPv6(ec2Alloc))
	want := `table netdev titus_guard_tt628b49d96d {}
delete table netdev titus_guard_tt628b49d96d
table netdev titus_guard_tt628b49d96d {
  counter spoofed {}
  chain ingress {
    type filter hook ingress device "tt628b49d96d" priority -500; policy accept;
    ether saddr != 02:00:00:00:00:0a counter name spoofed drop
    ether type arp arp saddr ether != 02:00:00:00:00:0a counter name spoofed drop
    ether type ip ip saddr != 198.18.1.10 counter name spoofed drop
    ether type arp arp saddr ip != 198.18.1.10 counter name spoofed drop
    ether type ip6 ip6 saddr != { ::, fe80::/10, 2001:db8::10 } counter name spoofed drop
    ether type != { ip, arp, ip6 } counter name spoofed drop
  }
}
`
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("guard (-want +got):\n%s", diff)
	}
	if local := guardScript("tt1", mac, localAlloc); !strings.Contains(local, "ip6 saddr != { ::, fe80::/10 } ") || !strings.Contains(local, "ip saddr != 198.18.0.10 ") {
		t.Errorf("local guard:\n%s", local)
	}
	if diff := cmp.Diff("table netdev titus_guard_tt1 {}\ndelete table netdev titus_guard_tt1\n", removeGuardScript("tt1")); diff != "" {
		t.Errorf("unguard (-want +got):\n%s", diff)
	}
}

// TestGuardScriptParses checks the guard with nft itself (no changes
// made: --check), on the loopback device, which always exists.
func TestGuardScriptParses(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("nft --check needs root")
	}
	nft, err := exec.LookPath("nft")
	if err != nil {
		t.Skip("no nft")
	}
	for _, a := range []Allocation{ec2Alloc, withIPv6(ec2Alloc), localAlloc} {
		cmd := exec.Command(nft, "--check", "-f", "-")
		s := guardScript("lo", net.HardwareAddr{0x02, 0, 0, 0, 0, 1}, a)
		cmd.Stdin = strings.NewReader(s)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("nft --check: %v\n%s\n%s", err, out, s)
		}
	}
}

// TestDataPlaneSetupGuardFails: a guard that cannot be applied fails the
// setup (the task never runs unguarded).
func TestDataPlaneSetupGuardFails(t *testing.T) {
	d, w := newTestDataPlane(t)
	w.fail["nft"] = os.ErrPermission
	if _, err := d.Setup(context.Background(), ec2Alloc); err == nil || !strings.Contains(err.Error(), "source guard") {
		t.Errorf("setup = %v, want the guard's error", err)
	}
}

func TestGuardInterval(t *testing.T) {
	for _, tc := range []struct {
		prefix string
		want   []string // keys, "end " before an interval's end
	}{
		{"::/128", []string{"::", "end ::1"}},
		{"fe80::/10", []string{"fe80::", "end fec0::"}},
		{"2001:db8::ff/128", []string{"2001:db8::ff", "end 2001:db8::100"}},
		{"2001:db8::ffff:ffff/128", []string{"2001:db8::ffff:ffff", "end 2001:db8::1:0:0"}},
		{"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128", []string{"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"}},
		{"::/0", []string{"::"}},
	} {
		var got []string
		for _, e := range interval(netip.MustParsePrefix(tc.prefix)) {
			s := netip.AddrFrom16([16]byte(e.Key)).String()
			if e.IntervalEnd {
				s = "end " + s
			}
			got = append(got, s)
		}
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("%s (-want +got):\n%s", tc.prefix, diff)
		}
	}
}

// TestGuardNetlinkMatchesScript loads the guard through netlink in one
// namespace and guardScript through nft in another, each on a veth of the
// same name, and wants the same table back from the kernel (nft's own
// listing of it, rules, sets and counter); then Unguard removes it, and
// removing a missing guard is no error. The attack side (a task sending
// from another MAC or address, other frame types) is
// TestAgentTaskCannotSpoofItsSource, on the real data plane.
func TestGuardNetlinkMatchesScript(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("netns and nftables need root")
	}
	const veth = "ttguardtest0"
	mac := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x0a}
	list := func(ns string) string {
		out, err := exec.Command("ip", "netns", "exec", ns, "nft", "list", "table", "netdev", GuardTable(veth)).CombinedOutput()
		if err != nil {
			return fmt.Sprintf("(none: %v %s)", err, strings.TrimSpace(string(out)))
		}
		return string(out)
	}
	newNS := func(suffix string) string {
		name := fmt.Sprintf("titus-guard-%d-%s", os.Getpid(), suffix)
		if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
			t.Fatalf("netns: %v %s", err, out)
		}
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
		if out, err := exec.Command("ip", "-n", name, "link", "add", veth, "type", "veth", "peer", "name", "ttguardtest1").CombinedOutput(); err != nil {
			t.Fatalf("veth: %v %s", err, out)
		}
		return name
	}
	byNFT, byNetlink := newNS("nft"), newNS("nl")
	g := netlinkGuards{ns: "/run/netns/" + byNetlink}
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		mac  net.HardwareAddr
		a    Allocation
	}{
		{"ec2", mac, ec2Alloc},
		{"ec2 IPv6", mac, withIPv6(ec2Alloc)},
		{"local, no MAC", nil, localAlloc},
	} {
		if err := (netnsNFT{ns: "/run/netns/" + byNFT}).Run(ctx, guardScript(veth, tc.mac, tc.a)); err != nil {
			t.Fatalf("%s: nft: %v", tc.name, err)
		}
		// Twice: the second replaces the first.
		for range 2 {
			if err := g.Guard(ctx, veth, tc.mac, tc.a); err != nil {
				t.Fatalf("%s: netlink guard: %v", tc.name, err)
			}
		}
		want, got := list(byNFT), list(byNetlink)
		if !strings.Contains(want, "chain ingress") {
			t.Fatalf("%s: nft's table:\n%s", tc.name, want)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("%s: table (-nft +netlink):\n%s", tc.name, diff)
		}
	}
	for range 2 {
		if err := g.Unguard(ctx, veth); err != nil {
			t.Fatalf("unguard: %v", err)
		}
	}
	if got := list(byNetlink); !strings.HasPrefix(got, "(none") {
		t.Errorf("after unguard:\n%s", got)
	}
	// An address that is not IPv4 is refused before anything is sent.
	bad := ec2Alloc
	bad.IPv4 = netip.MustParsePrefix("2001:db8::1/128")
	if err := g.Guard(ctx, veth, mac, bad); err == nil {
		t.Errorf("guard of an IPv6 'IPv4' address: no error")
	}
	if got := list(byNetlink); !strings.HasPrefix(got, "(none") {
		t.Errorf("after a refused guard:\n%s", got)
	}
}
