package vpc

import (
	"errors"
	"fmt"
	"strings"

	"github.com/vishvananda/netlink"
)

// IsolatePorts sets IFLA_BRPORT_ISOLATED on every task veth attached to
// the bridge: ports a running agent made before its policy changed, or an
// earlier agent made, follow the policy now in force.
func (n netnsHost) IsolatePorts(bridge string, on bool) error {
	h, err := handleAt(n.ns)
	if err != nil {
		return err
	}
	defer h.Close()
	br, err := h.LinkByName(bridge)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return err
	}
	ls, err := h.LinkList()
	if err != nil {
		return err
	}
	var errs []error
	for _, l := range ls {
		a := l.Attrs()
		if a.MasterIndex != br.Attrs().Index || !strings.HasPrefix(a.Name, taskVethPrefix) {
			continue
		}
		if err := h.LinkSetIsolated(l, on); err != nil {
			errs = append(errs, fmt.Errorf("port %s: %w", a.Name, err))
		}
	}
	return errors.Join(errs...)
}
