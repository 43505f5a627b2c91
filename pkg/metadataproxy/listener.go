package metadataproxy

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Addresses the metadata service answers on inside a task's netns.
var (
	addrV4 = net.IPv4(169, 254, 169, 254)
	addrV6 = net.ParseIP("fd00:ec2::254")
)

// ipv6DisabledFile says whether IPv6 is off on a namespace's loopback. It
// is read from inside the namespace: /proc/sys/net shows the reading
// thread's own netns.
const ipv6DisabledFile = "/proc/sys/net/ipv6/conf/lo/disable_ipv6"

// listenInNetNS puts the metadata addresses on the task netns's loopback
// and opens listeners there. The sockets stay in that namespace whatever
// thread later accepts on them. IPv6 is required unless it is really off
// in the namespace (then only IPv4 answers, and that is logged).
func listenInNetNS(nsPath string, log *slog.Logger) ([]net.Listener, error) {
	var (
		ls    []net.Listener
		v6off bool
	)
	err := InNetNS(nsPath, func() error {
		var err error
		v6off, err = ipv6Disabled(ipv6DisabledFile)
		if err != nil {
			return err
		}
		ls, err = openListeners(!v6off)
		return err
	})
	if err == nil && v6off {
		log.Info("IPv6 is disabled in the task's netns: metadata answers on IPv4 only", "netns", nsPath, "ipv4", addrV4.String())
	}
	return ls, err
}

// ipv6Disabled reads a disable_ipv6 sysctl file; a kernel without IPv6
// has no such file, which counts as disabled.
func ipv6Disabled(file string) (bool, error) {
	b, err := os.ReadFile(file)
	if errors.Is(err, os.ErrNotExist) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("ipv6 state: %w", err)
	}
	return strings.TrimSpace(string(b)) != "0", nil
}

// openListeners opens 169.254.169.254:80 and, with v6, [fd00:ec2::254]:80
// on the current netns's loopback: all of them or none.
func openListeners(v6 bool) (ls []net.Listener, err error) {
	defer func() {
		if err != nil {
			for _, l := range ls {
				l.Close()
			}
			ls = nil
		}
	}()
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
	ls = append(ls, l4)
	if !v6 {
		return ls, nil
	}
	// NODAD: the address is usable at once, not "tentative" for a second.
	if err := netlink.AddrReplace(lo, &netlink.Addr{IPNet: &net.IPNet{IP: addrV6, Mask: net.CIDRMask(128, 128)}, Flags: unix.IFA_F_NODAD}); err != nil {
		return ls, fmt.Errorf("add %s (IPv6 is enabled in the netns): %w", addrV6, err)
	}
	l6, err := net.Listen("tcp6", net.JoinHostPort(addrV6.String(), "80"))
	if err != nil {
		return ls, fmt.Errorf("listen [%s]:80 (IPv6 is enabled in the netns): %w", addrV6, err)
	}
	ls = append(ls, l6)
	if err := awaitReachable(l6.Addr().String(), 3*time.Second); err != nil {
		return ls, fmt.Errorf("%s: %w", l6.Addr(), err)
	}
	return ls, nil
}

// awaitReachable connects to addr from the current netns until it works:
// on a loopback just brought up, a fresh IPv6 address refuses or drops the
// first connections for a moment (ENETUNREACH, or a SYN lost to a one-second
// retransmit), even without DAD. The probe connection is closed at once;
// the server reads an empty request from it later and drops it.
func awaitReachable(addr string, limit time.Duration) error {
	return probeUntil(limit, func(timeout time.Duration) error {
		c, err := net.DialTimeout("tcp", addr, timeout)
		if err != nil {
			return err
		}
		return c.Close()
	})
}

// Probe pacing: a loopback connection is made at once or its SYN was
// dropped (the kernel resends it only after a second), so an attempt
// waits briefly and the next one sends a new SYN. The wait doubles from
// probeFirstWait up to probeMaxWait, so that a loaded host is not taken
// for an unreachable address. (A fixed 100 ms wait made the metadata
// listener, and so every launch with metadata, about 100 ms slower each
// time the first SYN was lost.)
const (
	probeFirstWait = 5 * time.Millisecond
	probeMaxWait   = 100 * time.Millisecond
	probePause     = time.Millisecond
)

// probeUntil calls try, with the attempt's timeout, until it succeeds or
// limit has passed.
func probeUntil(limit time.Duration, try func(timeout time.Duration) error) error {
	deadline := time.Now().Add(limit)
	wait := probeFirstWait
	for {
		err := try(wait)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not reachable from its netns after %s: %w", limit, err)
		}
		wait = min(2*wait, probeMaxWait)
		time.Sleep(probePause)
	}
}
