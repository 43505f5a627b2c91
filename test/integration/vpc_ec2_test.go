package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/titus-agent/titus-agent/pkg/task"
	"github.com/titus-agent/titus-agent/pkg/vpc"
	"github.com/titus-agent/titus-agent/test/testenv"
)

// ec2Bed is moto behind a fault proxy, the simulated VPC and two hosts in
// different AZs, each with its own ec2 provider.
type ec2Bed struct {
	hv      *testenv.Hypervisor
	proxy   *testenv.FaultProxy
	sg1     string
	sg2     string
	a, b    *testenv.SimHost
	imds    string
	dir     string
	nextNet int
}

func newEC2Bed(t *testing.T, instanceType string, ipv6 bool) *ec2Bed {
	t.Helper()
	return newEC2BedIn(t, instanceType, ipv6, []string{"us-east-1a", "us-east-1b"})
}

// newEC2BedIn is newEC2Bed with one subnet per entry of azs (a zone named
// twice has two subnets); host a is in azs[0], b in us-east-1b.
func newEC2BedIn(t *testing.T, instanceType string, ipv6 bool, azs []string) *ec2Bed {
	t.Helper()
	moto := testenv.StartMoto(t)
	bed := &ec2Bed{proxy: testenv.StartFaultProxy(t, moto.Endpoint), dir: t.TempDir()}
	bed.imds = testenv.StartIMDSMock(t).Endpoint
	bed.hv = testenv.StartHypervisor(t, moto.Endpoint, testenv.HypervisorOptions{AZs: azs, IPv6: ipv6})
	ctx := context.Background()
	for i, dst := range []*string{&bed.sg1, &bed.sg2} {
		out, err := bed.hv.EC2.CreateSecurityGroup(ctx, &ec2.CreateSecurityGroupInput{
			GroupName: aws.String(fmt.Sprintf("tasks-%d", i)), Description: aws.String("test"), VpcId: aws.String(bed.hv.VPCID),
		})
		if err != nil {
			t.Fatalf("create SG: %v", err)
		}
		*dst = aws.ToString(out.GroupId)
	}
	netnsOfFabric = bed.hv.Fabric
	bed.a = bed.hv.AddHost(t, azs[0], instanceType)
	bed.b = bed.hv.AddHost(t, "us-east-1b", instanceType)
	t.Cleanup(func() {
		for _, err := range bed.hv.Errors() {
			t.Errorf("hypervisor: %v", err)
		}
		for _, d := range bed.hv.Duplicates() {
			t.Logf("hypervisor: %s", d)
		}
	})
	return bed
}

