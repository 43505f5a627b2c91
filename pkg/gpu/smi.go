package gpu

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// ErrNoSMI says nvidia-smi is not installed.
var ErrNoSMI = errors.New("nvidia-smi not found")

// NvidiaSMI runs nvidia-smi (the driver's tool) to learn each GPU's
// model and memory.
type NvidiaSMI struct {
	// Path of nvidia-smi; "" looks it up on $PATH.
	Path string
}

// Query runs nvidia-smi --query-gpu.
func (s NvidiaSMI) Query(ctx context.Context) ([]SMIGPU, error) {
	p := s.Path
	if p == "" {
		var err error
		if p, err = exec.LookPath("nvidia-smi"); err != nil {
			return nil, ErrNoSMI
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, p, "--query-gpu=index,uuid,name,memory.total", "--format=csv,noheader,nounits").Output()
	if err != nil {
		return nil, fmt.Errorf("nvidia-smi: %w", err)
	}
	return ParseSMI(string(out))
}

// ParseSMI reads nvidia-smi's "index, uuid, name, memory.total" CSV
// (noheader, nounits: memory in MiB).
func ParseSMI(out string) ([]SMIGPU, error) {
	var rows []SMIGPU
	for line := range strings.SplitSeq(out, "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		f := strings.Split(line, ",")
		if len(f) != 4 {
			return nil, fmt.Errorf("nvidia-smi: unexpected line %q", line)
		}
		for i := range f {
			f[i] = strings.TrimSpace(f[i])
		}
		idx, err := strconv.Atoi(f[0])
		if err != nil {
			return nil, fmt.Errorf("nvidia-smi: index in %q: %w", line, err)
		}
		mem, err := strconv.ParseInt(f[3], 10, 64)
		if err != nil {
			mem = 0 // "[N/A]" on some boards
		}
		rows = append(rows, SMIGPU{Index: idx, UUID: f[1], Model: f[2], MemoryMiB: mem})
	}
	return rows, nil
}
