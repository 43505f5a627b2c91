package vpc

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/titus-agent/titus-agent/pkg/task"
)

// ENIRouteTable is the policy-routing table of the ENI at a device index
// (the AWS VPC CNI convention: device index + 1, here offset to stay clear
// of tables other software uses).
func ENIRouteTable(deviceIndex int) int { return 1000 + deviceIndex }

// taskGateway is the next hop inside an ec2-mode task netns: a link-local
// address that only exists inside the task's namespace (never used from the
// host's), answered by a static neighbour entry for the host-side veth.
var taskGateway = netip.MustParseAddr("169.254.1.1")

// taskGatewayV6 is the IPv6 next hop inside a task netns, the same way.
var taskGatewayV6 = netip.MustParseAddr("fe80::1")

// VPCRouterV6 is the subnet router's IPv6 address the ENI tables route
// through: link-local, as a VPC router's is (the simulated VPC's fabric
// answers on it too).
var VPCRouterV6 = netip.MustParseAddr("fe80::1")

// DataPlaneConfig configures the wiring.
type DataPlaneConfig struct {
	// NetNSDir holds the task namespaces' bind mounts.
	NetNSDir string
	// FilesDir holds per-task resolv.conf, hosts and hostname.
	FilesDir string
	// HostNetNS is the host's netns path; empty = this process's.
	HostNetNS string
	// Bridge is the local provider's bridge (local mode only).
	Bridge string
	// IsolatePorts makes every task's port on Bridge an isolated one
	// (IFLA_BRPORT_ISOLATED): the bridge forwards nothing between two
	// isolated ports, so this agent's tasks do not reach each other
	// across it, while other bridges on the machine are not touched. Set
	// when the firewall keeps tasks apart (Firewall.IsolatesPorts).
	IsolatePorts bool
	// DNS servers for the tasks' resolv.conf; empty = the host's.
	DNS []string
	MTU int
}

// DataPlane wires task addresses into network namespaces.
type DataPlane struct {
	cfg    DataPlaneConfig
	host   netlinker
	ns     namespaces
	sysctl func(path, value string) error
	guard  sourceGuards // in the host netns
	pool   *NetNSPool   // nil: every Setup makes its namespace
}

// netlinker is the netlink calls the data plane makes in one network
// namespace; *netlink.Handle has them all.
type netlinker interface {
	LinkByName(name string) (netlink.Link, error)
	LinkList() ([]netlink.Link, error)
	LinkAdd(link netlink.Link) error
	LinkDel(link netlink.Link) error
	LinkSetUp(link netlink.Link) error
	LinkSetName(link netlink.Link, name string) error
	LinkSetMTU(link netlink.Link, mtu int) error
	LinkSetMaster(link, master netlink.Link) error
	LinkSetIsolated(link netlink.Link, isolated bool) error
	LinkSetNsFd(link netlink.Link, fd int) error
	AddrReplace(link netlink.Link, addr *netlink.Addr) error
	AddrList(link netlink.Link, family int) ([]netlink.Addr, error)
	AddrDel(link netlink.Link, addr *netlink.Addr) error
	RouteReplace(route *netlink.Route) error
	RouteDel(route *netlink.Route) error
	NeighSet(neigh *netlink.Neigh) error
	RuleAdd(rule *netlink.Rule) error
	RuleDel(rule *netlink.Rule) error
	RuleList(family int) ([]netlink.Rule, error)
	Close()
}

// namespaces makes, opens and removes the tasks' network namespaces.
type namespaces interface {
	// Ensure creates the namespace mounted at path unless one is there.
	Ensure(path string) error
	// Open returns netlink inside the namespace at path and a descriptor
	// of the namespace (to create links in it); done releases both.
	Open(path string) (nl netlinker, fd int, done func(), err error)
	// Remove unmounts and deletes the namespace at path; a missing one is
	// not an error.
	Remove(path string) error
	// Exists says whether a namespace is mounted at path.
	Exists(path string) bool
	// Adopt mounts the namespace at from at to as well, then removes it
	// from from.
	Adopt(from, to string) error
}

