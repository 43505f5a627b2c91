package gpu

import (
	"errors"
	"fmt"
)

// ErrNotEnough is returned (wrapped) when a task asks for more GPUs than
// are free.
var ErrNotEnough = errors.New("not enough free GPUs")

// Pick chooses n free devices, lowest index first; inUse holds the indices
// other tasks have. It never returns a device in inUse.
func Pick(inv Inventory, n int, inUse map[int]bool) ([]Device, error) {
	if n <= 0 {
		return nil, nil
	}
	var out []Device
	for _, d := range inv.Devices {
		if len(out) == n {
			break
		}
		if !inUse[d.Index] {
			out = append(out, d)
		}
	}
	if len(out) < n {
		free := 0
		for _, d := range inv.Devices {
			if !inUse[d.Index] {
				free++
			}
		}
		return nil, fmt.Errorf("%w: the task asks for %d, %d of this host's %d GPUs are free", ErrNotEnough, n, free, len(inv.Devices))
	}
	return out, nil
}
