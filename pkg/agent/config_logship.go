package agent

import (
	"errors"
	"fmt"
	"time"
)

// LogShipConfig configures shipping task logs to S3 (docs/logs.md).
type LogShipConfig struct {
	Enabled bool   `json:"enabled"`
	Bucket  string `json:"bucket"`
	Prefix  string `json:"prefix"`
	Region  string `json:"region"`
	// Endpoint overrides the S3 (and STS, for roleARN) endpoint: moto in tests.
	Endpoint string `json:"endpoint"`
	// AccessKeyID and SecretAccessKey are static host credentials; empty:
	// the SDK's default chain (the instance profile).
	AccessKeyID     string `json:"accessKeyID"`
	SecretAccessKey string `json:"secretAccessKey"`
	// RoleARN is assumed with the host's credentials for the uploads.
	RoleARN               string `json:"roleARN"`
	Interval              string `json:"interval"`
	PartSizeMiB           int    `json:"partSizeMiB"`
	MultipartThresholdMiB int    `json:"multipartThresholdMiB"`
	BackoffBase           string `json:"backoffBase"`
	BackoffMax            string `json:"backoffMax"`
	DiskHighPercent       int    `json:"diskHighPercent"`
	DiskEmergencyPercent  int    `json:"diskEmergencyPercent"`
	// Compression is how files are shipped: gzip (keys end in .gz) or
	// none.
	Compression string `json:"compression"`
}

func defaultLogShip() LogShipConfig {
	return LogShipConfig{Region: "us-east-1", Interval: "2s", PartSizeMiB: 8, MultipartThresholdMiB: 16,
		BackoffBase: "1s", BackoffMax: "1m", DiskHighPercent: 85, DiskEmergencyPercent: 95, Compression: "gzip"}
}

// logShipDurations are the parsed durations of c.
type logShipDurations struct{ interval, base, max time.Duration }

func (c LogShipConfig) durations() (logShipDurations, error) {
	var d logShipDurations
	var errs []error
	for _, p := range []struct {
		key string
		v   string
		out *time.Duration
	}{{"interval", c.Interval, &d.interval}, {"backoffBase", c.BackoffBase, &d.base}, {"backoffMax", c.BackoffMax, &d.max}} {
		v, err := time.ParseDuration(p.v)
		if err != nil || v <= 0 {
			errs = append(errs, fmt.Errorf("logship.%s: must be a positive duration like 2s, got %q", p.key, p.v))
		}
		*p.out = v
	}
	return d, errors.Join(errs...)
}

func (c LogShipConfig) validate() error {
	if !c.Enabled {
		return nil
	}
	var errs []error
	if c.Bucket == "" {
		errs = append(errs, errors.New("logship.bucket: is required when logship.enabled"))
	}
	d, err := c.durations()
	if err != nil {
		errs = append(errs, err)
	} else if d.max < d.base {
		errs = append(errs, fmt.Errorf("logship.backoffMax: %s is below logship.backoffBase %s", d.max, d.base))
	}
	if c.PartSizeMiB < 5 || c.PartSizeMiB > 5<<10 {
		errs = append(errs, fmt.Errorf("logship.partSizeMiB: must be from 5 to 5120 (S3's part limits), got %d", c.PartSizeMiB))
	}
	if c.MultipartThresholdMiB < 1 {
		errs = append(errs, fmt.Errorf("logship.multipartThresholdMiB: must be at least 1, got %d", c.MultipartThresholdMiB))
	}
	if c.DiskHighPercent < 1 || c.DiskHighPercent > 99 || c.DiskEmergencyPercent < c.DiskHighPercent || c.DiskEmergencyPercent > 100 {
		errs = append(errs, fmt.Errorf("logship.diskHighPercent, diskEmergencyPercent: need 1 ≤ high (%d) ≤ emergency (%d) ≤ 100", c.DiskHighPercent, c.DiskEmergencyPercent))
	}
	if c.Compression != "gzip" && c.Compression != "none" {
		errs = append(errs, fmt.Errorf("logship.compression: must be gzip or none, got %q", c.Compression))
	}
	if (c.AccessKeyID == "") != (c.SecretAccessKey == "") {
		errs = append(errs, errors.New("logship.accessKeyID and logship.secretAccessKey: set both or neither"))
	}
	return errors.Join(errs...)
}
