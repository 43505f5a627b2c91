package runtime

import (
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Interface is one network interface seen inside a task.
type Interface struct {
	Name, MAC string
	MTU       int
	Up        bool
	Addrs     []string // CIDR
}

// NetView is a task's network namespace read back: interfaces, routes of
// the main table (`ip route` style) and the TCP sockets listening there.
type NetView struct {
	Interfaces []Interface
	Routes     []string
	Listening  []string // host:port, [v6]:port
}

// DiskView is the task's root filesystem as statfs sees it from inside.
type DiskView struct {
	SizeBytes, UsedBytes, AvailableBytes uint64
}

// readNetNS reads the network namespace of pid through netlink (a handle
// bound to that namespace: its socket is opened there on a locked thread
// that returns to the agent's namespace) and its /proc/PID/net/tcp{,6}.
// It only reads.
func readNetNS(procRoot string, pid int) (NetView, error) {
	ns, err := netns.GetFromPath(fmt.Sprintf("%s/%d/ns/net", procRoot, pid))
	if err != nil {
		return NetView{}, fmt.Errorf("network namespace of %d: %w", pid, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return NetView{}, fmt.Errorf("netlink in the namespace of %d: %w", pid, err)
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		return NetView{}, fmt.Errorf("links of %d: %w", pid, err)
	}
	var v NetView
	names := map[int]string{}
	for _, l := range links {
		a := l.Attrs()
		names[a.Index] = a.Name
		in := Interface{Name: a.Name, MTU: a.MTU, Up: a.Flags&net.FlagUp != 0}
		if len(a.HardwareAddr) > 0 {
			in.MAC = a.HardwareAddr.String()
		}
		addrs, err := h.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			return NetView{}, fmt.Errorf("addresses of %s: %w", a.Name, err)
		}
		for _, ad := range addrs {
			in.Addrs = append(in.Addrs, ad.IPNet.String())
		}
		v.Interfaces = append(v.Interfaces, in)
	}
	routes, err := h.RouteList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return NetView{}, fmt.Errorf("routes of %d: %w", pid, err)
	}
	for _, r := range routes {
		v.Routes = append(v.Routes, formatRoute(r, names))
	}
	for _, f := range []string{"tcp", "tcp6"} {
		b, err := os.ReadFile(fmt.Sprintf("%s/%d/net/%s", procRoot, pid, f))
		if err != nil {
			continue // no IPv6 in the namespace
		}
		v.Listening = append(v.Listening, tcpListening(string(b))...)
	}
	sort.Strings(v.Listening)
	return v, nil
}

// formatRoute writes a route as `ip route` does: dst, via, dev, src.
func formatRoute(r netlink.Route, names map[int]string) string {
	dst := "default"
	if r.Dst != nil {
		if ones, bits := r.Dst.Mask.Size(); ones != 0 || bits == 0 {
			dst = r.Dst.String()
		}
	}
	parts := []string{dst}
	if r.Gw != nil {
		parts = append(parts, "via", r.Gw.String())
	}
	if n, ok := names[r.LinkIndex]; ok {
		parts = append(parts, "dev", n)
	} else if r.LinkIndex > 0 {
		parts = append(parts, "dev", "if"+strconv.Itoa(r.LinkIndex))
	}
	if r.Scope == netlink.SCOPE_LINK {
		parts = append(parts, "scope", "link")
	}
	if r.Src != nil {
		parts = append(parts, "src", r.Src.String())
	}
	return strings.Join(parts, " ")
}

// tcpListening reads the LISTEN sockets (state 0A) of a /proc/net/tcp or
// tcp6 table as host:port.
func tcpListening(table string) []string {
	var out []string
	for i, line := range strings.Split(table, "\n") {
		f := strings.Fields(line)
		if i == 0 || len(f) < 4 || f[3] != "0A" {
			continue
		}
		hostHex, portHex, ok := strings.Cut(f[1], ":")
		if !ok {
			continue
		}
		raw, err1 := hex.DecodeString(hostHex)
		port, err2 := strconv.ParseUint(portHex, 16, 16)
		if err1 != nil || err2 != nil || (len(raw) != 4 && len(raw) != 16) {
			continue
		}
		// The kernel prints each 32-bit word in host (little-endian) order.
		ip := make(net.IP, len(raw))
		for w := 0; w < len(raw); w += 4 {
			ip[w], ip[w+1], ip[w+2], ip[w+3] = raw[w+3], raw[w+2], raw[w+1], raw[w]
		}
		out = append(out, net.JoinHostPort(ip.String(), strconv.FormatUint(port, 10)))
	}
	return out
}

// statRoot is statfs of the task's root, seen through /proc/PID/root.
func statRoot(procRoot string, pid int) (DiskView, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(fmt.Sprintf("%s/%d/root", procRoot, pid), &st); err != nil {
		return DiskView{}, fmt.Errorf("root filesystem of %d: %w", pid, err)
	}
	bs := uint64(st.Bsize)
	return DiskView{SizeBytes: st.Blocks * bs, UsedBytes: (st.Blocks - st.Bfree) * bs, AvailableBytes: st.Bavail * bs}, nil
}
