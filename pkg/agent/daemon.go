package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/titus-agent/titus-agent/pkg/agent/taskrunner"
	"github.com/titus-agent/titus-agent/pkg/imagegc"
	"github.com/titus-agent/titus-agent/pkg/metrics"
	"github.com/titus-agent/titus-agent/pkg/refill"
	"github.com/titus-agent/titus-agent/pkg/runtime"
	"github.com/titus-agent/titus-agent/pkg/task"
	"github.com/titus-agent/titus-agent/pkg/vpc"
)

// Daemon is a running agent.
type Daemon struct {
	cfg      Config
	log      *slog.Logger
	sessions *ExecSessions
	store    *Store
	rt       *runtime.Runtime
	manager  *Manager
	grpc     *grpc.Server
	closers  []func() error
	registry *prometheus.Registry
	metrics  *metrics.Agent
	health   *hostHealth
	network  *vpc.Network
	gpus     *gpuPool
	images   *imagegc.GC
	imgStats *metrics.Images
}

// Manager exposes the task manager (for the scheduler link and tests).
func (d *Daemon) Manager() *Manager { return d.manager }

// Run starts the agent, serves until ctx is cancelled, then shuts down
// without touching running tasks. ready is called once the socket serves and
// re-adoption is done.
func Run(ctx context.Context, cfg Config, log *slog.Logger, ready func(*Daemon)) error {
	d, err := start(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer d.close()
	lis, err := listen(cfg)
	if err != nil {
		return err
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- d.grpc.Serve(lis) }()
	if cfg.MetricsListen != "" {
		go func() {
			if err := metrics.Serve(ctx, cfg.MetricsListen, d.registry); err != nil {
				log.Error("metrics endpoint", "addr", cfg.MetricsListen, "err", err)
			}
		}()
	}
	if cfg.DebugListen != "" {
		go func() {
			if err := serveDebug(ctx, cfg.DebugListen, log); err != nil {
				log.Error("debug endpoint", "addr", cfg.DebugListen, "err", err)
			}
		}()
	}
	if d.network != nil {
		go watchPools(ctx, d.network, d.metrics)
	}
	if cfg.Images.GC.Enabled {
		go d.images.Run(ctx)
	}
	if len(cfg.Images.PrePull) > 0 {
		wait, _ := parseDuration("", cfg.Images.PrePullWait, 0)
		waitPrePull(ctx, prePull(ctx, d.rt, cfg.Images.PrePull, d.imgStats, log), wait, log)
	}
	if cfg.Scheduler.Address != "" {
		go d.runSchedulerLink(ctx)
	}
	log.Info("agent ready", "socket", cfg.Socket, "tasks", len(d.manager.List()))
	if err := NotifyReady(fmt.Sprintf("%d tasks re-adopted", len(d.manager.List()))); err != nil {
		log.Warn("sd_notify READY", "err", err)
	}
	// After READY, so its task counts replace READY's status line.
	go watchTasks(ctx, d.manager, d.metrics, log)
	if _, err := StartWatchdog(ctx, managerAlive(d.manager)); err != nil {
		log.Warn("watchdog", "err", err)
	}
	if ready != nil {
		ready(d)
	}
	select {
	case <-ctx.Done():
	case err := <-serveErr:
		return fmt.Errorf("serve: %w", err)
	}
	_ = NotifyStopping()
	log.Info("agent stopping; tasks keep running")
	stopped := make(chan struct{})
	go func() { d.grpc.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		d.grpc.Stop()
	}
	d.manager.Wait()
	return nil
}

func start(agentCtx context.Context, cfg Config, log *slog.Logger) (*Daemon, error) {
	d := &Daemon{cfg: cfg, log: log, registry: metrics.NewRegistry()}
	d.metrics = metrics.New(d.registry)
	d.imgStats = metrics.NewImages(d.registry)
	ok := false
	defer func() {
		if !ok {
			d.close()
		}
	}()
	if err := os.MkdirAll(cfg.LogDir, 0o750); err != nil {
		return nil, fmt.Errorf("log dir: %w", err)
	}
	store, err := OpenStore(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	d.store = store
	d.closers = append(d.closers, store.Close)
	logDriver, err := findLogDriver(cfg.Logs.Driver)
	if err != nil {
		return nil, err
	}
	auth := map[string]runtime.Auth{}
	for host, a := range cfg.Registries.Auth {
		auth[host] = runtime.Auth{Username: a.Username, Password: a.Password}
	}
	driver, err := cfg.Containerd.cgroupDriver(systemdBooted())
	if err != nil {
		return nil, err
	}
	ecr, err := newECR(agentCtx, cfg.Registries.ECR, d.metrics)
	if err != nil {
		return nil, err
	}
	var regCreds runtime.CredentialSource // no typed nil
	if ecr != nil {
		regCreds = ecr
		go ecr.Run(agentCtx, ecrRefreshInterval(cfg.Registries.ECR), ecrIdle, func(err error) { log.Warn("refresh ECR tokens", "err", err) })
	}
	rt, err := runtime.New(agentCtx, runtime.Config{
		Credentials:         regCreds,
		CgroupDriver:        driver,
		Address:             cfg.Containerd.Address,
		Namespace:           cfg.Containerd.Namespace,
		PlainHTTPRegistries: cfg.Registries.PlainHTTP,
		RegistryAuth:        auth,
		LogDir:              cfg.LogDir,
		LoggerBinary:        logDriver,
		LogMaxSizeMiB:       cfg.Logs.MaxSizeMiB,
		LogMaxFiles:         logMaxFiles(cfg),

		MaxConcurrentDownloads: cfg.Images.MaxConcurrentDownloads,
	})
	if err != nil {
		return nil, fmt.Errorf("containerd: %w", err)
	}
	d.rt = rt
	d.closers = append(d.closers, rt.Close)

	w, err := wire(agentCtx, cfg, log, rt, d.metrics)
	if err != nil {
		return nil, err
	}
	d.closers = append(d.closers, w.closers...)
	shipper, err := wireLogShip(agentCtx, cfg, log, store, w, d.registry, d.metrics)
	if err != nil {
		return nil, err
	}
	if shipper != nil {
		go shipper.Run(agentCtx)
	}
	d.manager = NewManager(agentCtx, ManagerConfig{
		Store:        store,
		Runtime:      rt,
		Stages:       w.stages,
		Launches:     w.launches,
		Needs:        hookNeeds,
		RestoreHooks: w.restore,
		Poststart:    w.poststart,
		Reconcilers:  w.reconcilers,
		Restorers:    w.restorers,
		Logger:       log,
		MaxTasks:     cfg.MaxTasks,
		Observe:      observeHook(d.metrics),
		Quarantined:  func(n int) { d.metrics.QuarantinedRecords.Set(float64(n)) },
		HostCheck:    w.hostCheck,
		GPUs:         gpuAssigner(w.gpus),
	})
	d.gpus = w.gpus
	rctx, cancel := context.WithTimeout(agentCtx, time.Minute)
	defer cancel()
	if err := d.manager.Restore(rctx); err != nil {
		return nil, fmt.Errorf("re-adopt tasks: %w", err)
	}
	go d.pruneLoop(agentCtx)
	if d.images, err = newImageGC(cfg.Images, rt, d.manager.ImagesInUse, d.imgStats, log.With("component", "imagegc")); err != nil {
		return nil, fmt.Errorf("image gc: %w", err)
	}

	gid, err := cfg.socketGID()
	if err != nil {
		return nil, err
	}
	creds := PeerCreds{GID: gid}
	d.grpc = grpc.NewServer(grpc.Creds(creds), grpc.MaxRecvMsgSize(4<<20),
		grpc.ChainUnaryInterceptor(creds.UnaryInterceptor(), d.metrics.GRPC.UnaryServerInterceptor()),
		grpc.ChainStreamInterceptor(creds.StreamInterceptor(), d.metrics.GRPC.StreamServerInterceptor()))
	d.network = w.network
	d.health = &hostHealth{rt: rt, dirs: []string{cfg.StateDir, cfg.LogDir}}
	if w.network != nil {
		d.health.net = w.network
	}
	d.sessions = NewExecSessions(cfg.Exec, rt, d.manager, log.With("component", "exec"))
	(&Server{Manager: d.manager, Runtime: rt, Sessions: d.sessions, Checker: d.health, LogDir: cfg.LogDir, VPC: w.vpc, Metadata: w.metadata, Scheduler: cfg.Scheduler.Address, Images: d.images}).Register(d.grpc)
	ok = true
	return d, nil
}

// wiring is the hooks and subsystems built from the config.
type wiring struct {
	stages      [][]taskrunner.PrestartHook
	restore     []taskrunner.RestoreHook
	poststart   []taskrunner.PoststartHook
	reconcilers []Reconciler
	restorers   []RecordRestorer
	closers     []func() error
	vpc         VPCOperator
	metadata    MetadataGetter
	network     *vpc.Network
	// hostCheck refuses at the door what isolation would refuse at create.
	hostCheck func(s *task.Spec, c *task.Checker)
	// gpus are the host's GPUs; nil: none.
	gpus *gpuPool
	// launches counts the launches on their critical path; the launch
	// pools' refill waits on it.
	launches *refill.Gate
}

func (d *Daemon) pruneLoop(ctx context.Context) {
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			d.manager.Prune(now)
		}
	}
}

