package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Hypervisor plays EC2's part for simulated hosts: each host is a network
// namespace standing for an instance that exists in moto; a "VPC fabric"
// namespace holds one bridge per subnet carrying the subnet's gateway
// address. While it runs, it watches moto and, for every ENI attached to a
// simulated instance, plugs a veth into that host's namespace whose host
// end carries the ENI's MAC (the peer end on the subnet's bridge), and keeps
// the fabric's neighbour table pointing each of the ENI's addresses at its
// MAC — the VPC's own mapping of IPs to ENIs. Addresses come from
// 198.18.0.0/15 only.
type Hypervisor struct {
	EC2     *ec2.Client
	Region  string
	VPCID   string
	Subnets []Subnet
	Fabric  string // fabric netns name

	run    string
	fabric netns.NsHandle
	fh     *netlink.Handle

	mu      sync.Mutex
	hosts   []*SimHost
	plugged map[string]*plug // ENI id → plug
	neigh   map[string]neighKey
	errs    []error
	dups    []string
	cancel  context.CancelFunc
	done    chan struct{}
}

// Subnet is one simulated subnet (one per AZ) and its bridge in the fabric.
type Subnet struct {
	ID      string
	AZ      string
	CIDR    netip.Prefix
	Gateway netip.Addr
	Bridge  string
	// IPv6 is the subnet's /64 (HypervisorOptions.IPv6), else invalid.
	IPv6 netip.Prefix
}

// SimHost is one simulated EC2 instance.
type SimHost struct {
	Name         string // netns name (under /run/netns)
	NS           netns.NsHandle
	InstanceID   string
	InstanceType string
	AZ           string
	SubnetID     string
	PrimaryENI   string
	PrimaryMAC   string
	PrimaryIP    string
}

// NetNSPath is the host's netns file.
func (h *SimHost) NetNSPath() string { return filepath.Join("/run/netns", h.Name) }

type plug struct {
	host    *SimHost
	fabEnd  string
	mac     string
	subnet  string
	device  int
	hostEnd string
}

type neighKey struct {
	ip, mac, bridge string
}

// HypervisorOptions shapes the simulated VPC.
type HypervisorOptions struct {
	Region string   // default us-east-1
	AZs    []string // one /18 subnet each (at most 4); default [us-east-1a]
	// IPv6 gives every subnet a /64 out of 2001:2::/48 (the IPv6 range
	// reserved for benchmarking), routed by the fabric via fe80::1.
	IPv6 bool
}

