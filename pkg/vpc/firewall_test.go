package vpc

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

type recordNFT struct{ scripts []string }

func (r *recordNFT) Run(_ context.Context, s string) error {
	r.scripts = append(r.scripts, s)
	return nil
}

func TestFirewallScript(t *testing.T) {
	for _, tc := range []struct {
		name    string
		cfg     FirewallConfig
		want    []string
		wantNot []string
	}{
		{
			name: "ec2 mode",
			cfg:  FirewallConfig{AllowHostPorts: []string{"udp/53"}},
			want: []string{
				"table inet titus_fw {}\ndelete table inet titus_fw\ntable inet titus_fw {", // atomic replace
				`iifname "tt*" jump from_task`,
				"ip daddr 169.254.0.0/16 counter name task_to_linklocal drop",
				"ip6 daddr fd00:ec2::/32 counter name task_to_linklocal drop",
				"udp dport 53 accept\n    counter name task_to_host drop",
				`oifname "tt*" goto task_to_task`,
				"chain task_to_task {\n    counter name task_to_task drop",
			},
			wantNot: []string{"table bridge", "iifname != "},
		},
		{
			name: "local mode isolates bridged tasks",
			cfg:  FirewallConfig{Table: "titus_fw_br", Bridge: "br0"},
			want: []string{
				`iifname "br0" jump task_to_host`,
				`oifname "br0" goto task_to_task`,
				`iifname != "tt*" iifname != "br0" drop`,
				"table bridge titus_fw_br {}\ndelete table bridge titus_fw_br\n",
			},
			// Not by name: "tt*" is every agent's task ports.
			wantNot: []string{"dport", "table bridge titus_fw_br {\n", `oifname "tt*" counter`},
		},
		{
			name:    "task to task allowed",
			cfg:     FirewallConfig{Bridge: "br0", TaskToTask: true},
			want:    []string{"chain task_to_task {\n    accept", "table bridge titus_fw {}\ndelete table bridge titus_fw\n"},
			wantNot: []string{"table bridge titus_fw {\n"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := NewFirewall(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			s := f.script()
			for _, w := range tc.want {
				if !strings.Contains(s, w) {
					t.Errorf("script lacks %q:\n%s", w, s)
				}
			}
			for _, w := range tc.wantNot {
				if strings.Contains(s, w) {
					t.Errorf("script has %q:\n%s", w, s)
				}
			}
		})
	}
}

func TestFirewallRefusesBadPorts(t *testing.T) {
	for _, p := range []string{"53", "tcp/0", "icmp/1", "tcp/65536", "udp/x"} {
		if _, err := NewFirewall(FirewallConfig{AllowHostPorts: []string{p}}); err == nil {
			t.Errorf("port %q accepted", p)
		}
	}
}

func TestFirewallEnsureAndRemove(t *testing.T) {
	rec, host := &recordNFT{}, &fakeFirewallHost{}
	f, _ := NewFirewall(FirewallConfig{Table: "t", Bridge: "b"})
	f.nft, f.host = rec, host
	if err := f.Ensure(context.Background()); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"b true"}, host.isolated); diff != "" {
		t.Errorf("port isolation (-want +got):\n%s", diff)
	}
	if err := f.Remove(context.Background()); err != nil {
		t.Fatal(err)
	}
	want := "table inet t {}\ndelete table inet t\ntable bridge t {}\ndelete table bridge t\n"
	if diff := cmp.Diff(want, rec.scripts[1]); diff != "" {
		t.Errorf("remove (-want +got):\n%s", diff)
	}
}

// The firewall matches task veths by prefix.
func TestHostVethHasTaskPrefix(t *testing.T) {
	if v := HostVeth("some-task"); !strings.HasPrefix(v, taskVethPrefix) {
		t.Errorf("HostVeth = %q, want prefix %q", v, taskVethPrefix)
	}
}

// TestFirewallScriptParses checks every variant with nft itself (no
// changes made: --check), when nft is there and we may use it.
func TestFirewallScriptParses(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("nft --check needs root")
	}
	nft, err := exec.LookPath("nft")
	if err != nil {
		t.Skip("no nft")
	}
	for _, cfg := range []FirewallConfig{{}, {Bridge: "br0", AllowHostPorts: []string{"tcp/80", "udp/53"}}, {Bridge: "br0", TaskToTask: true}} {
		f, _ := NewFirewall(cfg)
		cmd := exec.Command(nft, "--check", "-f", "-")
		cmd.Stdin = strings.NewReader(f.script())
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("nft --check %+v: %v\n%s\n%s", cfg, err, out, f.script())
		}
	}
}

type fakeFirewallHost struct {
	tables   []nftTable
	links    []string
	isolated []string // "bridge on|off", one per IsolatePorts
}

func (f *fakeFirewallHost) Tables(context.Context) ([]nftTable, error) { return f.tables, nil }
func (f *fakeFirewallHost) Links() ([]string, error)                   { return f.links, nil }
func (f *fakeFirewallHost) IsolatePorts(bridge string, on bool) error {
	f.isolated = append(f.isolated, fmt.Sprintf("%s %t", bridge, on))
	return nil
}

