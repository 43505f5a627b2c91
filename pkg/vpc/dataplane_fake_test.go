package vpc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
)

// fakeNet is a recording stand-in for the host's and the task namespaces'
// netlink: it keeps links and rules per namespace and logs every call that
// changes something, as "<ns> <Call> <what>".
type fakeNet struct {
	log     []string
	nss     map[int]*fakeNL // by descriptor; 0 is the host
	paths   map[string]int  // task namespace path → descriptor
	index   int
	made    int              // namespaces made, for their descriptors
	fail    map[string]error // call name → error to return
	removed []string
	nftMu   sync.Mutex
	nft     []string
}

type fakeNL struct {
	w     *fakeNet
	name  string
	links []netlink.Link
	rules []netlink.Rule
	addrs map[int][]netlink.Addr // by link index
}

func newFakeNet() *fakeNet {
	w := &fakeNet{nss: map[int]*fakeNL{}, paths: map[string]int{}, fail: map[string]error{}}
	w.nss[0] = &fakeNL{w: w, name: "host"}
	return w
}

func (w *fakeNet) host() *fakeNL { return w.nss[0] }

// addLink puts a link into a namespace without logging (test setup).
func (n *fakeNL) addLink(l netlink.Link) netlink.Link {
	n.w.index++
	a := l.Attrs()
	a.Index = n.w.index
	if a.HardwareAddr == nil {
		a.HardwareAddr = net.HardwareAddr{0x02, 0, 0, 0, 0, byte(a.Index)}
	}
	n.links = append(n.links, l)
	return l
}

func (n *fakeNL) record(call, format string, args ...any) error {
	n.w.log = append(n.w.log, n.name+" "+call+" "+fmt.Sprintf(format, args...))
	return n.w.fail[call]
}

func (n *fakeNL) LinkByName(name string) (netlink.Link, error) {
	for _, l := range n.links {
		if l.Attrs().Name == name {
			return l, nil
		}
	}
	return nil, errors.New("Link not found")
}

func (n *fakeNL) LinkList() ([]netlink.Link, error) {
	return slices.Clone(n.links), n.w.fail["LinkList"]
}

func (n *fakeNL) LinkAdd(l netlink.Link) error {
	v, ok := l.(*netlink.Veth)
	if !ok {
		return n.record("LinkAdd", "%s %s", l.Type(), l.Attrs().Name)
	}
	fd, _ := v.PeerNamespace.(netlink.NsFd)
	if err := n.record("LinkAdd", "veth %s mtu %d peer %s in %s", v.Name, v.MTU, v.PeerName, n.w.nss[int(fd)].name); err != nil {
		return err
	}
	host := n.addLink(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: v.Name, MTU: v.MTU}})
	n.w.nss[int(fd)].addLink(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: v.PeerName, MTU: v.MTU, ParentIndex: host.Attrs().Index}})
	return nil
}

func (n *fakeNL) LinkDel(l netlink.Link) error {
	if err := n.record("LinkDel", "%s", l.Attrs().Name); err != nil {
		return err
	}
	n.links = slices.DeleteFunc(n.links, func(x netlink.Link) bool { return x.Attrs().Name == l.Attrs().Name })
	return nil
}

func (n *fakeNL) LinkSetUp(l netlink.Link) error { return n.record("LinkSetUp", "%s", l.Attrs().Name) }

func (n *fakeNL) LinkSetName(l netlink.Link, name string) error {
	if err := n.record("LinkSetName", "%s %s", l.Attrs().Name, name); err != nil {
		return err
	}
	l.Attrs().Name = name
	return nil
}

func (n *fakeNL) LinkSetMTU(l netlink.Link, mtu int) error {
	return n.record("LinkSetMTU", "%s %d", l.Attrs().Name, mtu)
}

func (n *fakeNL) LinkSetMaster(l, master netlink.Link) error {
	return n.record("LinkSetMaster", "%s %s", l.Attrs().Name, master.Attrs().Name)
}

func (n *fakeNL) LinkSetIsolated(l netlink.Link, on bool) error {
	return n.record("LinkSetIsolated", "%s %t", l.Attrs().Name, on)
}

func (n *fakeNL) LinkSetNsFd(l netlink.Link, fd int) error {
	if err := n.record("LinkSetNsFd", "%s %s", l.Attrs().Name, n.w.nss[fd].name); err != nil {
		return err
	}
	n.links = slices.DeleteFunc(n.links, func(x netlink.Link) bool { return x == l })
	n.w.nss[fd].links = append(n.w.nss[fd].links, l)
	return nil
}

func (n *fakeNL) AddrReplace(l netlink.Link, a *netlink.Addr) error {
	if err := n.record("AddrReplace", "%s %s flags %d", l.Attrs().Name, a.IPNet, a.Flags); err != nil {
		return err
	}
	n.addAddr(l, a)
	return nil
}

// addAddr puts an address on a link without logging (test setup).
func (n *fakeNL) addAddr(l netlink.Link, a *netlink.Addr) {
	if n.addrs == nil {
		n.addrs = map[int][]netlink.Addr{}
	}
	i := l.Attrs().Index
	n.addrs[i] = slices.DeleteFunc(n.addrs[i], func(x netlink.Addr) bool { return x.IPNet.String() == a.IPNet.String() })
	n.addrs[i] = append(n.addrs[i], *a)
}

