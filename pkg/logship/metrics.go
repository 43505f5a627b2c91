package logship

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the shipper's collectors (docs/logs.md).
type Metrics struct {
	ShippedBytes prometheus.Counter
	ShippedFiles prometheus.Counter
	// UploadedBytes are the bytes sent to S3 for the files shipped
	// (compressed, for gzip'd files).
	UploadedBytes prometheus.Counter
	BacklogFiles  prometheus.Gauge
	BacklogBytes  prometheus.Gauge
	// OldestAge is the age of the oldest unshipped file, in seconds.
	OldestAge    prometheus.Gauge
	UploadErrors prometheus.Counter
	// Removed counts local files deleted, by reason (retention,
	// disk_pressure, emergency).
	Removed *prometheus.CounterVec
	// EmergencyDeleted counts files deleted before they were shipped.
	EmergencyDeleted prometheus.Counter
	// Skipped counts files not shipped by the task's choice (opt_out, cap).
	Skipped *prometheus.CounterVec
	// Refused counts entries of a log dir that were not plain files.
	Refused prometheus.Counter
}

// NewMetrics makes the collectors and registers them with reg (nil: not
// registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		ShippedBytes:     prometheus.NewCounter(prometheus.CounterOpts{Name: "titus_logship_shipped_bytes_total", Help: "Bytes of task logs shipped to S3 (as written by the task, before compression)."}),
		ShippedFiles:     prometheus.NewCounter(prometheus.CounterOpts{Name: "titus_logship_shipped_files_total", Help: "Task log files uploaded to S3."}),
		UploadedBytes:    prometheus.NewCounter(prometheus.CounterOpts{Name: "titus_logship_uploaded_bytes_total", Help: "Bytes sent to S3 for the task log files shipped (after compression)."}),
		BacklogFiles:     prometheus.NewGauge(prometheus.GaugeOpts{Name: "titus_logship_backlog_files", Help: "Task log files waiting to be uploaded."}),
		BacklogBytes:     prometheus.NewGauge(prometheus.GaugeOpts{Name: "titus_logship_backlog_bytes", Help: "Bytes of task log files waiting to be uploaded."}),
		OldestAge:        prometheus.NewGauge(prometheus.GaugeOpts{Name: "titus_logship_oldest_unshipped_age_seconds", Help: "Age of the oldest task log file not yet uploaded (0: none)."}),
		UploadErrors:     prometheus.NewCounter(prometheus.CounterOpts{Name: "titus_logship_upload_errors_total", Help: "Failed upload rounds (each followed by a jittered backoff)."}),
		Removed:          prometheus.NewCounterVec(prometheus.CounterOpts{Name: "titus_logship_removed_files_total", Help: "Local task log files deleted, by reason."}, []string{"reason"}),
		EmergencyDeleted: prometheus.NewCounter(prometheus.CounterOpts{Name: "titus_logship_emergency_deleted_files_total", Help: "Task log files deleted before they were uploaded, past the emergency disk threshold."}),
		Skipped:          prometheus.NewCounterVec(prometheus.CounterOpts{Name: "titus_logship_skipped_files_total", Help: "Task log files not uploaded by the task's choice, by reason (opt_out, cap)."}, []string{"reason"}),
		Refused:          prometheus.NewCounter(prometheus.CounterOpts{Name: "titus_logship_refused_entries_total", Help: "Entries of a task log dir never read because they are not plain files (links, devices)."}),
	}
	if reg != nil {
		reg.MustRegister(m.ShippedBytes, m.ShippedFiles, m.UploadedBytes, m.BacklogFiles, m.BacklogBytes, m.OldestAge, m.UploadErrors,
			m.Removed, m.EmergencyDeleted, m.Skipped, m.Refused)
	}
	return m
}