// provider starts an ec2 provider for host over record (a file name in the
// bed's directory), its EC2 calls going through the fault proxy.
func (bed *ec2Bed) provider(t *testing.T, host *testenv.SimHost, record string) *vpc.EC2Provider {
	t.Helper()
	ctx := context.Background()
	api, err := vpc.NewEC2Client(ctx, vpc.EC2Config{
		Region: "us-east-1", Endpoint: bed.proxy.URL, AccessKeyID: "testing", SecretAccessKey: "testing",
		Retry: vpc.RetryConfig{RatePerSecond: 200, Burst: 50, MaxAttempts: 6, BaseDelay: 10 * time.Millisecond, MaxDelay: 200 * time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	// The IMDS mock describes a fixed instance that moto does not know:
	// read it to exercise discovery, then take the identity from moto.
	fromIMDS, err := vpc.DiscoverHost(ctx, bed.imds)
	if err != nil || fromIMDS.InstanceID == "" {
		t.Fatalf("discover host from IMDS mock: %+v, %v", fromIMDS, err)
	}
	hi, err := vpc.HostFromEC2(ctx, api, host.InstanceID)
	if err != nil {
		t.Fatal(err)
	}
	if hi.PrimaryENI != host.PrimaryENI || hi.AvailabilityZone != host.AZ {
		t.Fatalf("host info %+v does not match %+v", hi, host)
	}
	p, err := vpc.NewEC2Provider(ctx, vpc.EC2ProviderConfig{
		API: api, Host: hi, AgentID: "it-" + host.Name, DefaultSecurityGroups: []string{bed.sg1},
		Pool:           vpc.PoolConfig{WarmIPs: 1, MinDefaultIPs: 1, ReleaseAfter: 500 * time.Millisecond, ReuseCooldown: 300 * time.Millisecond},
		RecordPath:     filepath.Join(bed.dir, record),
		RefillInterval: 100 * time.Millisecond, RefillBackoffMax: 400 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatalf("NewEC2Provider: %v", err)
	}
	p.Start()
	t.Cleanup(func() { p.Close() })
	return p
}

// taskNet is a task's netns wired to its allocation the AWS VPC CNI way:
// /32 in the task, proxy-ARP veth on the host, /32 route to the task and a
// rule "from task IP → table of its ENI" whose default goes out the ENI.
// (The agent's own data plane does this in production; the test keeps its
// own small copy so it checks the provider against the VPC alone.)
type taskNet struct {
	name  string
	host  *testenv.SimHost
	alloc vpc.Allocation
	veth  string
	table int
}

func (bed *ec2Bed) wire(t *testing.T, host *testenv.SimHost, a vpc.Allocation) *taskNet {
	t.Helper()
	bed.nextNet++
	tn := &taskNet{name: fmt.Sprintf("%s-t%d", host.Name, bed.nextNet), host: host, alloc: a,
		veth: fmt.Sprintf("vt%d", bed.nextNet), table: 100 + a.DeviceIndex}
	t.Cleanup(func() { tn.unwire() })
	hh, err := netlink.NewHandleAt(host.NS)
	if err != nil {
		t.Fatal(err)
	}
	defer hh.Close()
	// The ENI link shows up by MAC once the hypervisor plugs it.
	var eniLink netlink.Link
	deadline := time.Now().Add(10 * time.Second)
	for eniLink == nil {
		links, _ := hh.LinkList()
		for _, l := range links {
			if strings.EqualFold(l.Attrs().HardwareAddr.String(), a.MAC) {
				eniLink = l
			}
		}
		if eniLink == nil {
			if time.Now().After(deadline) {
				t.Fatalf("ENI %s (%s) never appeared in %s", a.ENIID, a.MAC, host.Name)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	must := func(what string, err error) {
		t.Helper()
		if err != nil && !errors.Is(err, errExists) && !strings.Contains(err.Error(), "file exists") {
			t.Fatalf("%s: %v", what, err)
		}
	}
	must("ENI up", hh.LinkSetUp(eniLink))
	gw := a.Gateway.AsSlice()
	must("gateway route", hh.RouteReplace(&netlink.Route{LinkIndex: eniLink.Attrs().Index, Dst: &net.IPNet{IP: gw, Mask: net.CIDRMask(32, 32)}, Scope: netlink.SCOPE_LINK, Table: tn.table}))
	must("ENI default route", hh.RouteReplace(&netlink.Route{LinkIndex: eniLink.Attrs().Index, Gw: gw, Table: tn.table}))

	tns, err := newNS(tn.name)
	if err != nil {
		t.Fatal(err)
	}
	defer tns.Close()
	th, err := netlink.NewHandleAt(tns)
	if err != nil {
		t.Fatal(err)
	}
	defer th.Close()
	must("veth", hh.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: tn.veth}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(tns))}))
	hv, err := hh.LinkByName(tn.veth)
	if err != nil {
		t.Fatal(err)
	}
	must("veth up", hh.LinkSetUp(hv))
	must("proxy arp", exec.Command("ip", "netns", "exec", host.Name, "sysctl", "-qw", "net.ipv4.conf."+tn.veth+".proxy_arp=1").Run())
	ip := a.IPv4.Addr().AsSlice()
	must("route to task", hh.RouteReplace(&netlink.Route{LinkIndex: hv.Attrs().Index, Dst: &net.IPNet{IP: ip, Mask: net.CIDRMask(32, 32)}, Scope: netlink.SCOPE_LINK}))
	rule := netlink.NewRule()
	rule.Src = &net.IPNet{IP: ip, Mask: net.CIDRMask(32, 32)}
	rule.Table = tn.table
	rule.Priority = 1000
	must("rule", hh.RuleAdd(rule))

	eth0, err := th.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	lo, _ := th.LinkByName("lo")
	must("lo up", th.LinkSetUp(lo))
	must("task addr", th.AddrAdd(eth0, &netlink.Addr{IPNet: &net.IPNet{IP: ip, Mask: net.CIDRMask(32, 32)}}))
	must("task eth0 up", th.LinkSetUp(eth0))
	must("task default", th.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Scope: netlink.SCOPE_LINK, Dst: &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}}))
	return tn
}

