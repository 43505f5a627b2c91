package vpc

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
)

func newTestDataPlane(t *testing.T) (*DataPlane, *fakeNet) {
	t.Helper()
	w := newFakeNet()
	cfg := DataPlaneConfig{NetNSDir: "/run/test/netns", FilesDir: t.TempDir(), Bridge: "tbr0", DNS: []string{"198.18.0.2"}, MTU: 9001}
	return &DataPlane{cfg: cfg, host: w.host(), ns: w, sysctl: w.sysctl, guard: w}, w
}

var (
	ec2Alloc = Allocation{
		TaskID: "t1", Provider: ProviderEC2, IPv4: netip.MustParsePrefix("198.18.1.10/24"), Gateway: netip.MustParseAddr("198.18.1.1"),
		ENIID: "eni-1", MAC: "0a:00:00:00:00:01", DeviceIndex: 1, RouteTable: 1001,
	}
	localAlloc = Allocation{TaskID: "t1", Provider: ProviderLocal, IPv4: netip.MustParsePrefix("198.18.0.10/24"), Gateway: netip.MustParseAddr("198.18.0.1")}
)

func withIPv6(a Allocation) Allocation {
	a.IPv6 = netip.MustParseAddr("2001:db8::10")
	return a
}

func TestDataPlaneSetup(t *testing.T) {
	for _, tc := range []struct {
		name    string
		prepare func(d *DataPlane, w *fakeNet)
		alloc   Allocation
		want    []string
	}{
		{
			name:  "ec2: /32 behind a link-local gateway, host route and policy rule",
			alloc: ec2Alloc,
			want: []string{
				"Ensure /run/test/netns/t1",
				"host LinkAdd veth tt628b49d96d mtu 9001 peer eth0 in task",
				"task LinkSetUp lo",
				"task AddrReplace eth0 198.18.1.10/32 flags 0",
				"task LinkSetUp eth0",
				"task RouteReplace dev eth0 dst 169.254.1.1/32 scope link",
				"task NeighSet dev eth0 169.254.1.1 lladdr 02:00:00:00:00:02 permanent=true",
				"task RouteReplace dev eth0 dst 0.0.0.0/0 via 169.254.1.1",
				"host LinkSetUp tt628b49d96d",
				"host RouteReplace dev tt628b49d96d dst 198.18.1.10/32 scope link",
				"host RuleAdd from 198.18.1.10/32 table 1001 prio 20000",
				"sysctl /proc/sys/net/ipv4/conf/tt628b49d96d/proxy_arp=1",
			},
		},
		{
			name:  "ec2 with IPv6",
			alloc: withIPv6(ec2Alloc),
			want: []string{
				"Ensure /run/test/netns/t1",
				"host LinkAdd veth tt628b49d96d mtu 9001 peer eth0 in task",
				"task LinkSetUp lo",
				"task AddrReplace eth0 198.18.1.10/32 flags 0",
				"task LinkSetUp eth0",
				"task RouteReplace dev eth0 dst 169.254.1.1/32 scope link",
				"task NeighSet dev eth0 169.254.1.1 lladdr 02:00:00:00:00:02 permanent=true",
				"task RouteReplace dev eth0 dst 0.0.0.0/0 via 169.254.1.1",
				"task AddrReplace eth0 2001:db8::10/128 flags 2",
				"task NeighSet dev eth0 fe80::1 lladdr 02:00:00:00:00:02 permanent=true",
				"task RouteReplace dev eth0 dst ::/0 via fe80::1 onlink",
				"host LinkSetUp tt628b49d96d",
				"host RouteReplace dev tt628b49d96d dst 198.18.1.10/32 scope link",
				"host RuleAdd from 198.18.1.10/32 table 1001 prio 20000",
				"host RuleAdd from 2001:db8::10/128 table 1001 prio 20000",
				"host RouteReplace dev tt628b49d96d dst 2001:db8::10/128 scope link",
				"sysctl /proc/sys/net/ipv4/conf/tt628b49d96d/proxy_arp=1",
			},
		},
		{
			name: "local: subnet address, bridge port",
			prepare: func(_ *DataPlane, w *fakeNet) {
				w.host().addLink(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "tbr0"}})
			},
			alloc: localAlloc,
			want: []string{
				"Ensure /run/test/netns/t1",
				"host LinkAdd veth tt628b49d96d mtu 9001 peer eth0 in task",
				"task LinkSetUp lo",
				"task AddrReplace eth0 198.18.0.10/24 flags 0",
				"task LinkSetUp eth0",
				"task RouteReplace dev eth0 dst 0.0.0.0/0 via 198.18.0.1",
				"host LinkSetMaster tt628b49d96d tbr0",
				"host LinkSetIsolated tt628b49d96d false",
				"host LinkSetUp tt628b49d96d",
			},
		},
		{
			name: "local, tasks kept apart: the port is isolated before it is up",
			prepare: func(d *DataPlane, w *fakeNet) {
				d.cfg.IsolatePorts = true
				w.host().addLink(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "tbr0"}})
			},
			alloc: localAlloc,
			want: []string{
				"Ensure /run/test/netns/t1",
				"host LinkAdd veth tt628b49d96d mtu 9001 peer eth0 in task",
				"task LinkSetUp lo",
				"task AddrReplace eth0 198.18.0.10/24 flags 0",
				"task LinkSetUp eth0",
				"task RouteReplace dev eth0 dst 0.0.0.0/0 via 198.18.0.1",
				"host LinkSetMaster tt628b49d96d tbr0",
				"host LinkSetIsolated tt628b49d96d true",
				"host LinkSetUp tt628b49d96d",
			},
		},
		{
			name: "again: the netns and veth are reused, the addresses replaced",
			prepare: func(d *DataPlane, w *fakeNet) {
				if _, err := d.Setup(context.Background(), ec2Alloc); err != nil {
					panic(err)
				}
				w.log = nil
			},
			alloc: ec2Alloc,
			want: []string{
				"task LinkSetUp lo",
				"task AddrReplace eth0 198.18.1.10/32 flags 0",
				"task LinkSetUp eth0",
				"task RouteReplace dev eth0 dst 169.254.1.1/32 scope link",
				"task NeighSet dev eth0 169.254.1.1 lladdr 02:00:00:00:00:02 permanent=true",
				"task RouteReplace dev eth0 dst 0.0.0.0/0 via 169.254.1.1",
				"host LinkSetUp tt628b49d96d",
				"host RouteReplace dev tt628b49d96d dst 198.18.1.10/32 scope link",
				"host RuleAdd from 198.18.1.10/32 table 1001 prio 20000",
				"sysctl /proc/sys/net/ipv4/conf/tt628b49d96d/proxy_arp=1",
			},
		},
		{
			// A crash before the allocation record was written: the
			// resumed launch got another address; the one wired before
			// (which the restarted agent may give to another task) goes,
			// from the task and from the host's route via its veth.
			name: "resumed with another address: the stale one is dropped first",
			prepare: func(d *DataPlane, w *fakeNet) {
				stale := withIPv6(ec2Alloc)
				stale.IPv4 = netip.MustParsePrefix("198.18.1.99/24")
				stale.IPv6 = netip.MustParseAddr("2001:db8::99")
				if _, err := d.Setup(context.Background(), stale); err != nil {
					panic(err)
				}
				w.log = nil
			},
			alloc: ec2Alloc,
			want: []string{
				"task AddrDel eth0 198.18.1.99/32",
				"host RouteDel dev tt628b49d96d dst 198.18.1.99/32",
				"task AddrDel eth0 2001:db8::99/128",
				"host RouteDel dev tt628b49d96d dst 2001:db8::99/128",
				"task LinkSetUp lo",
				"task AddrReplace eth0 198.18.1.10/32 flags 0",
				"task LinkSetUp eth0",
				"task RouteReplace dev eth0 dst 169.254.1.1/32 scope link",
				"task NeighSet dev eth0 169.254.1.1 lladdr 02:00:00:00:00:02 permanent=true",
				"task RouteReplace dev eth0 dst 0.0.0.0/0 via 169.254.1.1",
				"host LinkSetUp tt628b49d96d",
				"host RouteReplace dev tt628b49d96d dst 198.18.1.10/32 scope link",
				"host RuleAdd from 198.18.1.10/32 table 1001 prio 20000",
				"sysctl /proc/sys/net/ipv4/conf/tt628b49d96d/proxy_arp=1",
			},
		},
		{
			name: "resumed with the same address and a link-local one: nothing dropped",
			prepare: func(d *DataPlane, w *fakeNet) {
				if _, err := d.Setup(context.Background(), ec2Alloc); err != nil {
					panic(err)
				}
				task := w.nss[w.paths["/run/test/netns/t1"]]
				eth, _ := task.LinkByName("eth0")
				task.addAddr(eth, &netlink.Addr{IPNet: prefixToIPNet(netip.MustParsePrefix("fe80::12/64"))})
				w.log = nil
			},
			alloc: ec2Alloc,
			want: []string{
				"task LinkSetUp lo",
				"task AddrReplace eth0 198.18.1.10/32 flags 0",
				"task LinkSetUp eth0",
				"task RouteReplace dev eth0 dst 169.254.1.1/32 scope link",
				"task NeighSet dev eth0 169.254.1.1 lladdr 02:00:00:00:00:02 permanent=true",
				"task RouteReplace dev eth0 dst 0.0.0.0/0 via 169.254.1.1",
				"host LinkSetUp tt628b49d96d",
				"host RouteReplace dev tt628b49d96d dst 198.18.1.10/32 scope link",
				"host RuleAdd from 198.18.1.10/32 table 1001 prio 20000",
				"sysctl /proc/sys/net/ipv4/conf/tt628b49d96d/proxy_arp=1",
			},
		},
		{
			name: "local, resumed with another address: dropped from the task",
			prepare: func(d *DataPlane, w *fakeNet) {
				w.host().addLink(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "tbr0"}})
				stale := localAlloc
				stale.IPv4 = netip.MustParsePrefix("198.18.0.99/24")
				if _, err := d.Setup(context.Background(), stale); err != nil {
					panic(err)
				}
				w.log = nil
			},
			alloc: localAlloc,
			want: []string{
				"task AddrDel eth0 198.18.0.99/24",
				"task LinkSetUp lo",
				"task AddrReplace eth0 198.18.0.10/24 flags 0",
				"task LinkSetUp eth0",
				"task RouteReplace dev eth0 dst 0.0.0.0/0 via 198.18.0.1",
				"host LinkSetMaster tt628b49d96d tbr0",
				"host LinkSetIsolated tt628b49d96d false",
				"host LinkSetUp tt628b49d96d",
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, w := newTestDataPlane(t)
			if tc.prepare != nil {
				tc.prepare(d, w)
			}
			w.nft = nil
			if _, err := d.Setup(context.Background(), tc.alloc); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, w.log); diff != "" {
				t.Errorf("netlink calls (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff([]string{"guard titus_guard_tt628b49d96d"}, w.nft); diff != "" {
				t.Errorf("nft (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDataPlaneSetupErrors(t *testing.T) {
	boom := errors.New("boom")
	for _, tc := range []struct {
		name  string
		fail  string
		alloc Allocation
		want  string
	}{
		{"veth", "LinkAdd", ec2Alloc, "vpc: add veth: boom"},
		{"task address", "AddrReplace", ec2Alloc, "vpc: task address: boom"},
		{"policy rule", "RuleAdd", ec2Alloc, "vpc: policy rule: boom"},
		{"bridge missing", "", localAlloc, "vpc: bridge tbr0: Link not found"},
		{"bridge port", "LinkSetMaster", localAlloc, "vpc: attach veth to bridge: boom"},
		{"port isolation", "LinkSetIsolated", localAlloc, "vpc: bridge port isolation: boom"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, w := newTestDataPlane(t)
			if tc.name != "bridge missing" {
				w.host().addLink(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "tbr0"}})
			}
			if tc.fail != "" {
				w.fail[tc.fail] = boom
			}
			_, err := d.Setup(context.Background(), tc.alloc)
			if err == nil || err.Error() != tc.want {
				t.Fatalf("Setup err = %v, want %q", err, tc.want)
			}
			if tc.fail != "" && !errors.Is(err, boom) {
				t.Errorf("%v does not wrap the netlink error", err)
			}
		})
	}
}