// StartHypervisor creates, in moto at endpoint, a VPC 198.18.0.0/16 with one
// /18 subnet per AZ (at most four), and the fabric namespace with their gateways. Cleanup
// stops the watcher and removes every namespace and link it made.
func StartHypervisor(t TB, endpoint string, o HypervisorOptions) *Hypervisor {
	t.Helper()
	if o.Region == "" {
		o.Region = "us-east-1"
	}
	if len(o.AZs) == 0 {
		o.AZs = []string{o.Region + "a"}
	}
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	h := &Hypervisor{
		Region:  o.Region,
		run:     hex.EncodeToString(b),
		plugged: map[string]*plug{},
		neigh:   map[string]neighKey{},
		done:    make(chan struct{}),
	}
	h.EC2 = ec2.New(ec2.Options{
		Region: o.Region, BaseEndpoint: aws.String(endpoint),
		Credentials: credentials.NewStaticCredentialsProvider("testing", "testing", ""),
	})
	ctx := context.Background()
	vpc, err := h.EC2.CreateVpc(ctx, &ec2.CreateVpcInput{CidrBlock: aws.String("198.18.0.0/16")})
	if err != nil {
		t.Fatalf("hypervisor: create VPC: %v", err)
	}
	h.VPCID = aws.ToString(vpc.Vpc.VpcId)

	h.Fabric = "tfab" + h.run
	if h.fabric, err = newNamedNS(h.Fabric); err != nil {
		t.Fatalf("hypervisor: fabric netns: %v", err)
	}
	t.Cleanup(h.cleanup)
	if h.fh, err = netlink.NewHandleAt(h.fabric); err != nil {
		t.Fatalf("hypervisor: fabric handle: %v", err)
	}
	if err := setupNS(h.fabric, h.fh); err != nil {
		t.Fatalf("hypervisor: fabric: %v", err)
	}
	for i, az := range o.AZs {
		// Wide subnets: moto picks addresses at random without checking
		// which are taken, so a small subnet soon hands one out twice.
		cidr := netip.MustParsePrefix(fmt.Sprintf("198.18.%d.0/18", 64*i))
		in := &ec2.CreateSubnetInput{
			VpcId: aws.String(h.VPCID), CidrBlock: aws.String(cidr.String()), AvailabilityZone: aws.String(az),
		}
		var cidr6 netip.Prefix
		if o.IPv6 {
			cidr6 = netip.MustParsePrefix(fmt.Sprintf("2001:2:0:%x::/64", i+1))
			in.Ipv6CidrBlock = aws.String(cidr6.String())
		}
		out, err := h.EC2.CreateSubnet(ctx, in)
		if err != nil {
			t.Fatalf("hypervisor: create subnet in %s: %v", az, err)
		}
		s := Subnet{ID: aws.ToString(out.Subnet.SubnetId), AZ: az, CIDR: cidr, Gateway: cidr.Addr().Next(), Bridge: fmt.Sprintf("br%d", i+1), IPv6: cidr6}
		// A fixed MAC: a bridge that takes its ports' lowest MAC changes it
		// as ENIs come and go, which flushes its neighbours (ours included)
		// and strands the hosts' cached gateway MAC.
		gwMAC := net.HardwareAddr{0x02, 0xfa, 0xb0, 0x00, 0x00, byte(i + 1)}
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: s.Bridge, HardwareAddr: gwMAC}}
		if err := h.fh.LinkAdd(br); err != nil {
			t.Fatalf("hypervisor: bridge %s: %v", s.Bridge, err)
		}
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: s.Gateway.AsSlice(), Mask: net.CIDRMask(cidr.Bits(), 32)}}
		if err := h.fh.AddrAdd(br, addr); err != nil {
			t.Fatalf("hypervisor: gateway address on %s: %v", s.Bridge, err)
		}
		if o.IPv6 {
			for _, p := range []netip.Prefix{netip.MustParsePrefix("fe80::1/64"), netip.PrefixFrom(cidr6.Addr().Next(), 64)} {
				a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 128)}, Flags: unix.IFA_F_NODAD}
				if err := h.fh.AddrAdd(br, a); err != nil {
					t.Fatalf("hypervisor: IPv6 router address %s on %s: %v", p, s.Bridge, err)
				}
			}
		}
		if err := h.fh.LinkSetUp(br); err != nil {
			t.Fatalf("hypervisor: bridge up: %v", err)
		}
		h.Subnets = append(h.Subnets, s)
	}
	wctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go h.watch(wctx)
	return h
}

// Subnet returns the simulated subnet in az.
func (h *Hypervisor) Subnet(az string) Subnet {
	for _, s := range h.Subnets {
		if s.AZ == az {
			return s
		}
	}
	return Subnet{}
}

