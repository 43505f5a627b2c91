package agent

import (
	"fmt"
	"net"

	"github.com/coreos/go-systemd/v22/activation"
)

// activatedListener returns the control socket passed by systemd socket
// activation, or nil when the agent was started without one.
func activatedListener() (net.Listener, error) {
	ls, err := activation.Listeners()
	if err != nil {
		return nil, fmt.Errorf("socket activation: %w", err)
	}
	for _, l := range ls {
		if l != nil {
			return l, nil
		}
	}
	return nil, nil
}