func TestDataPlaneTeardown(t *testing.T) {
	for _, tc := range []struct {
		name  string
		alloc func() *Allocation
		want  []string
	}{
		{"ec2: rules, veth, netns", func() *Allocation { a := withIPv6(ec2Alloc); return &a }, []string{
			"host RuleDel from 198.18.1.10/32 table 1001 prio 20000",
			"host RuleDel from 2001:db8::10/128 table 1001 prio 20000",
			"host LinkDel tt628b49d96d",
			"Remove /run/test/netns/t1",
		}},
		{"local: no rules", func() *Allocation { a := localAlloc; return &a }, []string{
			"host LinkDel tt628b49d96d",
			"Remove /run/test/netns/t1",
		}},
		{"from names alone (no record)", func() *Allocation { return nil }, []string{
			"host LinkDel tt628b49d96d",
			"Remove /run/test/netns/t1",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, w := newTestDataPlane(t)
			w.host().addLink(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "tbr0"}})
			a := tc.alloc()
			setup := ec2Alloc
			if a != nil {
				setup = *a
			}
			if _, err := d.Setup(context.Background(), setup); err != nil {
				t.Fatal(err)
			}
			w.log, w.nft = nil, nil
			if err := d.Teardown(context.Background(), "t1", a); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, w.log); diff != "" {
				t.Errorf("netlink calls (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff([]string{"unguard titus_guard_tt628b49d96d"}, w.nft); diff != "" {
				t.Errorf("nft (-want +got):\n%s", diff)
			}
			// Twice is safe: nothing left to delete but the (idempotent) netns removal.
			w.log = nil
			if err := d.Teardown(context.Background(), "t1", a); err != nil {
				t.Fatal(err)
			}
			var again []string
			for _, l := range tc.want {
				if l[:5] == "host " && a != nil && a.routed() && l[5:12] == "RuleDel" {
					again = append(again, l) // rule deletes are asked again; ENOENT is fine
				}
			}
			again = append(again, "Remove /run/test/netns/t1")
			if diff := cmp.Diff(again, w.log); diff != "" {
				t.Errorf("second teardown (-want +got):\n%s", diff)
			}
		})
	}
}

