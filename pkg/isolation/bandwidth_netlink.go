package isolation

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// netlinkTC shapes with real qdiscs.
type netlinkTC struct{}

var tbfHandle = netlink.MakeHandle(0x7a11, 0) // marks the root qdisc as ours

// handle opens netlink in nsPath ("" = this process's netns).
func handle(nsPath string) (*netlink.Handle, error) {
	if nsPath == "" {
		return netlink.NewHandle()
	}
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		return nil, fmt.Errorf("netns %s: %w", nsPath, err)
	}
	defer ns.Close()
	return netlink.NewHandleAt(ns)
}

func (netlinkTC) VethPair(nsPath, hostNS string) (string, string, error) {
	h, err := handle(nsPath)
	if err != nil {
		return "", "", err
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		return "", "", fmt.Errorf("links in %s: %w", nsPath, err)
	}
	host, err := handle(hostNS)
	if err != nil {
		return "", "", err
	}
	defer host.Close()
	for _, l := range links {
		if l.Type() != "veth" || l.Attrs().ParentIndex == 0 {
			continue
		}
		// The peer's index is only meaningful in the peer's netns; check
		// that the host link there points back at ours.
		peer, err := host.LinkByIndex(l.Attrs().ParentIndex)
		if err != nil || peer.Type() != "veth" || peer.Attrs().ParentIndex != l.Attrs().Index {
			continue
		}
		return peer.Attrs().Name, l.Attrs().Name, nil
	}
	return "", "", fmt.Errorf("%s: %w", nsPath, ErrNoVeth)
}

func (netlinkTC) SetTBF(nsPath, ifName string, t TBF) error {
	h, err := handle(nsPath)
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(ifName)
	if err != nil {
		return fmt.Errorf("link %s: %w", ifName, err)
	}
	if err := h.QdiscReplace(tbfQdisc(l.Attrs().Index, t)); err != nil {
		return fmt.Errorf("tbf on %s: %w", ifName, err)
	}
	return nil
}

// tbfQdisc is our root tbf for t on the link at linkIndex. The kernel
// takes the bucket as the time it takes to send Burst bytes at Rate, in
// its scheduler's ticks (tc's "burst" does this conversion too): passed
// as bytes, a 32 KiB bucket became 2 ms, so at 1 Mbps no full-size frame
// ever fitted and the task's traffic stopped after the handshake.
func tbfQdisc(linkIndex int, t TBF) *netlink.Tbf {
	return &netlink.Tbf{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: linkIndex, Handle: tbfHandle, Parent: netlink.HANDLE_ROOT},
		Rate:       t.Rate,
		Buffer:     netlink.Xmittime(t.Rate, t.Burst),
		Limit:      t.Limit,
	}
}

func (netlinkTC) ClearRoot(nsPath, ifName string) error {
	h, err := handle(nsPath)
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(ifName)
	var notFound netlink.LinkNotFoundError
	if errors.As(err, &notFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("link %s: %w", ifName, err)
	}
	qs, err := h.QdiscList(l)
	if err != nil {
		return fmt.Errorf("qdiscs of %s: %w", ifName, err)
	}
	for _, q := range qs {
		if a := q.Attrs(); a.Parent == netlink.HANDLE_ROOT && a.Handle == tbfHandle {
			if err := h.QdiscDel(q); err != nil {
				return fmt.Errorf("delete tbf on %s: %w", ifName, err)
			}
		}
	}
	return nil
}