// bindMounts are namespaces bind-mounted on files (ip-netns style).
type bindMounts struct{}

func (bindMounts) Ensure(path string) error { return ensureNetNS(path) }
func (bindMounts) Remove(path string) error { return removeNetNS(path) }
func (bindMounts) Exists(path string) bool  { return isNetNS(path) }

func (bindMounts) Adopt(from, to string) error {
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		return fmt.Errorf("vpc: netns dir: %w", err)
	}
	f, err := os.OpenFile(to, os.O_CREATE|os.O_RDONLY, 0o444)
	if err != nil {
		return fmt.Errorf("vpc: netns file: %w", err)
	}
	f.Close()
	if err := unix.Mount(from, to, "none", unix.MS_BIND, ""); err != nil {
		os.Remove(to)
		return fmt.Errorf("vpc: bind pooled netns: %w", err)
	}
	return removeNetNS(from)
}

func (bindMounts) Open(path string) (netlinker, int, func(), error) {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return nil, 0, nil, fmt.Errorf("vpc: open netns: %w", err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		ns.Close()
		return nil, 0, nil, fmt.Errorf("vpc: netlink in task netns: %w", err)
	}
	return h, int(ns), func() { h.Close(); ns.Close() }, nil
}

func writeSysctl(path, value string) error { return os.WriteFile(path, []byte(value), 0o644) }

// NewDataPlane opens netlink in the host netns.
func NewDataPlane(cfg DataPlaneConfig) (*DataPlane, error) {
	if cfg.NetNSDir == "" || cfg.FilesDir == "" {
		return nil, errors.New("vpc: NetNSDir and FilesDir are required")
	}
	if cfg.MTU == 0 {
		cfg.MTU = 1500
	}
	h, err := handleAt(cfg.HostNetNS)
	if err != nil {
		return nil, err
	}
	for _, d := range []string{cfg.NetNSDir, cfg.FilesDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("vpc: %w", err)
		}
	}
	return &DataPlane{cfg: cfg, host: h, ns: bindMounts{}, sysctl: writeSysctl, guard: netlinkGuards{ns: cfg.HostNetNS}}, nil
}

func handleAt(nsPath string) (*netlink.Handle, error) {
	if nsPath == "" {
		return netlink.NewHandle()
	}
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		return nil, fmt.Errorf("vpc: netns %s: %w", nsPath, err)
	}
	defer ns.Close()
	return netlink.NewHandleAt(ns)
}

// Close releases netlink.
func (d *DataPlane) Close() { d.host.Close() }

// HostVeth is the host-side veth name of a task (<= 15 characters).
func HostVeth(taskID string) string { return "tt" + shortHash(taskID) }

func peerVeth(taskID string) string { return "tp" + shortHash(taskID) }

func shortHash(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])[:10]
}

// NetNSPath is where a task's namespace is bind-mounted.
func (d *DataPlane) NetNSPath(taskID string) string { return filepath.Join(d.cfg.NetNSDir, taskID) }

