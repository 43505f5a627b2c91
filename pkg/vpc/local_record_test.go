package vpc

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/titus-agent/titus-agent/pkg/task"
)

// TestLocalRecordWriteFailureKeepsRecord: when the allocation record
// cannot be written (a full disk: its temporary file is /dev/full here),
// Allocate fails with the write's error (ENOSPC, so the task ends
// HostDiskFull) and the record on disk is left as it was. The write's
// error used to be dropped: the empty temporary file was renamed over the
// record, losing every allocation (an agent restart would then hand the
// same addresses out again).
func TestLocalRecordWriteFailureKeepsRecord(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "vpc-local.json")
	p := &LocalProvider{cfg: LocalConfig{CIDR: netip.MustParsePrefix("198.18.0.0/24"), RecordPath: path, Now: time.Now},
		rec: localRecord{Tasks: map[string]string{}, Cooling: map[string]time.Time{}}}
	if _, err := p.Allocate(context.Background(), "t1", task.NetworkRequest{}); err != nil {
		t.Fatal(err)
	}
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/dev/full", path+".tmp"); err != nil {
		t.Fatal(err)
	}
	_, err = p.Allocate(context.Background(), "t2", task.NetworkRequest{})
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Allocate with a full disk: %v, want ENOSPC", err)
	}
	after, rerr := os.ReadFile(path)
	if rerr != nil || string(after) != string(before) {
		t.Fatalf("record after a failed write: %q %v, want it unchanged: %q", after, rerr, before)
	}
	if _, ok := p.rec.Tasks["t2"]; ok {
		t.Fatal("t2 kept an address the record does not hold")
	}
}