// TestDataPlaneLeftovers: only our own task veths and rules are reported,
// never the host's links (an ENI, a bridge, another program's veth) or
// rules at other priorities.
func TestDataPlaneLeftovers(t *testing.T) {
	d, w := newTestDataPlane(t)
	h := w.host()
	for _, name := range []string{HostVeth("keep"), HostVeth("gone"), peerVeth("gone2"), "veth1234567", "ttyfoo"} {
		h.addLink(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}})
	}
	h.addLink(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: HostVeth("eni-looking")}}) // not a veth
	h.addLink(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "tbr0"}})
	for _, r := range []struct {
		src  string
		prio int
		fam  int
	}{
		{"198.18.1.10/32", taskRulePriority, netlink.FAMILY_V4},
		{"198.18.1.11/32", taskRulePriority, netlink.FAMILY_V4},
		{"198.18.1.12/32", 100, netlink.FAMILY_V4},
		{"2001:db8::11/128", taskRulePriority, netlink.FAMILY_V6},
	} {
		rule := netlink.NewRule()
		rule.Src, rule.Priority, rule.Family, rule.Table = prefixToIPNet(netip.MustParsePrefix(r.src)), r.prio, r.fam, 1001
		h.rules = append(h.rules, *rule)
	}
	_, links := d.Leftovers(map[string]bool{"keep": true})
	if diff := cmp.Diff([]string{HostVeth("gone"), peerVeth("gone2")}, links); diff != "" {
		t.Errorf("leftover links (-want +got):\n%s", diff)
	}
	var srcs []string
	for _, r := range d.LeftoverRules(map[netip.Addr]bool{netip.MustParseAddr("198.18.1.10"): true}) {
		srcs = append(srcs, r.Src.String())
	}
	if diff := cmp.Diff([]string{"198.18.1.11/32", "2001:db8::11/128"}, srcs); diff != "" {
		t.Errorf("leftover rules (-want +got):\n%s", diff)
	}
}

