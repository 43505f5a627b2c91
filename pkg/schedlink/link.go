package schedlink

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
	bo "github.com/titus-agent/titus-agent/pkg/backoff"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// Tasks is what the link needs of the agent's task manager.
type Tasks interface {
	// Launch starts a task; bad specs return an error wrapping
	// task.ErrInvalidSpec; a duplicate id of a known task is not an error.
	Launch(ctx context.Context, spec *task.Spec) error
	// Kill stops a task for the scheduler's reason and message (an empty
	// reason: a user's kill).
	Kill(ctx context.Context, id string, reason task.Reason, msg string) error
	List() []task.View
	// Subscribe delivers every task transition until ctx ends.
	Subscribe(ctx context.Context) <-chan task.Event
}

// Versioned may be implemented by Tasks: Version changes whenever what
// List returns changes. A changes-only heartbeat then lists nothing
// without comparing each task when the version is what it was at the
// previous heartbeat's List.
type Versioned interface {
	Version() uint64
}

func versionOf(tasks Tasks) (uint64, bool) {
	if v, ok := tasks.(Versioned); ok {
		return v.Version(), true
	}
	return 0, false
}

// Capacity is what the host offers to tasks.
type Capacity struct {
	CPUMillicores, MemoryMiB, DiskMiB, NetworkMbps int64
	GPUs                                           int32
	// ENIs usable by tasks and secondary IPs per ENI (0 = not limited).
	ENIs, IPsPerENI int32
	// IPReuseCooldown keeps a released task IP from the next task.
	IPReuseCooldown time.Duration
}

// Attributes say what the host is, for placement constraints.
type Attributes struct {
	AMIID, AgentVersion, Kernel, CgroupMode string
	GPUs                                    []GPU
}

// GPU is one GPU device of the host.
type GPU struct {
	Index     int32
	Model     string
	MemoryMiB int64
}

// NetworkUsage is the live use of the host's task ENIs.
type NetworkUsage struct {
	SGSets         []SGSet
	AttachableENIs int32
	// DefaultSecurityGroups (sorted, comma-joined) and DefaultSubnetID are
	// what a task naming none gets.
	DefaultSecurityGroups, DefaultSubnetID string
	// ZoneSubnets and OtherZoneSubnets are the subnets the agent looked
	// up, in its zone and out of it.
	ZoneSubnets, OtherZoneSubnets []string
}

// SGSet is the ENIs and addresses of one security-group set.
type SGSet struct {
	SecurityGroups, SubnetID           string
	Default                            bool
	ENIs, UsedIPs, FreeIPs, CoolingIPs int32
}

// Config says where the scheduler is and what this host is.
type Config struct {
	// Address of the scheduler; a comma-separated list of replicas is tried in turn.
	Address                      string
	InstanceID, InstanceType, AZ string
	Capacity                     Capacity
	Labels                       map[string]string
	Attributes                   Attributes
	// Network, when set, reports the ENI use at registration and in every heartbeat.
	Network func() NetworkUsage
	// HeartbeatInterval; 0 = what the scheduler asks for.
	HeartbeatInterval time.Duration
	// Health is reported with each heartbeat; nil = always healthy.
	Health func() bool
	// DialOptions default to plaintext; pass TLS credentials here.
	DialOptions []grpc.DialOption
	// Conn, when set, is used instead of dialing Address (many simulated agents share one).
	Conn grpc.ClientConnInterface
	// Reconnect backoff bounds (defaults 200ms and 3s). A new leader
	// loses an agent it has not heard from within its agent TTL (10s by
	// default) of taking over, and with it every task the agent runs: the
	// agent must be back well within that.
	MinBackoff, MaxBackoff time.Duration
	// RegisterTimeout bounds the registration round trip: opening the
	// stream, sending the registration and receiving the scheduler's
	// acknowledgement (0: DefaultRegisterTimeout).
	RegisterTimeout time.Duration
	// SendTimeout bounds one message's send once registered: a send still
	// blocked after it (the scheduler stopped reading the stream) ends the
	// session (0: DefaultSendTimeout).
	SendTimeout time.Duration
	// Keepalive of the connections the link dials (zero: DefaultKeepalive).
	// gRPC raises a Time below 10s to 10s.
	Keepalive keepalive.ClientParameters
	Log       *slog.Logger
	// Exec runs exec sessions the scheduler relays; nil refuses them.
	Exec ExecFunc
	// Logs reads task logs for the scheduler; nil refuses them.
	Logs LogsFunc
}