// TestFirewallRemoveStale: the tables of bridges that are gone go, in one
// transaction; the agent's own, those of bridges that exist (other live
// agents'), the ec2 table and anything not ours stay.
func TestFirewallRemoveStale(t *testing.T) {
	host := &fakeFirewallHost{
		tables: []nftTable{
			{"inet", "titus_fw_tbmine"}, {"bridge", "titus_fw_tbmine"}, // ours
			{"inet", "titus_fw_tb_live"}, {"bridge", "titus_fw_tb_live"}, // bridge tb-live exists
			{"inet", "titus_fw_tbdead"}, {"bridge", "titus_fw_tbdead"}, // bridge gone
			{"inet", "titus_fw_tbdead2"},     // gone, inet only
			{"inet", "titus_fw"},             // ec2 mode's
			{"arp", "titus_fw_tbdead"},       // not a family of ours
			{"inet", "filter"},               // the host's
			{"ip", "titus_tbdead"},           // the local provider's NAT, bridge gone
			{"ip", "titus_tb_live"},          // its NAT, bridge tb-live exists
			{"ip", "titus_tbmine"},           // this agent's NAT
			{"ip", "nat"},                    // the host's
			{"inet", "titus_tbdead4"},        // not a family of NAT's
			{"netdev", "titus_fw_tbdead3"},   // not a family of ours
			{"netdev", "titus_guard_tt1234"}, // a task's guard, its veth there
			{"netdev", "titus_guard_tt9999"}, // a guard whose veth is gone
			{"inet", "titus_guard_tt9999"},   // not a family of ours
		},
		links: []string{"lo", "eth0", "tbmine", "tb-live", "tt1234"},
	}
	rec := &recordNFT{}
	f, _ := NewFirewall(FirewallConfig{Table: "titus_fw_tbmine", Bridge: "tbmine"})
	f.nft, f.host = rec, host
	removed, err := f.RemoveStale(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"bridge titus_fw_tbdead", "inet titus_fw_tbdead", "inet titus_fw_tbdead2", "ip titus_tbdead", "netdev titus_guard_tt9999"}, removed); diff != "" {
		t.Errorf("removed (-want +got):\n%s", diff)
	}
	want := []string{"table inet titus_fw_tbdead {}\ndelete table inet titus_fw_tbdead\n" +
		"table bridge titus_fw_tbdead {}\ndelete table bridge titus_fw_tbdead\n" +
		"table inet titus_fw_tbdead2 {}\ndelete table inet titus_fw_tbdead2\n" +
		"table ip titus_tbdead {}\ndelete table ip titus_tbdead\n" +
		"table netdev titus_guard_tt9999 {}\ndelete table netdev titus_guard_tt9999\n"}
	if diff := cmp.Diff(want, rec.scripts); diff != "" {
		t.Errorf("nft (-want +got):\n%s", diff)
	}

	// Nothing stale: no nft run at all.
	rec.scripts = nil
	f.host = &fakeFirewallHost{tables: host.tables[:4], links: host.links}
	if removed, err := f.RemoveStale(context.Background()); err != nil || removed != nil || rec.scripts != nil {
		t.Errorf("nothing stale: removed %v, err %v, ran %v", removed, err, rec.scripts)
	}
}

func TestParseTables(t *testing.T) {
	got := parseTables("table inet titus_fw_tb1\ntable bridge titus_fw_tb1\ntable ip nat\n\nwarning: something\n")
	want := []nftTable{{"inet", "titus_fw_tb1"}, {"bridge", "titus_fw_tb1"}, {"ip", "nat"}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("tables (-want +got):\n%s", diff)
	}
}

// TestFirewallIsolatesOnlyItsBridge: whether tasks meet is set on the
// agent's own bridge's ports, both ways, and never in ec2 mode (no bridge).
func TestFirewallIsolatesOnlyItsBridge(t *testing.T) {
	for _, tc := range []struct {
		cfg  FirewallConfig
		want []string
	}{
		{FirewallConfig{Bridge: "tbmine"}, []string{"tbmine true"}},
		{FirewallConfig{Bridge: "tbmine", TaskToTask: true}, []string{"tbmine false"}},
		{FirewallConfig{}, nil},
	} {
		host := &fakeFirewallHost{}
		f, _ := NewFirewall(tc.cfg)
		f.nft, f.host = &recordNFT{}, host
		if err := f.Ensure(context.Background()); err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(tc.want, host.isolated); diff != "" {
			t.Errorf("%+v: port isolation (-want +got):\n%s", tc.cfg, diff)
		}
		if got, want := f.IsolatesPorts(), tc.want != nil && tc.want[0] == "tbmine true"; got != want {
			t.Errorf("%+v: IsolatesPorts = %t, want %t", tc.cfg, got, want)
		}
	}
}