// Setup creates the task's netns and veth and puts the address in it. It
// is idempotent: an existing netns or veth is reused.
func (d *DataPlane) Setup(ctx context.Context, a Allocation) (*task.NetworkAttachment, error) {
	nsPath := d.NetNSPath(a.TaskID)
	d.claimWarm(a.TaskID) // a pooled namespace and veth, if there is one
	if err := d.ns.Ensure(nsPath); err != nil {
		return nil, err
	}
	inner, nsFd, done, err := d.ns.Open(nsPath)
	if err != nil {
		return nil, err
	}
	defer done()

	hostName := HostVeth(a.TaskID)
	host, err := d.host.LinkByName(hostName)
	if err != nil {
		// The peer is born inside the task netns as eth0: moving a link
		// between namespaces afterwards costs the kernel an RCU grace
		// period, the bulk of a warm setup.
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: hostName, MTU: d.cfg.MTU}, PeerName: "eth0", PeerNamespace: netlink.NsFd(nsFd)}
		if err := d.host.LinkAdd(veth); err != nil && !errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("vpc: add veth: %w", err)
		}
		if host, err = d.host.LinkByName(hostName); err != nil {
			return nil, fmt.Errorf("vpc: veth: %w", err)
		}
	}
	if peer, err := d.host.LinkByName(peerVeth(a.TaskID)); err == nil {
		if err := d.host.LinkSetNsFd(peer, nsFd); err != nil {
			return nil, fmt.Errorf("vpc: move veth into task netns: %w", err)
		}
	}
	eth, err := inner.LinkByName("eth0")
	if err != nil {
		if eth, err = inner.LinkByName(peerVeth(a.TaskID)); err != nil {
			return nil, fmt.Errorf("vpc: task veth missing: %w", err)
		}
		if err := inner.LinkSetName(eth, "eth0"); err != nil {
			return nil, fmt.Errorf("vpc: rename task veth: %w", err)
		}
	}
	if err := d.dropStale(inner, eth, host, a); err != nil {
		return nil, err
	}
	// The source guard (an nftables transaction) goes on alongside
	// the wiring; Setup returns only once both are done.
	guarded := make(chan error, 1)
	go func() { guarded <- d.guardSources(ctx, hostName, eth.Attrs().HardwareAddr, a) }()
	if lo, err := inner.LinkByName("lo"); err == nil {
		_ = inner.LinkSetUp(lo)
	}
	err = d.wireTask(inner, eth, host, a)
	if err == nil {
		err = d.wireHost(host, a)
	}
	if gerr := <-guarded; err == nil {
		err = gerr
	}
	if err != nil {
		return nil, err
	}
	att := &task.NetworkAttachment{
		NetNSPath: nsPath, IPv4: a.IPv4.Addr().String(), IPv6: ipv6String(a.IPv6), MAC: eth.Attrs().HardwareAddr.String(), Gateway: a.Gateway.String(),
		ENIID: a.ENIID, DeviceIndex: a.DeviceIndex, SubnetID: a.SubnetID, VPCID: a.VPCID,
		SecurityGroupIDs: a.SecurityGroupIDs, AvailabilityZone: a.AvailabilityZone, Region: a.Region,
	}
	if a.MAC != "" {
		att.MAC = a.MAC // the VPC's view: the ENI the address lives on
	}
	if err := d.writeFiles(a, att); err != nil {
		return nil, err
	}
	return att, nil
}

// dropStale removes from the task's eth0, and the host's route to it via
// the task's veth, every global address that is not a's. A fresh or pooled
// namespace has none. An earlier attempt of this launch may have wired
// another address: the ec2 provider writes its allocation record while
// the address is wired (AllocateDeferred), so an agent that crashed before
// the write forgot the allocation, and the resumed launch may be given a
// different address while the first goes to another task. The old
// address's policy rule is not this task's to remove (the other task may
// hold the same rule); the restarted agent's reconcile drops rules of
// addresses no task holds, and the source guard, replaced below, lets the
// task send from its new address only.
func (d *DataPlane) dropStale(inner netlinker, eth, host netlink.Link, a Allocation) error {
	addrs, err := inner.AddrList(eth, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("vpc: task addresses: %w", err)
	}
	for _, ad := range addrs {
		if ad.IPNet == nil {
			continue
		}
		ip, ok := netip.AddrFromSlice(ad.IP)
		ip = ip.Unmap()
		if !ok || !ip.IsGlobalUnicast() || ip == a.IPv4.Addr() || ip == a.IPv6 {
			continue
		}
		if err := inner.AddrDel(eth, &ad); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return fmt.Errorf("vpc: drop stale task address %s: %w", ip, err)
		}
		if !a.routed() {
			continue
		}
		dst := prefixToIPNet(netip.PrefixFrom(ip, ip.BitLen()))
		if err := d.host.RouteDel(&netlink.Route{LinkIndex: host.Attrs().Index, Dst: dst, Scope: netlink.SCOPE_LINK}); err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("vpc: drop host route to stale address %s: %w", ip, err)
		}
	}
	return nil
}