func (n *fakeNL) AddrList(l netlink.Link, _ int) ([]netlink.Addr, error) {
	return slices.Clone(n.addrs[l.Attrs().Index]), n.w.fail["AddrList"]
}

func (n *fakeNL) AddrDel(l netlink.Link, a *netlink.Addr) error {
	if err := n.record("AddrDel", "%s %s", l.Attrs().Name, a.IPNet); err != nil {
		return err
	}
	i := l.Attrs().Index
	n.addrs[i] = slices.DeleteFunc(n.addrs[i], func(x netlink.Addr) bool { return x.IPNet.String() == a.IPNet.String() })
	return nil
}

func (n *fakeNL) RouteDel(r *netlink.Route) error {
	return n.record("RouteDel", "dev %s dst %s", n.linkName(r.LinkIndex), r.Dst)
}

func (n *fakeNL) linkName(index int) string {
	for _, l := range n.links {
		if l.Attrs().Index == index {
			return l.Attrs().Name
		}
	}
	return fmt.Sprintf("#%d", index)
}

func (n *fakeNL) RouteReplace(r *netlink.Route) error {
	var b strings.Builder
	fmt.Fprintf(&b, "dev %s dst %s", n.linkName(r.LinkIndex), r.Dst)
	if r.Gw != nil {
		fmt.Fprintf(&b, " via %s", r.Gw)
	}
	if r.Scope == netlink.SCOPE_LINK {
		b.WriteString(" scope link")
	}
	if r.Flags&int(netlink.FLAG_ONLINK) != 0 {
		b.WriteString(" onlink")
	}
	if r.Table != 0 {
		fmt.Fprintf(&b, " table %d", r.Table)
	}
	return n.record("RouteReplace", "%s", b.String())
}

func (n *fakeNL) NeighSet(ne *netlink.Neigh) error {
	return n.record("NeighSet", "dev %s %s lladdr %s permanent=%v", n.linkName(ne.LinkIndex), ne.IP, ne.HardwareAddr, ne.State == netlink.NUD_PERMANENT)
}

func ruleString(r *netlink.Rule) string {
	return fmt.Sprintf("from %s table %d prio %d", r.Src, r.Table, r.Priority)
}

func (n *fakeNL) RuleAdd(r *netlink.Rule) error {
	if err := n.record("RuleAdd", "%s", ruleString(r)); err != nil {
		return err
	}
	n.rules = append(n.rules, *r)
	return nil
}

func (n *fakeNL) RuleDel(r *netlink.Rule) error {
	if err := n.record("RuleDel", "%s", ruleString(r)); err != nil {
		return err
	}
	n.rules = slices.DeleteFunc(n.rules, func(x netlink.Rule) bool { return x.Src.String() == r.Src.String() })
	return nil
}

func (n *fakeNL) RuleList(family int) ([]netlink.Rule, error) {
	var out []netlink.Rule
	for _, r := range n.rules {
		if r.Family == family {
			out = append(out, r)
		}
	}
	return out, nil
}

func (n *fakeNL) Close() {}

// namespaces

func (w *fakeNet) Ensure(path string) error {
	if _, ok := w.paths[path]; ok {
		return nil
	}
	w.log = append(w.log, "Ensure "+path)
	w.made++
	fd := 100 + w.made
	w.paths[path] = fd
	w.nss[fd] = &fakeNL{w: w, name: "task"}
	w.nss[fd].addLink(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: "lo"}})
	return nil
}

func (w *fakeNet) Open(path string) (netlinker, int, func(), error) {
	fd, ok := w.paths[path]
	if !ok {
		return nil, 0, nil, fmt.Errorf("no netns %s", path)
	}
	return w.nss[fd], fd, func() {}, nil
}

func (w *fakeNet) Remove(path string) error {
	w.log = append(w.log, "Remove "+path)
	if fd, ok := w.paths[path]; ok {
		delete(w.nss, fd)
		delete(w.paths, path)
	}
	return nil
}

func (w *fakeNet) Exists(path string) bool {
	_, ok := w.paths[path]
	return ok
}

func (w *fakeNet) Adopt(from, to string) error {
	w.log = append(w.log, "Adopt "+from+" "+to)
	if err := w.fail["Adopt"]; err != nil {
		return err
	}
	fd, ok := w.paths[from]
	if !ok {
		return fmt.Errorf("no netns %s", from)
	}
	delete(w.paths, from)
	w.paths[to] = fd
	return nil
}

func (w *fakeNet) sysctl(path, value string) error {
	w.log = append(w.log, "sysctl "+path+"="+value)
	return nil
}

// Guard and Unguard record in nft (not log: the data plane runs them
// alongside its netlink calls) the table they replace ("guard T") or
// delete ("unguard T"); fail["nft"] makes them fail.
func (w *fakeNet) Guard(_ context.Context, hostVeth string, _ net.HardwareAddr, _ Allocation) error {
	return w.recordGuard("guard " + GuardTable(hostVeth))
}

func (w *fakeNet) Unguard(_ context.Context, hostVeth string) error {
	return w.recordGuard("unguard " + GuardTable(hostVeth))
}

func (w *fakeNet) recordGuard(s string) error {
	w.nftMu.Lock()
	defer w.nftMu.Unlock()
	w.nft = append(w.nft, s)
	return w.fail["nft"]
}
