package agent

import (
	"context"
	"fmt"
	"time"

	"golang.org/x/sys/unix"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
)

type versioner interface {
	Version(ctx context.Context) (string, error)
}

// hostHealth checks what the agent needs from its host.
type hostHealth struct {
	rt   versioner
	dirs []string
}

// Minimum free space and inodes on the agent's data directories.
const (
	minFreeBytes  = 512 << 20
	minFreeInodes = 10000
)

func (h *hostHealth) Check(ctx context.Context) []*agentv1.HealthCheck {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	var out []*agentv1.HealthCheck
	v, err := h.rt.Version(ctx)
	if err != nil {
		out = append(out, &agentv1.HealthCheck{Name: "containerd", Ok: false, Detail: err.Error()})
	} else {
		out = append(out, &agentv1.HealthCheck{Name: "containerd", Ok: true, Detail: "version " + v})
	}
	for _, d := range h.dirs {
		var st unix.Statfs_t
		if err := unix.Statfs(d, &st); err != nil {
			out = append(out, &agentv1.HealthCheck{Name: "disk " + d, Ok: false, Detail: err.Error()})
			continue
		}
		free := st.Bavail * uint64(st.Bsize)
		ok := free >= minFreeBytes && st.Ffree >= minFreeInodes
		out = append(out, &agentv1.HealthCheck{Name: "disk " + d, Ok: ok,
			Detail: fmt.Sprintf("%d MiB free, %d inodes free", free>>20, st.Ffree)})
	}
	return out
}