// MaxMessageSize is the largest scheduler message the agent accepts: the
// scheduler's own receive limit. The scheduler splits launch batches far
// below it, so a batch never ends the session (gRPC's default of 4 MiB did,
// and the tasks sent in it were marked LOST and sent again in a hot loop).
const MaxMessageSize = 16 << 20

// DefaultKeepalive pings the scheduler after 10s without a frame from it
// and drops the connection when the ping is not answered within 5s, with or
// without an open stream. Without it a connection to a replica that died
// without a reset (a partition, a killed VM) was noticed only through TCP
// timeouts: heartbeats went into a dead socket for minutes, the agent never
// reconnected, and its tasks were lost. The scheduler's enforcement policy
// allows pings every 5s (scheduler.KeepaliveMinClientPing); gRPC's default
// (5 min) would answer these with GOAWAY ENHANCE_YOUR_CALM.
var DefaultKeepalive = keepalive.ClientParameters{Time: 10 * time.Second, Timeout: 5 * time.Second, PermitWithoutStream: true}

// keepaliveParams is cfg's keepalive, DefaultKeepalive where unset, always
// pinging without a stream.
func keepaliveParams(p keepalive.ClientParameters) keepalive.ClientParameters {
	if p.Time <= 0 {
		p.Time = DefaultKeepalive.Time
	}
	if p.Timeout <= 0 {
		p.Timeout = DefaultKeepalive.Timeout
	}
	// Between sessions too: a replica that died is found before the next
	// stream is opened on it.
	p.PermitWithoutStream = true
	return p
}

// DefaultRegisterTimeout bounds the registration round trip. Without a
// bound, a stream that a scheduler (or anything on its address) accepted
// but never answered held the agent for good: it never tried again, and
// the new leader lost it, and every task it runs, at the agent TTL. With
// the reconnect backoff (at most 3s) it keeps the agent's next attempt
// within the default agent TTL (10s).
const DefaultRegisterTimeout = 5 * time.Second

// DefaultSendTimeout bounds one send on a registered session: a scheduler
// that stopped reading the stream blocks the agent's sends (flow control)
// while the transport still answers keepalive pings.
const DefaultSendTimeout = 10 * time.Second

// refusedRetry caps the delay before retrying a registration refused
// because the instance id has a live session.
const refusedRetry = time.Second

// Run keeps a session with the scheduler until ctx ends.
func Run(ctx context.Context, cfg Config, tasks Tasks) error {
	if cfg.InstanceID == "" {
		return errors.New("schedlink: instance id is required")
	}
	if cfg.Conn == nil && cfg.Address == "" {
		return errors.New("schedlink: scheduler address is required")
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 200 * time.Millisecond
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 3 * time.Second
	}
	if cfg.RegisterTimeout <= 0 {
		cfg.RegisterTimeout = DefaultRegisterTimeout
	}
	if cfg.SendTimeout <= 0 {
		cfg.SendTimeout = DefaultSendTimeout
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	var conns []grpc.ClientConnInterface
	if cfg.Conn != nil {
		conns = []grpc.ClientConnInterface{cfg.Conn}
	} else {
		opts := cfg.DialOptions
		if len(opts) == 0 {
			opts = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
		}
		// gRPC's own reconnect backoff (up to 120s) would otherwise decide
		// when a replica that was down is tried again: a scheduler that
		// took a while to restart found its agents back only after their
		// tasks were lost. The channel backs off within the link's bounds.
		opts = append(opts[:len(opts):len(opts)], grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           grpcbackoff.Config{BaseDelay: cfg.MinBackoff, Multiplier: 1.6, Jitter: 0.2, MaxDelay: cfg.MaxBackoff},
			MinConnectTimeout: 5 * time.Second,
		}), grpc.WithKeepaliveParams(keepaliveParams(cfg.Keepalive)))
		for _, addr := range strings.Split(cfg.Address, ",") {
			cc, err := grpc.NewClient(strings.TrimSpace(addr), opts...)
			if err != nil {
				return fmt.Errorf("schedlink: dial %s: %w", addr, err)
			}
			defer cc.Close()
			conns = append(conns, cc)
		}
	}
	// A round tries every replica once. A replica that will not take the
	// stream (a standby, one that is down) is followed at once by the
	// next: a standby's refusal is the expected answer, and waiting out a
	// growing backoff per standby kept an agent whose connection blipped
	// away past the agent TTL, and its tasks were lost. The backoff grows,
	// and is waited, once per round.
	failures, tried := 0, 0
	refused := false
	for i := 0; ; i++ {
		registered, err := runSession(ctx, conns[i%len(conns)], cfg, tasks)
		if ctx.Err() != nil {
			return nil
		}
		if registered {
			failures, tried, refused = 0, 0, false
		}
		tried++
		refused = refused || status.Code(err) == codes.AlreadyExists
		if !registered && tried%len(conns) != 0 {
			cfg.Log.Debug("scheduler replica did not take the stream; trying the next", "err", err)
			continue
		}
		failures++
		d := backoff(cfg.MinBackoff, cfg.MaxBackoff, failures)
		switch code := status.Code(err); {
		case refused:
			// Another stream holds this instance id. If it is this host's
			// own dead connection, the scheduler lets us in once it has
			// been silent a few heartbeats: retry often enough to get back
			// before the agent TTL loses our tasks.
			d = min(d, refusedRetry)
			refused = false
			cfg.Log.Error("the scheduler refused this agent: another session holds its instance id (a second host with the same instance id?)",
				"instance_id", cfg.InstanceID, "err", err, "retry_in", d)
		case code == codes.PermissionDenied, code == codes.Unauthenticated:
			cfg.Log.Error("the scheduler refused this agent's identity; check its certificate (URI SAN titus-agent://instance/<instance id>)",
				"instance_id", cfg.InstanceID, "err", err, "retry_in", d)
		default:
			cfg.Log.Warn("scheduler session ended", "err", err, "retry_in", d)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(d):
		}
	}
}