// AddHost launches an instance of instanceType in az's subnet in moto and
// makes its namespace, with the primary ENI plugged as eth0 carrying the
// primary address and a default route via the subnet gateway.
func (h *Hypervisor) AddHost(t TB, az, instanceType string) *SimHost {
	t.Helper()
	s := h.Subnet(az)
	if s.ID == "" {
		t.Fatalf("hypervisor: no subnet in %s", az)
	}
	out, err := h.EC2.RunInstances(context.Background(), &ec2.RunInstancesInput{
		ImageId: aws.String("ami-12c6146b"), MinCount: aws.Int32(1), MaxCount: aws.Int32(1),
		InstanceType: types.InstanceType(instanceType), SubnetId: aws.String(s.ID),
	})
	if err != nil {
		t.Fatalf("hypervisor: run instance: %v", err)
	}
	in := out.Instances[0]
	host := &SimHost{
		InstanceID: aws.ToString(in.InstanceId), InstanceType: instanceType, AZ: az, SubnetID: s.ID,
		PrimaryIP: aws.ToString(in.PrivateIpAddress),
	}
	for _, n := range in.NetworkInterfaces {
		host.PrimaryENI, host.PrimaryMAC = aws.ToString(n.NetworkInterfaceId), aws.ToString(n.MacAddress)
	}
	h.mu.Lock()
	host.Name = fmt.Sprintf("thost%s%d", h.run, len(h.hosts))
	h.mu.Unlock()
	if host.NS, err = newNamedNS(host.Name); err != nil {
		t.Fatalf("hypervisor: host netns: %v", err)
	}
	h.mu.Lock()
	h.hosts = append(h.hosts, host)
	h.mu.Unlock()
	hh, err := netlink.NewHandleAt(host.NS)
	if err != nil {
		t.Fatalf("hypervisor: host handle: %v", err)
	}
	defer hh.Close()
	if err := setupNS(host.NS, hh); err != nil {
		t.Fatalf("hypervisor: host netns setup: %v", err)
	}
	// Plug the primary ENI now, configured the way the AMI's DHCP would.
	if err := h.sync(context.Background()); err != nil {
		t.Fatalf("hypervisor: %v", err)
	}
	eth0, err := hh.LinkByName("eth0")
	if err != nil {
		t.Fatalf("hypervisor: primary ENI link: %v", err)
	}
	ip := netip.MustParseAddr(host.PrimaryIP)
	if err := hh.AddrAdd(eth0, &netlink.Addr{IPNet: &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(s.CIDR.Bits(), 32)}}); err != nil {
		t.Fatalf("hypervisor: primary address: %v", err)
	}
	if err := hh.LinkSetUp(eth0); err != nil {
		t.Fatalf("hypervisor: eth0 up: %v", err)
	}
	if err := hh.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: s.Gateway.AsSlice()}); err != nil {
		t.Fatalf("hypervisor: default route: %v", err)
	}
	return host
}

// SetPrimaryLink takes host's primary link (eth0, the primary ENI) down in
// the host's netns, or brings it back up: a real network cut of the host,
// as a pulled cable or a dead NIC. Down, the kernel drops the link's
// routes, so connections over it stall and new ones fail (the network is
// unreachable); up restores the link and its default route via the
// subnet gateway. Task traffic leaves through the task ENIs' own links
// and tables, and is not touched.
func (h *Hypervisor) SetPrimaryLink(host *SimHost, up bool) error {
	hh, err := netlink.NewHandleAt(host.NS)
	if err != nil {
		return fmt.Errorf("hypervisor: %s handle: %w", host.Name, err)
	}
	defer hh.Close()
	eth0, err := hh.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("hypervisor: %s primary link: %w", host.Name, err)
	}
	if !up {
		if err := hh.LinkSetDown(eth0); err != nil {
			return fmt.Errorf("hypervisor: %s eth0 down: %w", host.Name, err)
		}
		return nil
	}
	if err := hh.LinkSetUp(eth0); err != nil {
		return fmt.Errorf("hypervisor: %s eth0 up: %w", host.Name, err)
	}
	gw := h.Subnet(host.AZ).Gateway
	if err := hh.RouteReplace(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: gw.AsSlice()}); err != nil {
		return fmt.Errorf("hypervisor: %s default route: %w", host.Name, err)
	}
	return nil
}

// ListenFabric listens on addr (TCP) inside the VPC fabric's netns: a
// service in the VPC, which the simulated hosts reach over their links
// (at their subnet's gateway address, say). The listener's accepted
// connections are the fabric's; dial out of it as usual.
func (h *Hypervisor) ListenFabric(addr string) (net.Listener, error) {
	var l net.Listener
	err := inNS(h.fabric, func() (err error) {
		l, err = net.Listen("tcp", addr)
		return err
	})
	return l, err
}

// DialContext dials addr from inside the host's netns, so the connection
// goes out over the host's own links (and a link down cuts it).
func (s *SimHost) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := inNS(s.NS, func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// Errors returns what went wrong while watching moto, if anything.
func (h *Hypervisor) Errors() []error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]error(nil), h.errs...)
}

// Plugged returns the ENI ids currently plugged into host.
func (h *Hypervisor) Plugged(host *SimHost) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for id, p := range h.plugged {
		if p.host == host {
			out = append(out, id)
		}
	}
	return out
}