// wireTask sets the address and default route inside the task netns.
func (d *DataPlane) wireTask(inner netlinker, eth, host netlink.Link, a Allocation) error {
	prefix := a.IPv4
	if a.routed() {
		prefix = netip.PrefixFrom(a.IPv4.Addr(), 32)
	}
	addr := &netlink.Addr{IPNet: prefixToIPNet(prefix)}
	if err := inner.AddrReplace(eth, addr); err != nil {
		return fmt.Errorf("vpc: task address: %w", err)
	}
	if err := inner.LinkSetUp(eth); err != nil {
		return fmt.Errorf("vpc: task link up: %w", err)
	}
	gw := a.Gateway
	if a.routed() {
		gw = taskGateway
		if err := inner.RouteReplace(&netlink.Route{LinkIndex: eth.Attrs().Index, Dst: prefixToIPNet(netip.PrefixFrom(gw, 32)), Scope: netlink.SCOPE_LINK}); err != nil {
			return fmt.Errorf("vpc: task gateway route: %w", err)
		}
		if err := inner.NeighSet(&netlink.Neigh{LinkIndex: eth.Attrs().Index, State: netlink.NUD_PERMANENT, IP: net.IP(gw.AsSlice()), HardwareAddr: host.Attrs().HardwareAddr}); err != nil {
			return fmt.Errorf("vpc: task gateway neighbour: %w", err)
		}
	}
	def := &netlink.Route{LinkIndex: eth.Attrs().Index, Gw: net.IP(gw.AsSlice()), Dst: prefixToIPNet(netip.MustParsePrefix("0.0.0.0/0"))}
	if err := inner.RouteReplace(def); err != nil {
		return fmt.Errorf("vpc: task default route: %w", err)
	}
	if a.IPv6.IsValid() {
		return wireTaskV6(inner, eth, host, a.IPv6)
	}
	return nil
}

// wireTaskV6 gives the task its IPv6 /128 (no DAD: the VPC hands it out
// once) and a default route via a link-local gateway answered, like the
// IPv4 one, by a static neighbour for the host-side veth.
func wireTaskV6(inner netlinker, eth, host netlink.Link, ip netip.Addr) error {
	addr := &netlink.Addr{IPNet: prefixToIPNet(netip.PrefixFrom(ip, 128)), Flags: unix.IFA_F_NODAD}
	if err := inner.AddrReplace(eth, addr); err != nil {
		return fmt.Errorf("vpc: task IPv6 address: %w", err)
	}
	gw := net.IP(taskGatewayV6.AsSlice())
	if err := inner.NeighSet(&netlink.Neigh{LinkIndex: eth.Attrs().Index, Family: netlink.FAMILY_V6, State: netlink.NUD_PERMANENT, IP: gw, HardwareAddr: host.Attrs().HardwareAddr}); err != nil {
		return fmt.Errorf("vpc: task IPv6 gateway neighbour: %w", err)
	}
	def := &netlink.Route{LinkIndex: eth.Attrs().Index, Gw: gw, Dst: prefixToIPNet(netip.MustParsePrefix("::/0")), Flags: int(netlink.FLAG_ONLINK)}
	if err := inner.RouteReplace(def); err != nil {
		return fmt.Errorf("vpc: task IPv6 default route: %w", err)
	}
	return nil
}