// netnsOfFabric names the fabric netns in failure dumps.
var netnsOfFabric string

var errExists = errors.New("exists")

func (tn *taskNet) unwire() {
	hh, err := netlink.NewHandleAt(tn.host.NS)
	if err == nil {
		if l, err := hh.LinkByName(tn.veth); err == nil {
			_ = hh.LinkDel(l)
		}
		rule := netlink.NewRule()
		rule.Src = &net.IPNet{IP: tn.alloc.IPv4.Addr().AsSlice(), Mask: net.CIDRMask(32, 32)}
		rule.Table = tn.table
		rule.Priority = 1000
		_ = hh.RuleDel(rule)
		hh.Close()
	}
	_ = netns.DeleteNamed(tn.name)
}

func newNS(name string) (netns.NsHandle, error) {
	out, err := exec.Command("ip", "netns", "add", name).CombinedOutput()
	if err != nil {
		return netns.None(), fmt.Errorf("ip netns add %s: %v: %s", name, err, out)
	}
	return netns.GetFromName(name)
}

func ping(t *testing.T, from *taskNet, ip string) {
	t.Helper()
	var out []byte
	var err error
	for range 5 {
		out, err = exec.Command("nsenter", "--net=/run/netns/"+from.name, "busybox", "ping", "-c", "1", "-W", "1", ip).CombinedOutput()
		if err == nil {
			return
		}
	}
	var dump strings.Builder
	for _, ns := range []string{from.name, from.host.Name, netnsOfFabric} {
		for _, args := range [][]string{{"addr"}, {"route", "show", "table", "all"}, {"rule"}, {"neigh"}} {
			o, _ := exec.Command("ip", append([]string{"-n", ns}, args...)...).CombinedOutput()
			fmt.Fprintf(&dump, "## %s ip %v\n%s", ns, args, o)
		}
	}
	t.Fatalf("ping %s → %s: %v\n%s\n%s", from.alloc.IPv4.Addr(), ip, err, out, dump.String())
}