// Duplicates lists the addresses moto gave to two ENIs at once. Real EC2
// never does; moto picks secondary addresses at random without checking,
// so in a /18 a few dozen addresses collide now and then. Only a test whose
// traffic goes to such an address is affected (and fails on that traffic);
// the rest is not, so these are reported, not errors.
func (h *Hypervisor) Duplicates() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.dups)
}

// dup records a duplicate address once; callers hold h.mu.
func (h *Hypervisor) dup(msg string) {
	if !slices.Contains(h.dups, msg) && len(h.dups) < 20 {
		h.dups = append(h.dups, msg)
	}
}

func (h *Hypervisor) watch(ctx context.Context) {
	defer close(h.done)
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		if err := h.sync(ctx); err != nil && ctx.Err() == nil {
			h.mu.Lock()
			if len(h.errs) < 20 {
				h.errs = append(h.errs, err)
			}
			h.mu.Unlock()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// sync makes the plugged links and fabric neighbours match moto.
func (h *Hypervisor) sync(ctx context.Context) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.hosts) == 0 {
		return nil
	}
	byInstance := map[string]*SimHost{}
	var ids []string
	for _, s := range h.hosts {
		byInstance[s.InstanceID] = s
		ids = append(ids, s.InstanceID)
	}
	out, err := h.EC2.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{
		Filters: []types.Filter{{Name: aws.String("attachment.instance-id"), Values: ids}},
	})
	if err != nil {
		return fmt.Errorf("describe ENIs: %w", err)
	}
	// Unplug first: a new ENI may take a detached one's device index.
	attached := map[string]bool{}
	for _, n := range out.NetworkInterfaces {
		if n.Attachment != nil && byInstance[aws.ToString(n.Attachment.InstanceId)] != nil {
			attached[aws.ToString(n.NetworkInterfaceId)] = true
		}
	}
	for id, p := range h.plugged {
		if attached[id] {
			continue
		}
		if l, err := h.fh.LinkByName(p.fabEnd); err == nil {
			if err := h.fh.LinkDel(l); err != nil {
				return fmt.Errorf("unplug %s: %w", id, err)
			}
		}
		delete(h.plugged, id)
	}
	wantNeigh := map[string]neighKey{}
	for _, n := range out.NetworkInterfaces {
		if n.Attachment == nil {
			continue
		}
		host := byInstance[aws.ToString(n.Attachment.InstanceId)]
		if host == nil {
			continue
		}
		id := aws.ToString(n.NetworkInterfaceId)
		var sub Subnet
		for _, s := range h.Subnets {
			if s.ID == aws.ToString(n.SubnetId) {
				sub = s
			}
		}
		if sub.ID == "" {
			continue
		}
		if _, ok := h.plugged[id]; !ok {
			p, err := h.plug(host, n, sub)
			if err != nil {
				return err
			}
			h.plugged[id] = p
		}
		ips := []string{}
		for _, a := range n.PrivateIpAddresses {
			ips = append(ips, aws.ToString(a.PrivateIpAddress))
		}
		for _, a := range n.Ipv6Addresses {
			ips = append(ips, aws.ToString(a.Ipv6Address))
		}
		for _, ip := range ips {
			k := neighKey{ip: ip, mac: aws.ToString(n.MacAddress), bridge: sub.Bridge}
			if o, dup := wantNeigh[ip]; dup && o != k {
				h.dup(fmt.Sprintf("moto gave %s to two ENIs (%s and %s): traffic to it is ambiguous", ip, o.mac, k.mac))
			}
			wantNeigh[ip] = k
		}
	}
	// Trust the kernel, not our cache: entries can be flushed under us.
	have := map[string]bool{}
	for _, s := range h.Subnets {
		if br, err := h.fh.LinkByName(s.Bridge); err == nil {
			ns, _ := h.fh.NeighList(br.Attrs().Index, netlink.FAMILY_ALL)
			for _, n := range ns {
				if n.State&netlink.NUD_PERMANENT != 0 {
					have[n.IP.String()+" "+n.HardwareAddr.String()] = true
				}
			}
		}
	}
	for ip, k := range h.neigh {
		if w, ok := wantNeigh[ip]; ok && w == k && have[ip+" "+k.mac] {
			continue
		}
		if br, err := h.fh.LinkByName(k.bridge); err == nil {
			_ = h.fh.NeighDel(&netlink.Neigh{LinkIndex: br.Attrs().Index, IP: net.ParseIP(ip), Family: family(ip)})
		}
		delete(h.neigh, ip)
	}
	for ip, k := range wantNeigh {
		if _, ok := h.neigh[ip]; ok {
			continue
		}
		br, err := h.fh.LinkByName(k.bridge)
		if err != nil {
			return fmt.Errorf("bridge %s: %w", k.bridge, err)
		}
		mac, _ := net.ParseMAC(k.mac)
		if err := h.fh.NeighSet(&netlink.Neigh{
			LinkIndex: br.Attrs().Index, Family: family(ip), State: netlink.NUD_PERMANENT,
			IP: net.ParseIP(ip), HardwareAddr: mac,
		}); err != nil {
			return fmt.Errorf("neighbour %s: %w", ip, err)
		}
		h.neigh[ip] = k
	}
	return nil
}