func TestDataPlaneEnsureENILink(t *testing.T) {
	d, w := newTestDataPlane(t)
	mac, _ := net.ParseMAC("0a:00:00:00:00:01")
	// A task veth with the same MAC must never be taken for the ENI.
	w.host().addLink(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: HostVeth("x"), HardwareAddr: mac}})
	w.host().addLink(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: "ens6", HardwareAddr: mac, MTU: 1500}})
	name, err := d.EnsureENILink(context.Background(), "0a:00:00:00:00:01", 1001, netip.MustParseAddr("198.18.1.1"),
		netip.MustParsePrefix("198.18.1.10/24"), netip.MustParsePrefix("2001:db8::/64"), 9001, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"host LinkSetMTU ens6 9001",
		"host LinkSetUp ens6",
		"host RouteReplace dev ens6 dst 198.18.1.0/24 scope link table 1001",
		"host RouteReplace dev ens6 dst 0.0.0.0/0 via 198.18.1.1 table 1001",
		"host RouteReplace dev ens6 dst 2001:db8::/64 table 1001",
		"host RouteReplace dev ens6 dst ::/0 via fe80::1 table 1001",
	}
	if diff := cmp.Diff(want, w.log); diff != "" || name != "ens6" {
		t.Errorf("link %q, netlink calls (-want +got):\n%s", name, diff)
	}
	// No such link: it gives up after the timeout.
	if _, err := d.EnsureENILink(context.Background(), "0a:00:00:00:00:09", 1002, netip.MustParseAddr("198.18.1.1"),
		netip.MustParsePrefix("198.18.1.10/24"), netip.Prefix{}, 0, 10*time.Millisecond); err == nil {
		t.Error("EnsureENILink found a link that is not there")
	}
}
