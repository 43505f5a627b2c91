package agent

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/titus-agent/titus-agent/pkg/agent/taskrunner"
	"github.com/titus-agent/titus-agent/pkg/backoff"
	"github.com/titus-agent/titus-agent/pkg/logship"
	"github.com/titus-agent/titus-agent/pkg/metrics"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// shipperKeepsLogs is the logger's rotated-file limit when the agent
// ships logs: the logger deletes none, the shipper deletes them once
// shipped (logs.maxFiles of them stay) or under disk pressure.
const shipperKeepsLogs = 1 << 30

// wireLogShip adds the log shipping hook to the last stage, before the
// container hook (so it stops after the container and before the disk),
// and returns the shipper for the daemon to run.
func wireLogShip(ctx context.Context, cfg Config, log *slog.Logger, store *Store, w *wiring, reg prometheus.Registerer, m *metrics.Agent) (*logship.Shipper, error) {
	c := cfg.LogShip
	if !c.Enabled {
		return nil, nil
	}
	d, err := c.durations()
	if err != nil {
		return nil, err
	}
	api, err := logship.NewS3(ctx, logship.AWSConfig{Region: c.Region, Endpoint: c.Endpoint, AccessKeyID: c.AccessKeyID,
		SecretAccessKey: c.SecretAccessKey, RoleARN: c.RoleARN, APIOptions: m.AWSAPIOptions()})
	if err != nil {
		return nil, err
	}
	s, err := logship.New(logship.Config{
		Bucket: c.Bucket, Prefix: c.Prefix, LogDir: cfg.LogDir, Interval: d.interval, Gzip: c.Compression == "gzip",
		MultipartThreshold: int64(c.MultipartThresholdMiB) << 20, PartSize: int64(c.PartSizeMiB) << 20,
		Backoff:   backoff.Policy{Base: d.base, Max: d.max, Jitter: backoff.Full},
		KeepFiles: cfg.Logs.MaxFiles, DiskHigh: float64(c.DiskHighPercent) / 100, DiskEmergency: float64(c.DiskEmergencyPercent) / 100,
		Logger: log,
	}, api, store.DB(), logship.NewMetrics(reg))
	if err != nil {
		return nil, fmt.Errorf("logship: %w", err)
	}
	last := len(w.stages) - 1
	w.stages[last] = append([]taskrunner.PrestartHook{&taskrunner.LogShipHook{Shipper: specShipper{s}}}, w.stages[last]...)
	return s, nil
}

// specShipper adapts the shipper to the hook.
type specShipper struct{ s *logship.Shipper }

func (a specShipper) Track(spec *task.Spec) error { return a.s.Track(logship.TaskInfoOf(spec)) }
func (a specShipper) Finish(id string) error      { return a.s.Finish(id) }

// logMaxFiles is the logger's rotated-file limit.
func logMaxFiles(cfg Config) int {
	if cfg.LogShip.Enabled {
		return shipperKeepsLogs
	}
	return cfg.Logs.MaxFiles
}
