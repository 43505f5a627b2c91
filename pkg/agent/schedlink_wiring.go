package agent

import (
	"context"
	"errors"
	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	"net/netip"
	"os"
	goruntime "runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"

	"github.com/titus-agent/titus-agent/pkg/schedlink"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// schedTasks adapts the Manager to what the scheduler link needs.
type schedTasks struct{ m *Manager }

func (s schedTasks) Launch(ctx context.Context, spec *task.Spec) error {
	_, err := s.m.Launch(ctx, spec)
	if errors.Is(err, ErrTaskExists) {
		return nil
	}
	return err
}

// Kill stops a task the scheduler asks to stop, for the reason it gives.
// Without one (a user's job kill, scale-down or drain) the task ends
// KilledByUser, except a task the scheduler did not launch (no job label),
// which is killed because it is unknown to the scheduler, not by its
// owner: it ends KilledByScheduler.
func (s schedTasks) Kill(ctx context.Context, id string, reason task.Reason, msg string) error {
	if reason == "" {
		reason = task.ReasonKilledByUser
		if v, err := s.m.Get(id); err == nil && v.Spec.Labels[task.LabelJobID] == "" {
			reason, msg = task.ReasonKilledByScheduler, "unknown to the scheduler: not launched by it"
		}
	}
	_, err := s.m.KillFor(ctx, id, 0, reason, msg)
	if errors.Is(err, ErrTaskNotFound) {
		return nil
	}
	return err
}

func (s schedTasks) List() []task.View                               { return s.m.List() }
func (s schedTasks) Subscribe(ctx context.Context) <-chan task.Event { return s.m.Subscribe(ctx) }

// runSchedulerLink keeps the session with the scheduler until ctx ends.
func (d *Daemon) runSchedulerLink(ctx context.Context) {
	sc := d.cfg.Scheduler
	id := sc.InstanceID
	if id == "" {
		id, _ = os.Hostname()
	}
	health := d.health
	itype, zone := sc.InstanceType, sc.Zone
	attrs := hostAttributes("/", Version)
	var usage func() schedlink.NetworkUsage
	capacity := hostCapacity(d.cfg)
	if d.network != nil {
		if h, ok := d.network.Host(); ok {
			// The ec2 provider knows the instance: its type and zone win
			// over the configuration's defaults.
			if itype == "" || itype == DefaultConfig().Scheduler.InstanceType {
				itype = h.InstanceType
			}
			if zone == "" || zone == DefaultConfig().Scheduler.Zone {
				zone = h.AvailabilityZone
			}
			attrs.AMIID = h.AMIID
		}
		if u, ok := d.network.Usage(); ok {
			capacity.ENIs, capacity.IPsPerENI = int32(u.ENIs), int32(u.IPsPerENI)
			capacity.IPReuseCooldown = u.ReuseCooldown
			n := d.network
			usage = func() schedlink.NetworkUsage { u, _ := n.Usage(); return networkUsage(u) }
		}
	}
	cfg := schedlink.Config{
		Address:      sc.Address,
		InstanceID:   id,
		InstanceType: itype,
		AZ:           zone,
		Labels:       sc.Labels,
		Capacity:     capacity,
		Attributes:   attrs,
		Network:      usage,
		Log:          d.log.With("component", "schedlink"),
		Health: func() bool {
			for _, c := range health.Check(ctx) {
				if !c.Ok {
					return false
				}
			}
			return true
		},
	}
	d.gpus.advertise(&cfg)
	cfg.Exec = func(ctx context.Context, start *agentv1.ExecStart, who string, recv func() (*agentv1.ExecInput, error), send func(*agentv1.ExecOutput) error) (int, error) {
		return d.sessions.Run(ctx, start, "scheduler relay for "+who, funcTransport{recv, send})
	}
	cfg.Logs = taskLogReader{tasks: managerTasks{d.manager}, logDir: d.cfg.LogDir, log: d.log.With("component", "schedlink")}.read
	creds, err := sc.TLS.DialOption()
	if err != nil {
		d.log.Error("scheduler link not started", "err", err)
		return
	}
	cfg.DialOptions = []grpc.DialOption{creds}
	if err := schedlink.Run(ctx, cfg, schedTasks{d.manager}); err != nil && ctx.Err() == nil {
		d.log.Error("scheduler link ended", "err", err)
	}
}

// hostCapacity is what this host offers to the scheduler. The ec2
// provider's ENI limits replace ENIs and IPsPerENI (runSchedulerLink); with
// the local provider, the bridge's CIDR is one "ENI" shared by every SG set.
func hostCapacity(cfg Config) schedlink.Capacity {
	c := schedlink.Capacity{
		CPUMillicores: int64(goruntime.NumCPU()) * 1000,
		MemoryMiB:     memTotalMiB() - 512, // keep some for the agent and the OS
		NetworkMbps:   cfg.Scheduler.NetworkMbps,
	}
	var st unix.Statfs_t
	if unix.Statfs(cfg.StateDir, &st) == nil {
		c.DiskMiB = int64(st.Bavail * uint64(st.Bsize) >> 20)
	}
	if cfg.Network.Provider == "local" {
		if p, err := netip.ParsePrefix(cfg.Network.Local.CIDR); err == nil {
			c.ENIs, c.IPsPerENI = 1, int32(1<<(32-p.Bits())-3)
		}
	}
	return c
}

func memTotalMiB() int64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "MemTotal:"); ok {
			kb, _ := strconv.ParseInt(strings.Fields(rest)[0], 10, 64)
			return kb >> 10
		}
	}
	return 0
}

// funcTransport is an ExecTransport of two functions (the scheduler's relay).
type funcTransport struct {
	recv func() (*agentv1.ExecInput, error)
	send func(*agentv1.ExecOutput) error
}

func (f funcTransport) Recv() (*agentv1.ExecInput, error) { return f.recv() }
func (f funcTransport) Send(o *agentv1.ExecOutput) error  { return f.send(o) }