func (d *Daemon) close() {
	for i := len(d.closers) - 1; i >= 0; i-- {
		if err := d.closers[i](); err != nil {
			d.log.Warn("close", "err", err)
		}
	}
	d.closers = nil
}

// listen opens the control socket (0660, group-owned) unless systemd passed one.
func listen(cfg Config) (net.Listener, error) {
	if l, err := activatedListener(); err != nil || l != nil {
		return l, err
	}
	if err := os.MkdirAll(filepath.Dir(cfg.Socket), 0o755); err != nil {
		return nil, fmt.Errorf("socket dir: %w", err)
	}
	if err := os.Remove(cfg.Socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale socket: %w", err)
	}
	l, err := net.Listen("unix", cfg.Socket)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", cfg.Socket, err)
	}
	gid, _ := cfg.socketGID()
	if err := os.Chown(cfg.Socket, 0, max(gid, 0)); err != nil {
		l.Close()
		return nil, fmt.Errorf("chown socket: %w", err)
	}
	if err := os.Chmod(cfg.Socket, 0o660); err != nil {
		l.Close()
		return nil, fmt.Errorf("chmod socket: %w", err)
	}
	return l, nil
}

// findLogDriver resolves the task log driver: the configured path, else
// titus-logger next to this binary, else on $PATH.
func findLogDriver(configured string) (string, error) {
	if configured != "" {
		return exec.LookPath(configured)
	}
	self, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("find own binary: %w", err)
	}
	if p, err := exec.LookPath(filepath.Join(filepath.Dir(self), logDriverName)); err == nil {
		return p, nil
	}
	p, err := exec.LookPath(logDriverName)
	if err != nil {
		return "", fmt.Errorf("task log driver %s is neither next to %s nor on $PATH (set logs.driver): %w", logDriverName, self, err)
	}
	return filepath.Abs(p)
}

const logDriverName = "titus-logger"
