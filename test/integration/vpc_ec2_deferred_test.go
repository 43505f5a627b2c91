package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/titus-agent/titus-agent/pkg/task"
	"github.com/titus-agent/titus-agent/pkg/vpc"
)

// TestVPCEC2CrashBeforeRecordWritten is the attack on the ec2 provider's
// deferred allocation record (the address is wired while the record is
// written): the agent dies after wiring a victim's address X, before the
// record holding it reached the disk. The restarted agent does not know X
// is wired and gives it to another task (the thief); the victim's resumed
// launch gets another address. X must then be the thief's alone: gone from
// the victim's eth0, routed to the thief, and the victim reaches the VPC
// from its new address only.
func TestVPCEC2CrashBeforeRecordWritten(t *testing.T) {
	begin(t)
	bed := newEC2Bed(t, "t3.small", false)
	ctx := context.Background()
	dir := t.TempDir() // the agent's state: namespaces and files survive the crash
	req := task.NetworkRequest{SecurityGroupIDs: []string{bed.sg1}}

	p1 := bed.provider(t, bed.a, "deferred.json")
	n1 := networkAt(t, bed.a, p1, dir)
	// Whatever happens below, the victim's namespace and veth go.
	t.Cleanup(func() { _ = n1.Teardown(context.Background(), "victim") })
	// A warm pool, so that the victim's address is taken the fast way.
	waitFor(t, "a warm IP", 10*time.Second, func() (bool, string) {
		st := p1.PoolStatus(ctx)
		free := 0
		for _, e := range st.ENIs {
			free += e.Free
		}
		return free > 0, fmt.Sprintf("%+v", st.ENIs)
	})
	att, durable, err := n1.SetupDeferred(ctx, "victim", req)
	if err != nil {
		t.Fatalf("setup victim: %v", err)
	}
	_ = durable // the agent dies before the container step waits for it
	x := att.IPv4
	onDisk, err := os.ReadFile(filepath.Join(bed.dir, "deferred.json"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var rec struct {
		Tasks map[string]struct{ State string } `json:"tasks"`
	}
	if len(onDisk) > 0 {
		if err := json.Unmarshal(onDisk, &rec); err != nil {
			t.Fatal(err)
		}
	}
	if rec.Tasks["victim"].State == "assigned" {
		t.Fatalf("the record holds the victim's address before anyone waited for it: %s", onDisk)
	}
	if len(onDisk) > 0 { // none yet: the warm pool's first allocation
		if err := os.WriteFile(filepath.Join(bed.dir, "deferred-after.json"), onDisk, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	p1.Close()

	p2 := bed.provider(t, bed.a, "deferred-after.json")
	n2 := networkAt(t, bed.a, p2, dir)
	t.Cleanup(func() {
		as, _ := p2.Allocations(context.Background())
		for _, a := range as {
			_ = n2.Teardown(context.Background(), a.TaskID)
		}
		_ = n2.Teardown(context.Background(), "victim")
	})
	// The thief launches until it holds X (the restarted pool has it free).
	var thief *task.NetworkAttachment
	var thiefID string
	for i := range 6 {
		id := "thief" + string(rune('0'+i))
		a, err := n2.Setup(ctx, id, req)
		if err != nil {
			t.Fatalf("setup %s: %v", id, err)
		}
		if a.IPv4 == x {
			thief, thiefID = a, id
			break
		}
	}
	if thief == nil {
		t.Fatalf("no task of the restarted agent got the victim's unrecorded address %s", x)
	}
	resumed, err := n2.Setup(ctx, "victim", req)
	if err != nil {
		t.Fatalf("resumed victim: %v", err)
	}
	if resumed.IPv4 == x {
		t.Fatalf("the victim's resumed launch got %s, which %s holds", x, thiefID)
	}

	// X is on the thief's eth0 only.
	if got := globalAddrs(t, resumed.NetNSPath); len(got) != 1 || got[0] != resumed.IPv4 {
		t.Errorf("victim's eth0 holds %v, want only %s", got, resumed.IPv4)
	}
	if got := globalAddrs(t, thief.NetNSPath); len(got) != 1 || got[0] != x {
		t.Errorf("thief's eth0 holds %v, want only %s", got, x)
	}
	// The host routes X to the thief's veth, the victim's new address to its own.
	hh, err := netlink.NewHandleAt(bed.a.NS)
	if err != nil {
		t.Fatal(err)
	}
	defer hh.Close()
	for ip, want := range map[string]string{x: vpc.HostVeth(thiefID), resumed.IPv4: vpc.HostVeth("victim")} {
		rs, err := hh.RouteGet(net.ParseIP(ip))
		if err != nil || len(rs) == 0 {
			t.Fatalf("route to %s: %v", ip, err)
		}
		l, err := hh.LinkByIndex(rs[0].LinkIndex)
		if err != nil || l.Attrs().Name != want {
			t.Errorf("host routes %s via %v, want %s", ip, l, want)
		}
	}
	// Both reach the other host from their own address.
	pingFromNS(t, resumed.NetNSPath, bed.b.PrimaryIP)
	pingFromNS(t, thief.NetNSPath, bed.b.PrimaryIP)
}

// networkAt is the agent's network stack for host with its state in dir
// (a restarted agent's finds the namespaces of the one before).
func networkAt(t *testing.T, host interface{ NetNSPath() string }, p *vpc.EC2Provider, dir string) *vpc.Network {
	t.Helper()
	dp, err := vpc.NewDataPlane(vpc.DataPlaneConfig{
		NetNSDir: filepath.Join(dir, "netns"), FilesDir: filepath.Join(dir, "files"), HostNetNS: host.NetNSPath(), DNS: []string{"198.18.0.2"},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(dp.Close)
	return vpc.NewNetwork(p, dp)
}

// globalAddrs lists the global addresses on eth0 of the namespace at path.
func globalAddrs(t *testing.T, path string) []string {
	t.Helper()
	ns, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	eth, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	addrs, err := h.AddrList(eth, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap().IsGlobalUnicast() {
			out = append(out, ip.Unmap().String())
		}
	}
	return out
}

// pingFromNS pings ip from the namespace at path (a few tries).
func pingFromNS(t *testing.T, path, ip string) {
	t.Helper()
	var out []byte
	var err error
	for range 5 {
		if out, err = exec.Command("nsenter", "--net="+path, "busybox", "ping", "-c", "1", "-W", "1", ip).CombinedOutput(); err == nil {
			return
		}
	}
	t.Errorf("ping %s from %s: %v\n%s", ip, path, err, out)
}