// backoff is the delay after n consecutive failures: d = min(lo·2^(n-1), hi),
// with jitter in [d/2, d].
func backoff(lo, hi time.Duration, n int) time.Duration {
	return bo.Policy{Base: lo, Max: hi, Jitter: bo.Equal}.Delay(n - 1)
}

func statusOf(v *task.View) *schedv1.TaskStatus {
	return &schedv1.TaskStatus{TaskId: v.Spec.ID, State: task.StateToProto(v.Status.State), Reason: string(v.Status.Reason),
		Message: v.Status.Message, ExitCode: v.Status.ExitCode, Health: task.HealthToProto(v.Status.Health), Ip: viewIP(v)}
}

// viewIP is the task's VPC IPv4 address, "" before it has one.
func viewIP(v *task.View) string {
	if v.Network == nil {
		return ""
	}
	return v.Network.IPv4
}

// ErrNotAcknowledged: the scheduler did not acknowledge the registration
// within Config.RegisterTimeout.
var ErrNotAcknowledged = errors.New("the scheduler did not acknowledge the registration in time")

// ErrSendStalled: a send on the session did not complete within
// Config.SendTimeout.
var ErrSendStalled = errors.New("a send to the scheduler did not complete in time (it stopped reading the stream)")

// runSession is one stream; it reports whether registration succeeded.
// Every step of the registration (opening the stream, which waits for a
// connection, sending, the acknowledgement) is bounded by
// cfg.RegisterTimeout, and every later send by cfg.SendTimeout: a peer
// that accepts and then stalls ends the session instead of holding it.
func runSession(ctx context.Context, cc grpc.ClientConnInterface, cfg Config, tasks Tasks) (bool, error) {
	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	events := tasks.Subscribe(sctx) // before listing, so no transition falls in between
	hb := newHeartbeats()
	hb.ver, hb.verKnown = versionOf(tasks) // before listing: a change after it shows
	views := tasks.List()
	hb.free = freeOf(cfg.Capacity, views)
	reg := &schedv1.Register{InstanceId: cfg.InstanceID, InstanceType: cfg.InstanceType, Az: cfg.AZ, Labels: cfg.Labels,
		Capacity: capacityProto(cfg.Capacity), Attributes: attributesProto(cfg.Attributes), Network: networkProto(cfg.Network),
		Unhealthy: cfg.Health != nil && !cfg.Health()}
	reg.Tasks = hb.all(views)

	// The registration's clock starts once the local checks are done.
	regTimer := time.AfterFunc(cfg.RegisterTimeout, func() {
		cancel(fmt.Errorf("%w (%s)", ErrNotAcknowledged, cfg.RegisterTimeout))
	})
	failed := func(err error) (bool, error) {
		regTimer.Stop()
		if c := context.Cause(sctx); c != nil && ctx.Err() == nil && errors.Is(c, ErrNotAcknowledged) {
			return false, c
		}
		return false, err
	}
	cfg.Log.Debug("opening a session", "scheduler", target(cc))
	stream, err := schedv1.NewSchedulerClient(cc).Connect(sctx, grpc.MaxCallRecvMsgSize(MaxMessageSize))
	if err != nil {
		return failed(err)
	}
	var sendMu sync.Mutex
	send := func(m *schedv1.AgentMessage) error {
		sendMu.Lock()
		defer sendMu.Unlock()
		stalled := time.AfterFunc(cfg.SendTimeout, func() {
			cancel(fmt.Errorf("%w (%s)", ErrSendStalled, cfg.SendTimeout))
		})
		err := stream.Send(m)
		if !stalled.Stop() {
			return context.Cause(sctx)
		}
		return err
	}
	if err := stream.Send(&schedv1.AgentMessage{Msg: &schedv1.AgentMessage_Register{Register: reg}}); err != nil {
		return failed(err)
	}
	cfg.Log.Debug("registration sent; waiting for the acknowledgement", "tasks", len(reg.Tasks))
	first, err := stream.Recv()
	if err != nil {
		return failed(err)
	}
	if !regTimer.Stop() {
		return failed(context.Cause(sctx))
	}
	ack := first.GetRegistered()
	if ack == nil {
		return false, errors.New("scheduler did not acknowledge the registration")
	}
	interval := cfg.HeartbeatInterval
	if interval <= 0 {
		interval = time.Duration(ack.GetHeartbeatIntervalMs()) * time.Millisecond
	}
	if interval <= 0 {
		interval = 2 * time.Second
	}
	hb.changesOnly = ack.GetChangesOnly()
	cfg.Log.Info("registered with the scheduler", "agent", ack.GetAgentId(), "heartbeat", interval, "changes_only", hb.changesOnly)

	errc := make(chan error, 3)
	go func() { errc <- heartbeat(sctx, cfg, tasks, interval, hb, send) }()
	go func() { errc <- forward(sctx, events, send) }()
	relay := newExecRelay(sctx, cfg.Exec, send)
	logs := newLogsRelay(sctx, cfg.Logs, send)
	go func() { errc <- receive(ctx, stream, tasks, send, relay, logs, hb) }()
	err = <-errc
	if c := context.Cause(sctx); c != nil && ctx.Err() == nil {
		err = c // the watchdog ended it: say why
	}
	return true, err
}

