package agent

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/titus-agent/titus-agent/pkg/isolation"
)

// A start with the disk pool off still removes what a killed agent's
// pool left, and registers nothing to close.
func TestWireDiskPoolOffPurges(t *testing.T) {
	dir := t.TempDir()
	disks, err := isolation.NewDisks(dir)
	if err != nil {
		t.Fatal(err)
	}
	if disks.Backend() != isolation.BackendLoopExt4 {
		t.Fatalf("backend %s in a temporary dir", disks.Backend())
	}
	if err := os.MkdirAll(filepath.Join(dir, "pool"), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"1024-0000000a.img", "1024-0000000b.img.tmp"} {
		if err := os.WriteFile(filepath.Join(dir, "pool", n), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	w := &wiring{}
	if err := wireDiskPool(context.Background(), IsolationConfig{}, disks, slog.New(slog.DiscardHandler), w, nil); err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(filepath.Join(dir, "pool")); len(ents) != 0 {
		t.Fatalf("pool files left: %v", ents)
	}
	if len(w.closers) != 0 {
		t.Fatalf("closers registered for a pool that is off: %d", len(w.closers))
	}
}
