package task

import (
	"fmt"
	"strconv"
)

// Labels a task sets to shape how its logs are shipped off the host
// (docs/logs.md).
const (
	// LabelLogShip "false" opts the task out of log shipping; "true"
	// (the default) ships its logs when the agent ships logs at all.
	LabelLogShip = "titus.logs/ship"
	// LabelLogShipMaxMiB caps the MiB of the task's logs shipped, in
	// whole files: a file that would cross the cap is not shipped.
	LabelLogShipMaxMiB = "titus.logs/max-mib"
	// MaxLogShipMiB bounds LabelLogShipMaxMiB (1 TiB).
	MaxLogShipMiB = 1 << 20
)

// LogShipping is what a task asked for its logs.
type LogShipping struct {
	OptOut bool
	// MaxBytes caps the bytes shipped; 0: no cap.
	MaxBytes int64
}

// LogShippingOf reads the task's log shipping labels, with a clear error
// for a malformed one.
func LogShippingOf(labels map[string]string) (LogShipping, *FieldError) {
	var l LogShipping
	if v, ok := labels[LabelLogShip]; ok {
		switch v {
		case "true":
		case "false":
			l.OptOut = true
		default:
			return l, &FieldError{Field: "labels[" + LabelLogShip + "]", Rule: fmt.Sprintf("must be \"true\" or \"false\", got %q", trunc(v))}
		}
	}
	if v, ok := labels[LabelLogShipMaxMiB]; ok {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 1 || n > MaxLogShipMiB {
			return l, &FieldError{Field: "labels[" + LabelLogShipMaxMiB + "]", Rule: fmt.Sprintf("must be a whole number of MiB from 1 to %d, got %q", MaxLogShipMiB, trunc(v))}
		}
		l.MaxBytes = n << 20
	}
	return l, nil
}