// target names the scheduler replica cc dials, for the log.
func target(cc grpc.ClientConnInterface) string {
	if c, ok := cc.(interface{ Target() string }); ok {
		return c.Target()
	}
	return ""
}

func capacityProto(c Capacity) *schedv1.Capacity {
	return &schedv1.Capacity{CpuMillicores: c.CPUMillicores, MemoryMib: c.MemoryMiB, DiskMib: c.DiskMiB, NetworkMbps: c.NetworkMbps,
		Gpus: c.GPUs, Enis: c.ENIs, IpsPerEni: c.IPsPerENI, IpReuseCooldownMs: c.IPReuseCooldown.Milliseconds()}
}

func attributesProto(a Attributes) *schedv1.HostAttributes {
	p := &schedv1.HostAttributes{AmiId: a.AMIID, AgentVersion: a.AgentVersion, Kernel: a.Kernel, CgroupMode: a.CgroupMode}
	for _, g := range a.GPUs {
		p.Gpus = append(p.Gpus, &schedv1.Gpu{Index: g.Index, Model: g.Model, MemoryMib: g.MemoryMiB})
	}
	return p
}

func networkProto(f func() NetworkUsage) *schedv1.NetworkUsage {
	if f == nil {
		return nil
	}
	u := f()
	p := &schedv1.NetworkUsage{AttachableEnis: u.AttachableENIs, DefaultSecurityGroups: u.DefaultSecurityGroups,
		DefaultSubnetId: u.DefaultSubnetID, ZoneSubnets: u.ZoneSubnets, OtherZoneSubnets: u.OtherZoneSubnets}
	for _, s := range u.SGSets {
		p.SgSets = append(p.SgSets, &schedv1.SGSetENIs{SecurityGroups: s.SecurityGroups, SubnetId: s.SubnetID, Default: s.Default,
			Enis: s.ENIs, UsedIps: s.UsedIPs, FreeIps: s.FreeIPs, CoolingIps: s.CoolingIPs})
	}
	return p
}

func heartbeat(ctx context.Context, cfg Config, tasks Tasks, interval time.Duration, hbs *heartbeats, send func(*schedv1.AgentMessage) error) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		all := false
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		case <-hbs.wantAll:
			all = true
		}
		hb := &schedv1.Heartbeat{Healthy: cfg.Health == nil || cfg.Health()}
		ver, known := versionOf(tasks)
		if hbs.quiet(ver, known, all) {
			hb.ChangesOnly = true // nothing changed: nothing to list
		} else {
			views := tasks.List()
			hbs.free, hbs.ver, hbs.verKnown = freeOf(cfg.Capacity, views), ver, known
			hb.Tasks, hb.ChangesOnly = hbs.next(views, all)
		}
		free := hbs.free
		hb.Free = capacityProto(free)
		hb.Network = networkProto(cfg.Network)
		if err := send(&schedv1.AgentMessage{Msg: &schedv1.AgentMessage_Heartbeat{Heartbeat: hb}}); err != nil {
			return err
		}
	}
}

