package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/titus-agent/titus-agent/pkg/agent/taskrunner"
	"github.com/titus-agent/titus-agent/pkg/isolation"
	"github.com/titus-agent/titus-agent/pkg/metrics"
)

func defaultIsolation() IsolationConfig {
	return IsolationConfig{
		InitPath:       isolation.DefaultInitPath,
		DiskDir:        "/var/lib/titus-agent/disks",
		UserNamespaces: UserNamespacesConfig{HostIDBase: 1 << 24, IDsPerTask: 65536, MaxTasks: 4096},
	}
}

func (c IsolationConfig) validate() error {
	var errs []error
	if c.OOMScoreAdj < -1000 || c.OOMScoreAdj > 1000 {
		errs = append(errs, fmt.Errorf("isolation.oomScoreAdj: must be in [-1000, 1000], got %d", c.OOMScoreAdj))
	}
	for _, p := range c.AllowedHostPaths {
		if _, err := isolation.ParseHostPath(p); err != nil {
			errs = append(errs, fmt.Errorf("isolation.allowedHostPaths: %w", err))
		}
	}
	for _, p := range c.AllowedDevices {
		if !filepath.IsAbs(p) {
			errs = append(errs, fmt.Errorf("isolation.allowedDevices: %q must be absolute", p))
		}
	}
	errs = append(errs, c.checkPolicy()...)
	errs = append(errs, c.checkDiskPool()...)
	if u := c.UserNamespaces; u.HostIDBase != 0 {
		if err := u.ranges().Validate(); err != nil {
			errs = append(errs, fmt.Errorf("isolation.userNamespaces: %w", err))
		}
	}
	return errors.Join(errs...)
}

func (c IsolationConfig) checkDiskPool() []error {
	var errs []error
	total := 0
	seen := map[int64]bool{}
	for _, p := range c.DiskPool {
		if p.SizeMiB <= 0 || p.Count <= 0 {
			errs = append(errs, fmt.Errorf("isolation.diskPool: sizeMiB %d count %d: both must be positive", p.SizeMiB, p.Count))
		}
		if seen[p.SizeMiB] {
			errs = append(errs, fmt.Errorf("isolation.diskPool: size %d MiB given twice", p.SizeMiB))
		}
		seen[p.SizeMiB] = true
		total += max(p.Count, 0)
	}
	if total > maxPool {
		errs = append(errs, fmt.Errorf("isolation.diskPool: %d images in all, at most %d", total, maxPool))
	}
	return errs
}

// wireDiskPool keeps isolation.diskPool images ready for launches. What an
// earlier agent process's pool left is removed first, the pool on or off;
// the pool is emptied when the agent stops.
func wireDiskPool(ctx context.Context, cfg IsolationConfig, disks *isolation.Disks, log *slog.Logger, w *wiring, m *metrics.Agent) error {
	log = log.With("component", "disk-pool")
	q, ok := disks.Quota.(*isolation.LoopQuota)
	if !ok {
		if len(cfg.DiskPool) > 0 {
			log.Warn("isolation.diskPool needs the loop-ext4 disk backend; no pool", "backend", disks.Backend())
		}
		return nil
	}
	if len(cfg.DiskPool) == 0 {
		left, err := q.PurgePool(ctx)
		if len(left) > 0 {
			log.Warn("removed pooled disk images an earlier agent process left", "removed", left)
		}
		if err != nil {
			log.Error("remove what an earlier agent process's disk pool left", "err", err)
		}
		return nil
	}
	pc := isolation.DiskPoolConfig{Log: log, Launches: w.launches}
	for _, p := range cfg.DiskPool {
		pc.Sizes = append(pc.Sizes, isolation.DiskPoolSize{SizeMiB: p.SizeMiB, Count: p.Count})
	}
	if m != nil {
		pc.Stats = m
	}
	pool, err := q.EnablePool(pc)
	if err != nil {
		return err
	}
	pool.Start(ctx)
	w.closers = append(w.closers, pool.Close)
	log.Info("disk pool", "sizes", cfg.DiskPool)
	return nil
}

func (u UserNamespacesConfig) ranges() isolation.IDRanges {
	return isolation.IDRanges{Base: u.HostIDBase, Size: u.IDsPerTask, Count: u.MaxTasks}
}

// isolationOptions are the host's isolation settings for every task.
func isolationOptions(cfg IsolationConfig) isolation.Options {
	return isolation.Options{
		InitPath:         cfg.InitPath,
		OOMScoreAdj:      cfg.OOMScoreAdj,
		CPUSet:           cfg.CPUSet,
		AllowedHostPaths: hostPaths(cfg.AllowedHostPaths),
		AllowedDevices:   cfg.AllowedDevices,
		Compat32Bit:      cfg.Compat32BitSyscalls,
	}
}

// enableUserNS gives disks the configured user namespace ranges. Tasks'
// unprivileged roots must pass the directories above their root
// filesystems, so the agent's own directories between the state dir and
// the disk dir become searchable (o+x, not readable) by others. A failure
// only means tasks asking for a user namespace are refused.
func enableUserNS(cfg Config, disks *isolation.Disks, log *slog.Logger) {
	u := cfg.Isolation.UserNamespaces
	if u.HostIDBase == 0 {
		return
	}
	state, dir := filepath.Clean(cfg.StateDir), filepath.Clean(cfg.Isolation.DiskDir)
	for p := filepath.Dir(dir); strings.HasPrefix(p+"/", state+"/"); p = filepath.Dir(p) {
		if st, err := os.Stat(p); err == nil && st.Mode().Perm()&0o001 == 0 {
			_ = os.Chmod(p, st.Mode().Perm()|0o001)
		}
		if p == state {
			break
		}
	}
	if err := disks.EnableUserNS(u.ranges()); err != nil {
		log.Warn("user namespaces unavailable: tasks asking for one will fail", "err", err)
		return
	}
	log.Info("user namespaces per task", "hostIDBase", u.HostIDBase, "idsPerTask", u.IDsPerTask, "maxTasks", u.MaxTasks)
}

// hostPaths parses the allowed host paths (validated with the config).
func hostPaths(ps []string) []isolation.HostPath {
	var out []isolation.HostPath
	for _, p := range ps {
		if hp, err := isolation.ParseHostPath(p); err == nil {
			out = append(out, hp)
		}
	}
	return out
}

// userNSRestorer hands isolation the user namespace ranges the task records
// hold, so a restarted agent assigns them from its records.
type userNSRestorer struct {
	disks interface {
		RestoreUserNS(map[string]*isolation.UserNS)
	}
}

func (u userNSRestorer) RestoreRecords(recs []*taskrunner.Record) {
	by := map[string]*isolation.UserNS{}
	for _, rec := range recs {
		if d := rec.Resources.Disk; d != nil && d.UserNS != nil {
			by[rec.Spec.ID] = d.UserNS.Isolation()
		}
	}
	u.disks.RestoreUserNS(by)
}
