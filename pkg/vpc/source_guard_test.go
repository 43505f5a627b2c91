package vpc

import (
	"context"
	"net"
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