// freeOf is c less what the tasks not ended ask for.
func freeOf(c Capacity, views []task.View) Capacity {
	for i := range views {
		if v := &views[i]; !v.Status.State.Terminal() {
			r := v.Spec.Resources
			c.CPUMillicores -= r.CPUMillicores
			c.MemoryMiB -= r.MemoryMiB
			c.DiskMiB -= r.DiskMiB
			c.NetworkMbps -= r.NetworkMbps
			c.GPUs -= r.GPUs
		}
	}
	return c
}

// forward reports transitions, batching those that arrive together.
func forward(ctx context.Context, events <-chan task.Event, send func(*schedv1.AgentMessage) error) error {
	for {
		var batch []*schedv1.TaskStatus
		select {
		case <-ctx.Done():
			return ctx.Err()
		case ev, ok := <-events:
			if !ok {
				return errors.New("task event subscription ended")
			}
			batch = append(batch, eventStatus(ev))
		}
	more:
		for len(batch) < 256 {
			select {
			case ev, ok := <-events:
				if !ok {
					break more
				}
				batch = append(batch, eventStatus(ev))
			default:
				break more
			}
		}
		if err := send(&schedv1.AgentMessage{Msg: &schedv1.AgentMessage_Updates{Updates: &schedv1.TaskUpdates{Tasks: batch}}}); err != nil {
			return err
		}
	}
}

func eventStatus(ev task.Event) *schedv1.TaskStatus {
	return &schedv1.TaskStatus{TaskId: ev.TaskID, State: task.StateToProto(ev.Status.State), Reason: string(ev.Status.Reason),
		Message: ev.Status.Message, ExitCode: ev.Status.ExitCode, Health: task.HealthToProto(ev.Status.Health), Ip: ev.IPv4}
}

// receive applies launches and kills. They run under the agent's context,
// not the session's: a dropped stream must not cancel a launch.
func receive(ctx context.Context, stream schedv1.Scheduler_ConnectClient, tasks Tasks, send func(*schedv1.AgentMessage) error, relay *execRelay, logs *logsRelay, hb *heartbeats) error {
	for {
		m, err := stream.Recv()
		if err != nil {
			return err
		}
		switch msg := m.GetMsg().(type) {
		case *schedv1.SchedulerMessage_Launch:
			for _, p := range msg.Launch.GetTasks() {
				spec := task.FromProto(p)
				go func() {
					if err := tasks.Launch(ctx, spec); err != nil {
						_ = send(update(spec.ID, task.Failed, refusedLaunch(err), err.Error()))
					}
				}()
			}
		case *schedv1.SchedulerMessage_Exec:
			relay.handle(msg.Exec)
		case *schedv1.SchedulerMessage_Logs:
			logs.handle(msg.Logs)
		case *schedv1.SchedulerMessage_SendAllTasks:
			hb.requestAll()
		case *schedv1.SchedulerMessage_Kill:
			for _, id := range msg.Kill.GetTaskIds() {
				go func() {
					if err := tasks.Kill(ctx, id, task.Reason(msg.Kill.GetReason()), msg.Kill.GetMessage()); err != nil && !known(tasks, id) {
						_ = send(update(id, task.Lost, "UnknownTask", "the agent has no such task"))
					}
				}()
			}
		}
	}
}

func known(tasks Tasks, id string) bool {
	for _, v := range tasks.List() {
		if v.Spec.ID == id {
			return true
		}
	}
	return false
}

func update(id string, st task.State, reason task.Reason, msg string) *schedv1.AgentMessage {
	return &schedv1.AgentMessage{Msg: &schedv1.AgentMessage_Updates{Updates: &schedv1.TaskUpdates{Tasks: []*schedv1.TaskStatus{
		{TaskId: id, State: task.StateToProto(st), Reason: string(reason), Message: msg}}}}}
}

// refusedLaunch is the reason of a launch the agent refused: its spec's
// fault, the host's full disk (nothing was recorded or run: the scheduler
// places it elsewhere without a failure), or the platform's.
func refusedLaunch(err error) task.Reason {
	switch {
	case errors.Is(err, task.ErrInvalidSpec):
		return task.ReasonInvalidSpec
	case errors.Is(err, syscall.ENOSPC):
		return task.ReasonHostDiskFull
	}
	return task.ReasonPlatformError
}