// wireHost attaches the host side: a bridge port (local) or a /32 route and
// a policy rule to the ENI's table (ec2).
func (d *DataPlane) wireHost(host netlink.Link, a Allocation) error {
	if !a.routed() {
		br, err := d.host.LinkByName(d.cfg.Bridge)
		if err != nil {
			return fmt.Errorf("vpc: bridge %s: %w", d.cfg.Bridge, err)
		}
		if err := d.host.LinkSetMaster(host, br); err != nil {
			return fmt.Errorf("vpc: attach veth to bridge: %w", err)
		}
		// Before the port is up, so it never forwards unisolated; set
		// either way, so a re-wired task follows the current policy.
		if err := d.host.LinkSetIsolated(host, d.cfg.IsolatePorts); err != nil {
			return fmt.Errorf("vpc: bridge port isolation: %w", err)
		}
		return d.host.LinkSetUp(host)
	}
	if err := d.host.LinkSetUp(host); err != nil {
		return fmt.Errorf("vpc: host veth up: %w", err)
	}
	dst := prefixToIPNet(netip.PrefixFrom(a.IPv4.Addr(), 32))
	if err := d.host.RouteReplace(&netlink.Route{LinkIndex: host.Attrs().Index, Dst: dst, Scope: netlink.SCOPE_LINK}); err != nil {
		return fmt.Errorf("vpc: host route to task: %w", err)
	}
	for _, rule := range taskRules(a) {
		if err := d.host.RuleAdd(rule); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("vpc: policy rule: %w", err)
		}
	}
	if a.IPv6.IsValid() {
		dst6 := prefixToIPNet(netip.PrefixFrom(a.IPv6, 128))
		if err := d.host.RouteReplace(&netlink.Route{LinkIndex: host.Attrs().Index, Dst: dst6, Scope: netlink.SCOPE_LINK}); err != nil {
			return fmt.Errorf("vpc: host IPv6 route to task: %w", err)
		}
	}
	// proxy_arp lets the task's link-local gateway resolve; the static
	// neighbour above already does, this covers ARP refreshes.
	_ = d.sysctl("/proc/sys/net/ipv4/conf/"+host.Attrs().Name+"/proxy_arp", "1")
	return nil
}

// taskRulePriority is the priority of every task's policy rule.
const taskRulePriority = 20000

// taskRules are "from task IP → ENI table", one per address family.
func taskRules(a Allocation) []*netlink.Rule {
	var out []*netlink.Rule
	for _, p := range []netip.Prefix{netip.PrefixFrom(a.IPv4.Addr(), 32), netip.PrefixFrom(a.IPv6, 128)} {
		if !p.Addr().IsValid() {
			continue
		}
		r := netlink.NewRule()
		r.Src = prefixToIPNet(p)
		r.Family = netlink.FAMILY_V4
		if p.Addr().Is6() {
			r.Family = netlink.FAMILY_V6
		}
		r.Table = a.RouteTable
		r.Priority = taskRulePriority
		out = append(out, r)
	}
	return out
}

// Teardown removes the task's veth, rule, netns and files. Idempotent; it
// works from an Allocation or, if a is zero, from names alone.
func (d *DataPlane) Teardown(ctx context.Context, taskID string, a *Allocation) error {
	var errs []error
	if a != nil && a.routed() && a.IPv4.IsValid() {
		for _, r := range taskRules(*a) {
			if err := d.host.RuleDel(r); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ESRCH) {
				errs = append(errs, fmt.Errorf("rule: %w", err))
			}
		}
	}
	if l, err := d.host.LinkByName(HostVeth(taskID)); err == nil {
		if err := d.host.LinkDel(l); err != nil {
			errs = append(errs, fmt.Errorf("veth: %w", err))
		}
	}
	// After the veth: a guard outlives its device, never the reverse.
	if err := d.unguard(ctx, HostVeth(taskID)); err != nil {
		errs = append(errs, err)
	}
	// What the pool prepared in a namespace it handed out goes with it
	// (a task torn down before its metadata listener took it over).
	d.pool.releaseAt(d.NetNSPath(taskID))
	if err := d.ns.Remove(d.NetNSPath(taskID)); err != nil {
		errs = append(errs, err)
	}
	if err := os.RemoveAll(filepath.Join(d.cfg.FilesDir, taskID)); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return fmt.Errorf("vpc: teardown %s: %w", taskID, errors.Join(errs...))
	}
	return nil
}