// motoENIs returns, for the ENIs moto shows as created by host's agent,
// "groups [ips]" per ENI id.
func (bed *ec2Bed) motoENIs(t *testing.T, host *testenv.SimHost) map[string]string {
	t.Helper()
	out, err := bed.hv.EC2.DescribeNetworkInterfaces(context.Background(), &ec2.DescribeNetworkInterfacesInput{
		Filters: []types.Filter{{Name: aws.String("tag:" + vpc.TagInstanceID), Values: []string{host.InstanceID}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, n := range out.NetworkInterfaces {
		var groups, ips []string
		for _, g := range n.Groups {
			groups = append(groups, aws.ToString(g.GroupId))
		}
		for _, a := range n.PrivateIpAddresses {
			if !aws.ToBool(a.Primary) {
				ips = append(ips, aws.ToString(a.PrivateIpAddress))
			}
		}
		sort.Strings(groups)
		sort.Strings(ips)
		m[aws.ToString(n.NetworkInterfaceId)] = fmt.Sprintf("%s %v", strings.Join(groups, ","), ips)
	}
	return m
}

func waitFor(t *testing.T, what string, timeout time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached within %s; last state: %s", what, timeout, state)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// onlyWarmPool: moto shows one ENI of the default SG set with exactly the
// warm minimum of free IPs, and the provider holds no allocation.
func (bed *ec2Bed) onlyWarmPool(t *testing.T, host *testenv.SimHost, p *vpc.EC2Provider) {
	t.Helper()
	bed.onlyWarmPoolOf(t, host, func() int {
		allocs, _ := p.Allocations(context.Background())
		return len(allocs)
	})
}

// onlyWarmPoolOf is onlyWarmPool for any holder of allocations (an agent).
func (bed *ec2Bed) onlyWarmPoolOf(t *testing.T, host *testenv.SimHost, allocations func() int) {
	t.Helper()
	waitFor(t, "only the warm pool left on "+host.Name, 30*time.Second, func() (bool, string) {
		m := bed.motoENIs(t, host)
		n := allocations()
		if n != 0 || len(m) != 1 {
			return false, fmt.Sprintf("moto %v, allocations %d", m, n)
		}
		for _, v := range m {
			return strings.HasPrefix(v, bed.sg1+" [") && strings.Count(v, ".") == 3, fmt.Sprint(m)
		}
		return false, ""
	})
}

func TestVPCEC2(t *testing.T) {
	begin(t)
	bed := newEC2Bed(t, "t3.small", false)
	ctx := context.Background()
	pa := bed.provider(t, bed.a, "a.json")
	pb := bed.provider(t, bed.b, "b.json")

	t.Run("IPs by SG set, reachable across hosts, matching EC2", func(t *testing.T) {
		a1, err := pa.Allocate(ctx, "a1", task.NetworkRequest{SecurityGroupIDs: []string{bed.sg1}})
		if err != nil {
			t.Fatal(err)
		}
		a2, err := pa.Allocate(ctx, "a2", task.NetworkRequest{SecurityGroupIDs: []string{bed.sg2}})
		if err != nil {
			t.Fatal(err)
		}
		b1, err := pb.Allocate(ctx, "b1", task.NetworkRequest{SecurityGroupIDs: []string{bed.sg1}})
		if err != nil {
			t.Fatal(err)
		}
		if a1.ENIID == a2.ENIID || a1.DeviceIndex == 0 || a2.DeviceIndex == 0 || a1.IPv4 == a2.IPv4 {
			t.Fatalf("a1 %+v and a2 %+v should be on different task ENIs", a1, a2)
		}
		if a1.ENIID == bed.a.PrimaryENI || b1.ENIID == bed.b.PrimaryENI {
			t.Fatal("a task got the primary ENI")
		}
		na1, na2, nb1 := bed.wire(t, bed.a, a1), bed.wire(t, bed.a, a2), bed.wire(t, bed.b, b1)
		ping(t, na1, b1.IPv4.Addr().String())
		ping(t, nb1, a1.IPv4.Addr().String())
		ping(t, na2, b1.IPv4.Addr().String())

		for host, p := range map[*testenv.SimHost]*vpc.EC2Provider{bed.a: pa, bed.b: pb} {
			m := bed.motoENIs(t, host)
			allocs, _ := p.Allocations(ctx)
			for _, al := range allocs {
				v, ok := m[al.ENIID]
				if !ok || !strings.HasPrefix(v, strings.Join(al.SecurityGroupIDs, ",")+" ") || !strings.Contains(v, al.IPv4.Addr().String()) {
					t.Errorf("moto's %s = %q, allocation %s wants groups %v and IP %s", al.ENIID, v, al.TaskID, al.SecurityGroupIDs, al.IPv4.Addr())
				}
			}
			st := p.PoolStatus(ctx)
			used := 0
			for _, e := range st.ENIs {
				used += e.Used
				if want := m[e.ID]; !strings.HasPrefix(want, strings.Join(e.SecurityGroups, ",")+" ") {
					t.Errorf("status ENI %s groups %v, moto %q", e.ID, e.SecurityGroups, want)
				}
			}
			if used != len(allocs) {
				t.Errorf("status counts %d used IPs, %d allocations", used, len(allocs))
			}
		}

		for _, tn := range []*taskNet{na1, na2, nb1} {
			tn.unwire()
			p := pa
			if tn.host == bed.b {
				p = pb
			}
			if err := p.Release(ctx, tn.alloc.TaskID); err != nil {
				t.Fatal(err)
			}
		}
		bed.onlyWarmPool(t, bed.a, pa)
		bed.onlyWarmPool(t, bed.b, pb)
	})

	t.Run("agent crash mid-launch: rebuilt with nothing leaked", func(t *testing.T) {
		p1 := bed.provider(t, bed.b, "crash.json")
		pb.Close() // one agent per host: the old one stops
		c1, err := p1.Allocate(ctx, "c1", task.NetworkRequest{SecurityGroupIDs: []string{bed.sg1}})
		if err != nil {
			t.Fatal(err)
		}
		nc1 := bed.wire(t, bed.b, c1)
		// c2 got its IP but the agent died before wiring it; an ENI was
		// created but the agent died before attaching it.
		if _, err := p1.Allocate(ctx, "c2", task.NetworkRequest{SecurityGroupIDs: []string{bed.sg2}}); err != nil {
			t.Fatal(err)
		}
		leak, err := bed.hv.EC2.CreateNetworkInterface(ctx, &ec2.CreateNetworkInterfaceInput{
			SubnetId: aws.String(bed.b.SubnetID), Groups: []string{bed.sg2},
			TagSpecifications: []types.TagSpecification{{ResourceType: types.ResourceTypeNetworkInterface, Tags: []types.Tag{
				{Key: aws.String(vpc.TagInstanceID), Value: aws.String(bed.b.InstanceID)}, {Key: aws.String(vpc.TagManaged), Value: aws.String("true")},
			}}},
		})
		if err != nil {
			t.Fatal(err)
		}
		// A launch is in flight (EC2 throttled) when the agent dies: what
		// the agent leaves on disk is the record as it stands then. Launch
		// until one has to wait on EC2 (earlier ones come from the warm
		// pool and are, like c2, never wired).
		mutating := []string{"CreateNetworkInterface", "AssignPrivateIpAddresses", "ModifyNetworkInterfaceAttribute"}
		for _, a := range mutating {
			bed.proxy.Throttle(a, 1)
		}
		defer func() {
			for _, a := range mutating {
				bed.proxy.Throttle(a, 0)
			}
		}()
		var snapshot []byte
		for i := 0; i < 8 && snapshot == nil; i++ {
			done := make(chan error, 1)
			go func() {
				_, err := p1.Allocate(ctx, fmt.Sprintf("c3-%d", i), task.NetworkRequest{SecurityGroupIDs: []string{bed.sg1}})
				done <- err
			}()
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("warm launch c3-%d: %v", i, err)
				}
				continue
			case <-time.After(300 * time.Millisecond):
			}
			b, err := os.ReadFile(filepath.Join(bed.dir, "crash.json"))
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(string(b), `"pending"`) {
				snapshot = b
			}
			<-done
		}
		if snapshot == nil {
			t.Fatal("no launch was ever caught waiting on EC2")
		}
		for _, a := range mutating {
			bed.proxy.Throttle(a, 0)
		}
		var rec struct {
			Tasks map[string]struct{ State string } `json:"tasks"`
		}
		if err := json.Unmarshal(snapshot, &rec); err != nil {
			t.Fatal(err)
		}
		var wantIDs []string
		for id, e := range rec.Tasks {
			if e.State == "assigned" {
				wantIDs = append(wantIDs, id)
			}
		}
		sort.Strings(wantIDs)
		if len(wantIDs) < 2 || wantIDs[0] != "c1" || wantIDs[1] != "c2" {
			t.Fatalf("record at crash: %s", snapshot)
		}
		if err := os.WriteFile(filepath.Join(bed.dir, "crash-after.json"), snapshot, 0o600); err != nil {
			t.Fatal(err)
		}
		p1.Close()

		p2 := bed.provider(t, bed.b, "crash-after.json")
		allocs, _ := p2.Allocations(ctx)
		var ids []string
		for _, a := range allocs {
			ids = append(ids, a.TaskID)
		}
		if !slices.Equal(ids, wantIDs) {
			t.Fatalf("rebuilt allocations %v, want %v (the pending launch dropped)", ids, wantIDs)
		}
		if _, ok := bed.motoENIs(t, bed.b)[aws.ToString(leak.NetworkInterface.NetworkInterfaceId)]; ok {
			t.Error("leaked unattached ENI survived the rebuild")
		}
		// The agent's reconcile: tasks with a netns live on, the rest are freed.
		live := map[string]bool{"c1": true}
		for _, a := range allocs {
			if !live[a.TaskID] {
				if err := p2.Release(ctx, a.TaskID); err != nil {
					t.Fatal(err)
				}
			}
		}
		ping(t, nc1, bed.a.PrimaryIP) // the rebuilt allocation still routes
		nc1.unwire()
		if err := p2.Release(ctx, "c1"); err != nil {
			t.Fatal(err)
		}
		bed.onlyWarmPool(t, bed.b, p2)
		checkHostClean(t, bed.b)
		pb = p2
	})

	t.Run("throttled EC2: warm launches succeed, refills back off", func(t *testing.T) {
		// A quarter of all calls throttled: retries with backoff get
		// through. (At a half, a call failed all its attempts one time in
		// 64, often enough to fail a CI run now and then.)
		bed.proxy.Throttle("", 0.25)
		x1, err := pa.Allocate(ctx, "x1", task.NetworkRequest{SecurityGroupIDs: []string{bed.sg2}})
		if err != nil {
			t.Fatalf("allocate under 25%% throttling: %v", err)
		}
		// Every mutating call throttled: the warm IP still goes out, the
		// refill behind it fails and backs off.
		for _, a := range []string{"AssignPrivateIpAddresses", "CreateNetworkInterface", "UnassignPrivateIpAddresses", "ModifyNetworkInterfaceAttribute", "AttachNetworkInterface"} {
			bed.proxy.Throttle(a, 1)
		}
		bed.proxy.Throttle("", 0)
		waitFor(t, "default pool warm", 10*time.Second, func() (bool, string) {
			st := pa.PoolStatus(ctx)
			for _, p := range st.Pools {
				if slices.Equal(p.SecurityGroups, []string{bed.sg1}) && p.Free >= 1 {
					return true, ""
				}
			}
			return false, fmt.Sprint(st.Pools)
		})
		before := bed.proxy.Injected("")
		x2, err := pa.Allocate(ctx, "x2", task.NetworkRequest{SecurityGroupIDs: []string{bed.sg1}})
		if err != nil {
			t.Fatalf("warm allocate while EC2 throttles: %v", err)
		}
		waitFor(t, "refill failures recorded", 10*time.Second, func() (bool, string) {
			f := pa.RefillFailures()
			return len(f) > 0 && bed.proxy.Injected("") > before, fmt.Sprint(f)
		})
		for _, a := range []string{"AssignPrivateIpAddresses", "CreateNetworkInterface", "UnassignPrivateIpAddresses", "ModifyNetworkInterfaceAttribute", "AttachNetworkInterface"} {
			bed.proxy.Throttle(a, 0)
		}
		waitFor(t, "refills recover", 15*time.Second, func() (bool, string) {
			f := pa.RefillFailures()
			return len(f) == 0, fmt.Sprint(f)
		})
		for _, a := range []vpc.Allocation{x1, x2} {
			if err := pa.Release(ctx, a.TaskID); err != nil {
				t.Fatal(err)
			}
		}
		bed.onlyWarmPool(t, bed.a, pa)
	})

	t.Run("idle ENI takes over a new SG set", func(t *testing.T) {
		out, err := bed.hv.EC2.CreateSecurityGroup(ctx, &ec2.CreateSecurityGroupInput{
			GroupName: aws.String("tasks-3"), Description: aws.String("test"), VpcId: aws.String(bed.hv.VPCID),
		})
		if err != nil {
			t.Fatal(err)
		}
		sg3 := aws.ToString(out.GroupId)
		var idle string
		for id := range bed.motoENIs(t, bed.a) {
			idle = id // the warm pool's only ENI
		}
		// t3.small has room for 2 task ENIs: sg2 takes the second, and sg3
		// can only have the idle sg1 one, its groups changed in EC2.
		r2, err := pa.Allocate(ctx, "r2", task.NetworkRequest{SecurityGroupIDs: []string{bed.sg2}})
		if err != nil {
			t.Fatal(err)
		}
		r3, err := pa.Allocate(ctx, "r3", task.NetworkRequest{SecurityGroupIDs: []string{sg3}})
		if err != nil {
			t.Fatal(err)
		}
		if r3.ENIID != idle || r2.ENIID == idle {
			t.Fatalf("r2 on %s, r3 on %s: want r3 on the idle ENI %s", r2.ENIID, r3.ENIID, idle)
		}
		if got := bed.motoENIs(t, bed.a)[idle]; !strings.HasPrefix(got, sg3+" [") || !strings.Contains(got, r3.IPv4.Addr().String()) {
			t.Errorf("moto's %s = %q, want groups %s and IP %s", idle, got, sg3, r3.IPv4.Addr())
		}
		for _, id := range []string{"r2", "r3"} {
			if err := pa.Release(ctx, id); err != nil {
				t.Fatal(err)
			}
		}
		bed.onlyWarmPool(t, bed.a, pa)
	})

	t.Run("capacity exhausted", func(t *testing.T) {
		// t3.small: 2 task ENIs × 3 secondary IPs.
		var got []string
		var err error
		for i := range 8 {
			id := fmt.Sprintf("cap%d", i)
			if _, err = pa.Allocate(ctx, id, task.NetworkRequest{SecurityGroupIDs: []string{bed.sg1}}); err != nil {
				break
			}
			got = append(got, id)
		}
		if !errors.Is(err, vpc.ErrNoCapacity) || len(got) != 6 {
			t.Fatalf("after %d allocations: %v, want ErrNoCapacity after 6", len(got), err)
		}
		for _, id := range got {
			if err := pa.Release(ctx, id); err != nil {
				t.Fatal(err)
			}
		}
		bed.onlyWarmPool(t, bed.a, pa)
	})
}

// checkHostClean: no task veths, no rules besides the defaults, no task netns.
func checkHostClean(t *testing.T, host *testenv.SimHost) {
	t.Helper()
	hh, err := netlink.NewHandleAt(host.NS)
	if err != nil {
		t.Fatal(err)
	}
	defer hh.Close()
	links, _ := hh.LinkList()
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, "vt") {
			t.Errorf("leaked link %s in %s", l.Attrs().Name, host.Name)
		}
	}
	rules, _ := hh.RuleList(netlink.FAMILY_V4)
	for _, r := range rules {
		if r.Priority == 1000 {
			t.Errorf("leaked rule %+v in %s", r, host.Name)
		}
	}
	out, _ := exec.Command("ip", "netns", "list").Output()
	if strings.Contains(string(out), host.Name+"-t") {
		t.Errorf("leaked task netns: %s", out)
	}
}

// network is the agent's own network stack (provider + data plane) for a
// simulated host, in this process.
func (bed *ec2Bed) network(t *testing.T, host *testenv.SimHost, p *vpc.EC2Provider) *vpc.Network {
	t.Helper()
	dir := t.TempDir()
	dp, err := vpc.NewDataPlane(vpc.DataPlaneConfig{
		NetNSDir: filepath.Join(dir, "netns"), FilesDir: filepath.Join(dir, "files"), HostNetNS: host.NetNSPath(), DNS: []string{"198.18.0.2"},
	})
	if err != nil {
		t.Fatal(err)
	}
	n := vpc.NewNetwork(p, dp)
	t.Cleanup(func() {
		as, _ := p.Allocations(context.Background())
		for _, a := range as {
			_ = n.Teardown(context.Background(), a.TaskID)
		}
		dp.Close()
	})
	return n
}

// motoIPv6 returns the IPv4 secondaries and IPv6 addresses moto shows per ENI of host's.
func (bed *ec2Bed) motoIPv6(t *testing.T, host *testenv.SimHost) map[string][2][]string {
	t.Helper()
	out, err := bed.hv.EC2.DescribeNetworkInterfaces(context.Background(), &ec2.DescribeNetworkInterfacesInput{
		Filters: []types.Filter{{Name: aws.String("tag:" + vpc.TagInstanceID), Values: []string{host.InstanceID}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	m := map[string][2][]string{}
	for _, n := range out.NetworkInterfaces {
		var v4, v6 []string
		for _, a := range n.PrivateIpAddresses {
			if !aws.ToBool(a.Primary) {
				v4 = append(v4, aws.ToString(a.PrivateIpAddress))
			}
		}
		for _, a := range n.Ipv6Addresses {
			v6 = append(v6, aws.ToString(a.Ipv6Address))
		}
		m[aws.ToString(n.NetworkInterfaceId)] = [2][]string{v4, v6}
	}
	return m
}

// IPv6 where the subnet has it: secondary IPv6 addresses from the warm
// pool, wired by the agent's data plane, reachable across hosts.
func TestVPCEC2IPv6(t *testing.T) {
	begin(t)
	bed := newEC2Bed(t, "t3.small", true)
	ctx := context.Background()
	pa, pb := bed.provider(t, bed.a, "a.json"), bed.provider(t, bed.b, "b.json")
	na, nb := bed.network(t, bed.a, pa), bed.network(t, bed.b, pb)

	want := task.NetworkRequest{SecurityGroupIDs: []string{bed.sg1}, IPv6: true}
	attA, err := na.Setup(ctx, "v6a", want)
	if err != nil {
		t.Fatalf("setup v6a: %v", err)
	}
	attB, err := nb.Setup(ctx, "v6b", want)
	if err != nil {
		t.Fatalf("setup v6b: %v", err)
	}
	plain, err := na.Setup(ctx, "v4only", task.NetworkRequest{SecurityGroupIDs: []string{bed.sg1}})
	if err != nil {
		t.Fatalf("setup v4only: %v", err)
	}
	if plain.IPv6 != "" {
		t.Errorf("a task that asked for no IPv6 got %s", plain.IPv6)
	}
	for _, c := range []struct {
		att  *task.NetworkAttachment
		host *testenv.SimHost
	}{{attA, bed.a}, {attB, bed.b}} {
		ip, err := netip.ParseAddr(c.att.IPv6)
		if err != nil || !bed.hv.Subnet(c.host.AZ).IPv6.Contains(ip) {
			t.Fatalf("attachment %+v: want an IPv6 in %s", c.att, bed.hv.Subnet(c.host.AZ).IPv6)
		}
		m := bed.motoIPv6(t, c.host)
		if !slices.Contains(m[c.att.ENIID][1], c.att.IPv6) {
			t.Errorf("moto's %s has IPv6 %v, the task holds %s", c.att.ENIID, m[c.att.ENIID][1], c.att.IPv6)
		}
		if out, err := exec.Command("nsenter", "--net="+c.att.NetNSPath, "ip", "-6", "addr", "show", "eth0").CombinedOutput(); err != nil || !strings.Contains(string(out), c.att.IPv6+"/128") {
			t.Errorf("task eth0: %v %s", err, out)
		}
		if b, err := os.ReadFile(c.att.HostsPath); err != nil || !strings.Contains(string(b), c.att.IPv6) {
			t.Errorf("hosts file: %v %q", err, b)
		}
	}
	pingFrom := func(nsPath, ip string) {
		t.Helper()
		var out []byte
		var err error
		for range 5 {
			if out, err = exec.Command("nsenter", "--net="+nsPath, "busybox", "ping", "-c", "1", "-W", "2", ip).CombinedOutput(); err == nil {
				return
			}
		}
		var dump strings.Builder
		for _, ns := range []string{nsPath, bed.a.NetNSPath(), "/run/netns/" + netnsOfFabric} {
			for _, args := range [][]string{{"-6", "addr"}, {"-6", "route", "show", "table", "all"}, {"-6", "rule"}, {"-6", "neigh"}} {
				o, _ := exec.Command("nsenter", append([]string{"--net=" + ns, "ip"}, args...)...).CombinedOutput()
				fmt.Fprintf(&dump, "## %s ip %v\n%s", ns, args, o)
			}
		}
		t.Fatalf("ping %s from %s: %v\n%s\n%s", ip, nsPath, err, out, dump.String())
	}
	pingFrom(attA.NetNSPath, attB.IPv6)
	pingFrom(attB.NetNSPath, attA.IPv6)
	pingFrom(attA.NetNSPath, attB.IPv4)

	for _, c := range []struct {
		n  *vpc.Network
		id string
	}{{na, "v6a"}, {na, "v4only"}, {nb, "v6b"}} {
		if err := c.n.Teardown(ctx, c.id); err != nil {
			t.Fatal(err)
		}
	}
	bed.onlyWarmPool(t, bed.a, pa)
	bed.onlyWarmPool(t, bed.b, pb)
	for _, host := range []*testenv.SimHost{bed.a, bed.b} {
		for id, v := range bed.motoIPv6(t, host) {
			if len(v[0]) != len(v[1]) {
				t.Errorf("%s after release: IPv4 %v, IPv6 %v: want one IPv6 per IPv4", id, v[0], v[1])
			}
		}
		hh, err := netlink.NewHandleAt(host.NS)
		if err != nil {
			t.Fatal(err)
		}
		rules, _ := hh.RuleList(netlink.FAMILY_V6)
		for _, r := range rules {
			if r.Priority == 20000 {
				t.Errorf("leaked IPv6 rule %v in %s", r, host.Name)
			}
		}
		hh.Close()
	}
}