// plug creates the veth pair for one attached ENI: eth<device> with the
// ENI's MAC in the host, the peer on the subnet's bridge in the fabric.
func (h *Hypervisor) plug(host *SimHost, n types.NetworkInterface, sub Subnet) (*plug, error) {
	mac, err := net.ParseMAC(aws.ToString(n.MacAddress))
	if err != nil {
		return nil, fmt.Errorf("ENI %s MAC: %w", aws.ToString(n.NetworkInterfaceId), err)
	}
	dev := int(aws.ToInt32(n.Attachment.DeviceIndex))
	p := &plug{host: host, mac: mac.String(), subnet: sub.ID, device: dev, hostEnd: fmt.Sprintf("eth%d", dev)}
	// Fabric end names must be unique in the fabric: the ENI id's tail.
	id := aws.ToString(n.NetworkInterfaceId)
	p.fabEnd = "v" + id[len(id)-min(len(id), 12):]
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: p.hostEnd, HardwareAddr: mac, Namespace: netlink.NsFd(int(host.NS)), MTU: 1500},
		PeerName:      p.fabEnd,
		PeerNamespace: netlink.NsFd(int(h.fabric)),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		return nil, fmt.Errorf("plug ENI %s into %s: %w", id, host.Name, err)
	}
	fe, err := h.fh.LinkByName(p.fabEnd)
	if err != nil {
		return nil, fmt.Errorf("fabric end of %s: %w", id, err)
	}
	br, err := h.fh.LinkByName(sub.Bridge)
	if err != nil {
		return nil, err
	}
	if err := h.fh.LinkSetMaster(fe, br); err != nil {
		return nil, fmt.Errorf("enslave %s: %w", p.fabEnd, err)
	}
	if err := h.fh.LinkSetUp(fe); err != nil {
		return nil, err
	}
	return p, nil
}

