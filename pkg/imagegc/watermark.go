package imagegc

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Watermark is an image store usage threshold: Bytes, or Percent of the
// size of the filesystem holding the store.
type Watermark struct {
	Bytes   int64
	Percent float64 // (0, 100]; used when Bytes is 0
}

var units = []struct {
	suffix string
	mult   int64
}{
	{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10},
	{"TB", 1e12}, {"GB", 1e9}, {"MB", 1e6}, {"KB", 1e3}, {"B", 1},
}

// ParseWatermark reads "85%", "20GiB", "512MiB", "1.5TB" or a plain number
// of bytes.
func ParseWatermark(s string) (Watermark, error) {
	s = strings.TrimSpace(s)
	if p, ok := strings.CutSuffix(s, "%"); ok {
		f, err := strconv.ParseFloat(strings.TrimSpace(p), 64)
		if err != nil || !(f > 0 && f <= 100) {
			return Watermark{}, fmt.Errorf("%q: a percentage must be in (0, 100]", s)
		}
		return Watermark{Percent: f}, nil
	}
	mult := int64(1)
	num := s
	for _, u := range units {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			num, mult = strings.TrimSpace(n), u.mult
			break
		}
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || !(f > 0) || f*float64(mult) >= math.MaxInt64 {
		return Watermark{}, fmt.Errorf("%q: want a percentage (85%%) or a positive size (20GiB, 512MiB, bytes)", s)
	}
	return Watermark{Bytes: int64(f * float64(mult))}, nil
}

// Resolve is w in bytes for a filesystem of fsSize bytes.
func (w Watermark) Resolve(fsSize int64) int64 {
	if w.Bytes > 0 {
		return w.Bytes
	}
	return int64(float64(fsSize) * w.Percent / 100)
}

// String is w as ParseWatermark reads it.
func (w Watermark) String() string {
	if w.Bytes > 0 {
		return strconv.FormatInt(w.Bytes, 10)
	}
	return strconv.FormatFloat(w.Percent, 'f', -1, 64) + "%"
}
