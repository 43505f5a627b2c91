package agent

import (
	"strings"
	"testing"
)

func TestLogShipConfigValidate(t *testing.T) {
	ok := defaultLogShip()
	ok.Enabled, ok.Bucket = true, "logs"
	tests := []struct {
		name string
		mod  func(c *LogShipConfig)
		want string // "" = valid
	}{
		{"off needs nothing", func(c *LogShipConfig) { *c = LogShipConfig{} }, ""},
		{"ok", func(c *LogShipConfig) {}, ""},
		{"no bucket", func(c *LogShipConfig) { c.Bucket = "" }, "logship.bucket"},
		{"bad interval", func(c *LogShipConfig) { c.Interval = "soon" }, "logship.interval"},
		{"zero backoff", func(c *LogShipConfig) { c.BackoffBase = "0s" }, "logship.backoffBase"},
		{"max below base", func(c *LogShipConfig) { c.BackoffBase, c.BackoffMax = "1m", "1s" }, "logship.backoffMax"},
		{"small parts", func(c *LogShipConfig) { c.PartSizeMiB = 1 }, "logship.partSizeMiB"},
		{"thresholds crossed", func(c *LogShipConfig) { c.DiskHighPercent, c.DiskEmergencyPercent = 90, 80 }, "diskEmergencyPercent"},
		{"no compression", func(c *LogShipConfig) { c.Compression = "none" }, ""},
		{"unknown compression", func(c *LogShipConfig) { c.Compression = "zstd" }, "logship.compression"},
		{"half a key", func(c *LogShipConfig) { c.AccessKeyID = "AKIA" }, "logship.accessKeyID"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := ok
			tt.mod(&c)
			err := c.validate()
			if tt.want == "" {
				if err != nil {
					t.Fatalf("validate = %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("validate = %v, want an error naming %s", err, tt.want)
			}
		})
	}
}

// The logger keeps every rotated file when the agent ships (the shipper
// deletes them once shipped), and logs.maxFiles otherwise.
func TestLogMaxFiles(t *testing.T) {
	cfg := DefaultConfig()
	if got := logMaxFiles(cfg); got != cfg.Logs.MaxFiles {
		t.Errorf("without shipping: %d", got)
	}
	cfg.LogShip.Enabled = true
	if got := logMaxFiles(cfg); got != shipperKeepsLogs {
		t.Errorf("with shipping: %d", got)
	}
}
