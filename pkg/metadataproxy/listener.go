package metadataproxy

import (
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Addresses the metadata service answers on inside a task's netns.
var (
	addrV4 = net.IPv4(169, 254, 169, 254)
	addrV6 = net.ParseIP("fd00:ec2::254")
)

// listenInNetNS puts the metadata addresses on the task netns's loopback
// and opens listeners there. The sockets stay in that namespace whatever
// thread later accepts on them.
func listenInNetNS(nsPath string) ([]net.Listener, error) {
	var ls []net.Listener
	err := inNetNS(nsPath, func() error {
		var err error
		ls, err = openListeners()
		return err
	})
	return ls, err
}

func openListeners() ([]net.Listener, error) {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return nil, fmt.Errorf("lo: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return nil, fmt.Errorf("lo up: %w", err)
	}
	if err := netlink.AddrReplace(lo, &netlink.Addr{IPNet: &net.IPNet{IP: addrV4, Mask: net.CIDRMask(32, 32)}}); err != nil {
		return nil, fmt.Errorf("add %s: %w", addrV4, err)
	}
	l4, err := net.Listen("tcp4", net.JoinHostPort(addrV4.String(), "80"))
	if err != nil {
		return nil, fmt.Errorf("listen %s:80: %w", addrV4, err)
	}
	ls := []net.Listener{l4}
	// IPv6 is best effort: it may be disabled in the namespace.
	if err := netlink.AddrReplace(lo, &netlink.Addr{IPNet: &net.IPNet{IP: addrV6, Mask: net.CIDRMask(128, 128)}, Flags: unix.IFA_F_NODAD}); err == nil {
		if l6, err := net.Listen("tcp6", net.JoinHostPort(addrV6.String(), "80")); err == nil {
			ls = append(ls, l6)
		}
	}
	return ls, nil
}
