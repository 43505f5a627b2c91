package vpc

import (
	"context"
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
				`iifname "tt*" oifname "tt*" counter name task_to_task drop`,
			},
			wantNot: []string{"dport"},
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
	rec := &recordNFT{}
	f, _ := NewFirewall(FirewallConfig{Table: "t", Bridge: "b"})
	f.nft = rec
	if err := f.Ensure(context.Background()); err != nil {
		t.Fatal(err)
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
