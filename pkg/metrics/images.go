package metrics

import "github.com/prometheus/client_golang/prometheus"

// Image removal triggers, the values of the "trigger" label.
const (
	TriggerGC    = "gc"    // the high watermark was passed
	TriggerPrune = "prune" // titus-agent image prune
	TriggerRm    = "rm"    // titus-agent image rm
)

// Images is the image store's collectors (package imagegc).
type Images struct {
	// StoreBytes is the content store plus snapshots of the agent's
	// containerd namespace.
	StoreBytes prometheus.Gauge
	// HighWatermarkBytes and LowWatermarkBytes are the GC's thresholds
	// resolved to bytes.
	HighWatermarkBytes prometheus.Gauge
	LowWatermarkBytes  prometheus.Gauge
	// Count is the images present.
	Count prometheus.Gauge
	// Removed counts removed images by trigger (Trigger*).
	Removed *prometheus.CounterVec
	// RemovedBytes counts the bytes those removals freed, by trigger.
	RemovedBytes *prometheus.CounterVec
	// PrePulls counts configured pre-pulls by outcome (ok, error).
	PrePulls *prometheus.CounterVec
}

// NewImages creates the image collectors and registers them with reg.
func NewImages(reg prometheus.Registerer) *Images {
	m := &Images{
		StoreBytes: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "titus_agent", Name: "image_store_bytes",
			Help: "Bytes of containerd's content store plus snapshots in the agent's namespace."}),
		HighWatermarkBytes: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "titus_agent", Name: "image_gc_high_watermark_bytes",
			Help: "Image store usage above which unused images are removed."}),
		LowWatermarkBytes: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "titus_agent", Name: "image_gc_low_watermark_bytes",
			Help: "Image store usage image garbage collection brings the store down to."}),
		Count: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "titus_agent", Name: "images",
			Help: "Images in the agent's containerd namespace."}),
		Removed: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "titus_agent", Name: "images_removed_total",
			Help: "Images removed, by trigger (gc, prune, rm)."}, []string{"trigger"}),
		RemovedBytes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "titus_agent", Name: "image_removed_bytes_total",
			Help: "Bytes of the image store freed by image removals, by trigger."}, []string{"trigger"}),
		PrePulls: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "titus_agent", Name: "image_prepulls_total",
			Help: "Configured image pre-pulls at agent start, by outcome (ok, error)."}, []string{"outcome"}),
	}
	for _, t := range []string{TriggerGC, TriggerPrune, TriggerRm} {
		m.Removed.WithLabelValues(t)
		m.RemovedBytes.WithLabelValues(t)
	}
	m.PrePulls.WithLabelValues("ok")
	m.PrePulls.WithLabelValues("error")
	reg.MustRegister(m.StoreBytes, m.HighWatermarkBytes, m.LowWatermarkBytes, m.Count, m.Removed, m.RemovedBytes, m.PrePulls)
	return m
}
