package runtime

import (
	"context"
	"fmt"
	"sync"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"golang.org/x/sync/semaphore"
)

// Runtime talks to one containerd in one namespace.
type Runtime struct {
	cfg      Config
	client   *client.Client
	resolver func() remotes.Resolver
	oom      *oomWatcher
	units    unitStopper // systemd driver: stops task slices
	pulls    pulls       // under way, kept from RemoveImage
	images   imageCache  // what launches read of resolved images
	// downloads bounds the layer downloads of every pull at once
	// (Config.MaxConcurrentDownloads).
	downloads *semaphore.Weighted
	// execs are this process's live exec sessions (SweepExecSessions).
	execs liveExecs

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// New connects to containerd and starts watching OOM events of the
// namespace. It does not wait for containerd to be up beyond the dial.
func New(ctx context.Context, cfg Config) (*Runtime, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	c, err := client.New(cfg.Address, client.WithDefaultNamespace(cfg.Namespace))
	if err != nil {
		return nil, fmt.Errorf("connect containerd %s: %w", cfg.Address, err)
	}
	bg, cancel := context.WithCancel(context.Background())
	r := &Runtime{
		cfg:      cfg,
		client:   c,
		resolver: func() remotes.Resolver { return newResolver(cfg) },
		oom:      newOOMWatcher(),
		cancel:   cancel,

		downloads: semaphore.NewWeighted(int64(cfg.MaxConcurrentDownloads)),
	}
	if cfg.CgroupDriver == CgroupDriverSystemd {
		r.units = systemdUnits{}
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		r.oom.run(r.ctx(bg), c, cfg.Namespace)
	}()
	return r, nil
}

// Close stops the event subscription and closes the client. Running
// containers are not touched.
func (r *Runtime) Close() error {
	r.cancel()
	r.wg.Wait()
	return r.client.Close()
}

// Version returns containerd's version string.
func (r *Runtime) Version(ctx context.Context) (string, error) {
	v, err := r.client.Version(r.ctx(ctx))
	if err != nil {
		return "", fmt.Errorf("containerd version: %w", err)
	}
	return v.Version, nil
}

// ctx pins the runtime's namespace whatever the caller's context carries.
func (r *Runtime) ctx(ctx context.Context) context.Context {
	return namespaces.WithNamespace(ctx, r.cfg.Namespace)
}
