package metadataproxy

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// Listeners prepared in a pooled namespace go to the task that gets that
// very namespace, under whatever path it is mounted (a hard link stands in
// for the bind mount: same inode), once; a task in another namespace gets
// its own; Release closes what no task took. Files stand in for the
// namespaces.
func TestPreparedListenersGoToTheirNamespaceOnly(t *testing.T) {
	st := &fakeSTS{now: time.Now, life: time.Hour}
	s, fl := newListenService(t, Config{STS: st})
	dir := t.TempDir()
	ns := func(name string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	pooled, other, unused := ns("pool-w1"), ns("task-b"), ns("pool-w2")
	taskPath := filepath.Join(dir, "task-a")
	for _, p := range []string{pooled, pooled, unused} { // the second: already prepared
		if err := s.Prepare(p); err != nil {
			t.Fatalf("Prepare %s: %v", p, err)
		}
	}
	if n := s.Prepared(); n != 2 {
		t.Fatalf("prepared %d namespaces, want 2", n)
	}
	if err := os.Link(pooled, taskPath); err != nil { // handed to task-a
		t.Fatal(err)
	}

	spA, attA := spec("task-a", "")
	attA.NetNSPath = taskPath
	addrsA, err := s.Start(context.Background(), spA, attA)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{fl.addr(pooled)}; !cmp.Equal(want, addrsA) {
		t.Errorf("task-a listens on %v, want the prepared %v", addrsA, want)
	}
	if code, body := httpGet(t, addrsA[0], "/latest/meta-data/instance-id"); code != 200 || body != "task-a" {
		t.Errorf("prepared listener answers %d %q, want task-a's identity", code, body)
	}
	spB, attB := spec("task-b", "")
	attB.NetNSPath = other
	addrsB, err := s.Start(context.Background(), spB, attB)
	if err != nil {
		t.Fatal(err)
	}
	if addrsB[0] == addrsA[0] || addrsB[0] == fl.addr(unused) {
		t.Errorf("task-b got another namespace's listener %v", addrsB)
	}
	if diff := cmp.Diff([]string{pooled, unused, other}, fl.calls); diff != "" {
		t.Errorf("listens (-want +got):\n%s", diff)
	}
	if n := s.Prepared(); n != 1 {
		t.Errorf("prepared after task-a took its own: %d, want 1", n)
	}

	// What no task took is closed by Release; a missing namespace, or one
	// with nothing prepared, is no error.
	s.Release(unused)
	s.Release(other)
	s.Release(filepath.Join(dir, "gone"))
	if c, err := net.DialTimeout("tcp", fl.addr(unused), time.Second); err == nil {
		c.Close()
		t.Errorf("released listener %s still accepts", fl.addr(unused))
	}
	if n := s.Prepared(); n != 0 {
		t.Errorf("prepared after release: %d", n)
	}
	// task-b's own listener is not the pool's to close.
	if code, _ := httpGet(t, addrsB[0], "/latest/meta-data/instance-id"); code != 200 {
		t.Errorf("task-b's listener after a release: %d", code)
	}
}