func (h *Hypervisor) cleanup() {
	if h.cancel != nil {
		h.cancel()
		<-h.done
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, s := range h.hosts {
		s.NS.Close()
		_ = netns.DeleteNamed(s.Name)
	}
	if h.fh != nil {
		h.fh.Close()
	}
	h.fabric.Close()
	_ = netns.DeleteNamed(h.Fabric)
}

// netnsRunDirShared makes /run/netns a shared mount of itself, as
// `ip netns add` does on first use. Without it, the first `ip netns add`
// after our namespaces exist bind-mounts /run/netns over them, hiding
// their nsfs mounts, and DeleteNamed can no longer remove them.
func netnsRunDirShared() error {
	const dir = "/run/netns"
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if unix.Mount("", dir, "none", unix.MS_SHARED|unix.MS_REC, "") == nil {
		return nil // already a mount point
	}
	if err := unix.Mount(dir, dir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind %s: %w", dir, err)
	}
	return unix.Mount("", dir, "none", unix.MS_SHARED|unix.MS_REC, "")
}

// newNamedNS creates /run/netns/name without leaving the calling thread in it.
func newNamedNS(name string) (netns.NsHandle, error) {
	if err := netnsRunDirShared(); err != nil {
		return netns.None(), fmt.Errorf("netns dir: %w", err)
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return netns.None(), err
	}
	defer orig.Close()
	ns, err := netns.NewNamed(name)
	if serr := netns.Set(orig); serr != nil {
		// The thread is stuck in the new netns; never unlock it.
		runtime.LockOSThread()
		return netns.None(), fmt.Errorf("restore netns: %w", serr)
	}
	return ns, err
}

// setupNS brings lo up and turns on IPv4 forwarding (without redirects) in ns.
func setupNS(ns netns.NsHandle, nh *netlink.Handle) error {
	lo, err := nh.LinkByName("lo")
	if err != nil {
		return err
	}
	if err := nh.LinkSetUp(lo); err != nil {
		return err
	}
	return inNS(ns, func() error {
		for p, v := range map[string]string{
			"/proc/sys/net/ipv4/ip_forward":                  "1",
			"/proc/sys/net/ipv4/conf/all/send_redirects":     "0",
			"/proc/sys/net/ipv4/conf/default/send_redirects": "0",
			"/proc/sys/net/ipv4/conf/all/rp_filter":          "0",
			"/proc/sys/net/ipv4/conf/default/rp_filter":      "0",
			"/proc/sys/net/ipv6/conf/all/forwarding":         "1",
		} {
			if err := os.WriteFile(p, []byte(v), 0o644); err != nil {
				return err
			}
		}
		return nil
	})
}

func family(ip string) int {
	if a, err := netip.ParseAddr(ip); err == nil && a.Is6() {
		return netlink.FAMILY_V6
	}
	return netlink.FAMILY_V4
}

// inNS runs fn on a thread switched into ns.
func inNS(ns netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			errc <- err
			return
		}
		err = fn()
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		} // otherwise the locked thread dies with this goroutine
		errc <- err
	}()
	return <-errc
}

// SimAgentNetwork shapes the network part of the config of an agent that
// runs as a simulated host's agent.
type SimAgentNetwork struct {
	// Endpoint is EC2: moto, or a fault proxy in front of it.
	Endpoint string
	// SecurityGroups are the defaults for tasks that name none.
	SecurityGroups []string
	WarmIPs        int
	MinWarmIPs     int
	// ReleaseAfter and ReuseCooldown tune the pools; zero = the agent's defaults.
	ReleaseAfter  time.Duration
	ReuseCooldown time.Duration
	DNS           []string
}

// AgentConfig is agent YAML for the ec2 provider on this instance: EC2 at
// n.Endpoint with moto's static credentials, the data plane in the host's
// netns, task namespaces under {{DIR}}/netns (see StartAgent).
func (h *SimHost) AgentConfig(n SimAgentNetwork) string {
	var b strings.Builder
	fmt.Fprintf(&b, "network:\n  provider: ec2\n  netnsDir: \"{{DIR}}/netns\"\n  hostNetNS: %q\n", h.NetNSPath())
	if len(n.DNS) > 0 {
		fmt.Fprintf(&b, "  dns: [%s]\n", strings.Join(n.DNS, ", "))
	}
	fmt.Fprintf(&b, "  ec2:\n    endpoint: %q\n    region: %s\n    instanceID: %s\n    accessKeyID: testing\n    secretAccessKey: testing\n",
		n.Endpoint, strings.TrimRight(h.AZ, "abcdefghijklmnopqrstuvwxyz"), h.InstanceID)
	fmt.Fprintf(&b, "    warmIPs: %d\n    minWarmIPs: %d\n", n.WarmIPs, n.MinWarmIPs)
	if len(n.SecurityGroups) > 0 {
		fmt.Fprintf(&b, "    defaultSecurityGroups: [%s]\n", strings.Join(n.SecurityGroups, ", "))
	}
	if n.ReleaseAfter > 0 {
		fmt.Fprintf(&b, "    poolReleaseAfter: %s\n", n.ReleaseAfter)
	}
	if n.ReuseCooldown > 0 {
		fmt.Fprintf(&b, "    reuseCooldown: %s\n", n.ReuseCooldown)
	}
	return b.String()
}
