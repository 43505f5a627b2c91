package runtime

import (
	"net"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
)

func TestTCPListening(t *testing.T) {
	v4 := `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: FEA9FEA9:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0 100 0 0 10 0
   1: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1002 1 0 100 0 0 10 0
   2: 0A0013C6:1F90 0B0013C6:C350 01 00000000:00000000 00:00000000 00000000     0        0 1003 1 0 100 0 0 10 0
   3: garbage
`
	v6 := `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: C20E00FD000000000000000054020000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2001 1 0 100 0 0 10 0
`
	got := append(tcpListening(v4), tcpListening(v6)...)
	want := []string{"169.254.169.254:80", "127.0.0.1:8080", "[fd00:ec2::254]:80"}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("listening (-want +got):\n%s", d)
	}
}

func TestFormatRoute(t *testing.T) {
	_, sub, _ := net.ParseCIDR("198.19.7.0/24")
	_, zero, _ := net.ParseCIDR("0.0.0.0/0")
	names := map[int]string{2: "eth0"}
	for _, tc := range []struct {
		r    netlink.Route
		want string
	}{
		{netlink.Route{Gw: net.ParseIP("198.19.7.1"), LinkIndex: 2}, "default via 198.19.7.1 dev eth0"},
		{netlink.Route{Dst: zero, Gw: net.ParseIP("198.19.7.1"), LinkIndex: 2}, "default via 198.19.7.1 dev eth0"},
		{netlink.Route{Dst: sub, LinkIndex: 2, Scope: netlink.SCOPE_LINK, Src: net.ParseIP("198.19.7.9")}, "198.19.7.0/24 dev eth0 scope link src 198.19.7.9"},
		{netlink.Route{Dst: sub, LinkIndex: 9}, "198.19.7.0/24 dev if9"},
	} {
		if got := formatRoute(tc.r, names); got != tc.want {
			t.Errorf("formatRoute(%+v) = %q, want %q", tc.r, got, tc.want)
		}
	}
}