// Leftovers lists namespaces and veths that look like ours but belong to
// no task in keep.
func (d *DataPlane) Leftovers(keep map[string]bool) (netnsIDs []string, links []string) {
	keepVeth := map[string]bool{}
	for id := range keep {
		keepVeth[HostVeth(id)] = true
	}
	entries, _ := os.ReadDir(d.cfg.NetNSDir)
	for _, e := range entries {
		if !keep[e.Name()] {
			netnsIDs = append(netnsIDs, e.Name())
		}
	}
	ls, _ := d.host.LinkList()
	for _, l := range ls {
		n := l.Attrs().Name
		if l.Type() == "veth" && len(n) == 12 && (strings.HasPrefix(n, "tt") || strings.HasPrefix(n, "tp")) && !keepVeth[n] && !keepVeth["tt"+n[2:]] {
			links = append(links, n)
		}
	}
	return netnsIDs, links
}

// LeftoverRules lists task policy rules whose source address is not in held.
func (d *DataPlane) LeftoverRules(held map[netip.Addr]bool) []netlink.Rule {
	var out []netlink.Rule
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rules, _ := d.host.RuleList(fam)
		for _, r := range rules {
			if r.Priority != taskRulePriority || r.Src == nil {
				continue
			}
			if ip, ok := netip.AddrFromSlice(r.Src.IP); ok && !held[ip.Unmap()] {
				out = append(out, r)
			}
		}
	}
	return out
}

// RemoveRule deletes a policy rule (for reconciliation).
func (d *DataPlane) RemoveRule(r netlink.Rule) error {
	if err := d.host.RuleDel(&r); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("vpc: remove rule from %s: %w", r.Src, err)
	}
	return nil
}

// RemoveLink deletes a host link by name (for reconciliation).
func (d *DataPlane) RemoveLink(name string) error {
	l, err := d.host.LinkByName(name)
	if err != nil {
		return nil
	}
	if err := d.host.LinkDel(l); err != nil {
		return err
	}
	if strings.HasPrefix(name, taskVethPrefix) {
		return d.unguard(context.Background(), name)
	}
	return nil
}

// RemoveNetNS unmounts and deletes a task namespace by task id.
func (d *DataPlane) RemoveNetNS(taskID string) error {
	_ = os.RemoveAll(filepath.Join(d.cfg.FilesDir, taskID))
	return d.ns.Remove(d.NetNSPath(taskID))
}

func (d *DataPlane) writeFiles(a Allocation, att *task.NetworkAttachment) error {
	dir := filepath.Join(d.cfg.FilesDir, a.TaskID)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("vpc: files: %w", err)
	}
	resolv := resolvConf(d.cfg.DNS)
	hostname := a.TaskID
	if len(hostname) > 63 {
		hostname = hostname[:63]
	}
	hosts := fmt.Sprintf("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n%s\t%s\n", a.IPv4.Addr(), hostname)
	if a.IPv6.IsValid() {
		hosts += fmt.Sprintf("%s\t%s\n", a.IPv6, hostname)
	}
	for name, body := range map[string]string{"resolv.conf": resolv, "hosts": hosts, "hostname": hostname + "\n"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			return fmt.Errorf("vpc: write %s: %w", name, err)
		}
	}
	att.ResolvConfPath = filepath.Join(dir, "resolv.conf")
	att.HostsPath = filepath.Join(dir, "hosts")
	att.HostnamePath = filepath.Join(dir, "hostname")
	return nil
}

// resolvConf uses the configured servers, else the host's non-loopback
// ones (a loopback resolver on the host is unreachable from a task).
func resolvConf(dns []string) string {
	var b strings.Builder
	servers := dns
	if len(servers) == 0 {
		host, _ := os.ReadFile("/etc/resolv.conf")
		for _, line := range strings.Split(string(host), "\n") {
			f := strings.Fields(line)
			if len(f) == 2 && f[0] == "nameserver" {
				if ip, err := netip.ParseAddr(f[1]); err == nil && !ip.IsLoopback() {
					servers = append(servers, f[1])
				}
			}
		}
	}
	for _, s := range servers {
		fmt.Fprintf(&b, "nameserver %s\n", s)
	}
	return b.String()
}

// EnsureENILink finds an attached ENI's link by MAC (waiting up to
// timeout for it to appear), brings it up with its MTU and installs the
// ENI's route table: the subnet route and a default via the subnet gateway
// (and, with a valid subnet6, the same for IPv6 via VPCRouterV6).
func (d *DataPlane) EnsureENILink(ctx context.Context, mac string, table int, gateway netip.Addr, subnet, subnet6 netip.Prefix, mtu int, timeout time.Duration) (string, error) {
	want, err := net.ParseMAC(mac)
	if err != nil {
		return "", fmt.Errorf("vpc: ENI MAC %q: %w", mac, err)
	}
	deadline := time.Now().Add(timeout)
	var link netlink.Link
	for link == nil {
		ls, err := d.host.LinkList()
		if err != nil {
			return "", fmt.Errorf("vpc: list links: %w", err)
		}
		for _, l := range ls {
			n := l.Attrs().Name
			if l.Attrs().HardwareAddr.String() == want.String() && !strings.HasPrefix(n, "tt") && !strings.HasPrefix(n, "tp") && !strings.HasPrefix(n, warmVethPrefix) {
				link = l
				break
			}
		}
		if link != nil {
			break
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("vpc: no link with MAC %s after %s", mac, timeout)
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	if mtu > 0 && link.Attrs().MTU != mtu {
		_ = d.host.LinkSetMTU(link, mtu)
	}
	if err := d.host.LinkSetUp(link); err != nil {
		return "", fmt.Errorf("vpc: ENI link up: %w", err)
	}
	idx := link.Attrs().Index
	if err := d.host.RouteReplace(&netlink.Route{LinkIndex: idx, Dst: prefixToIPNet(subnet.Masked()), Scope: netlink.SCOPE_LINK, Table: table}); err != nil {
		return "", fmt.Errorf("vpc: ENI subnet route: %w", err)
	}
	if err := d.host.RouteReplace(&netlink.Route{LinkIndex: idx, Gw: net.IP(gateway.AsSlice()), Dst: prefixToIPNet(netip.MustParsePrefix("0.0.0.0/0")), Table: table}); err != nil {
		return "", fmt.Errorf("vpc: ENI default route: %w", err)
	}
	if subnet6.IsValid() {
		if err := d.host.RouteReplace(&netlink.Route{LinkIndex: idx, Dst: prefixToIPNet(subnet6.Masked()), Table: table}); err != nil {
			return "", fmt.Errorf("vpc: ENI IPv6 subnet route: %w", err)
		}
		if err := d.host.RouteReplace(&netlink.Route{LinkIndex: idx, Gw: net.IP(VPCRouterV6.AsSlice()), Dst: prefixToIPNet(netip.MustParsePrefix("::/0")), Table: table}); err != nil {
			return "", fmt.Errorf("vpc: ENI IPv6 default route: %w", err)
		}
	}
	return link.Attrs().Name, nil
}

func ipv6String(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// ensureNetNS creates a named network namespace bind-mounted at path,
// unless one is already mounted there.
func ensureNetNS(path string) error {
	if isNetNS(path) {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("vpc: netns dir: %w", err)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDONLY, 0o444)
	if err != nil {
		return fmt.Errorf("vpc: netns file: %w", err)
	}
	f.Close()
	errc := make(chan error, 1)
	go func() {
		// A thread that unshares is never returned to the Go scheduler.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("vpc: unshare netns: %w", err)
			return
		}
		src := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
		if err := unix.Mount(src, path, "none", unix.MS_BIND, ""); err != nil {
			errc <- fmt.Errorf("vpc: bind netns: %w", err)
			return
		}
		errc <- nil
	}()
	if err := <-errc; err != nil {
		os.Remove(path)
		return err
	}
	return nil
}

// isNetNS says whether a network namespace is mounted at path.
func isNetNS(path string) bool {
	var st unix.Statfs_t
	return unix.Statfs(path, &st) == nil && st.Type == unix.NSFS_MAGIC
}

func removeNetNS(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("vpc: unmount netns: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("vpc: remove netns: %w", err)
	}
	return nil
}
