package agent

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/titus-agent/titus-agent/pkg/agent/taskrunner"
	"github.com/titus-agent/titus-agent/pkg/task"
)

func TestStoreRoundTripAndCorruptRecords(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	rec := &taskrunner.Record{Spec: task.Spec{ID: "a", OwnerEmail: "x@example.com", Image: "img", KillGracePeriod: time.Second}}
	rec.Status.Advance(task.Accepted, task.ReasonAccepted, "", time.Unix(1, 0))
	rec.Resources.Network = &task.NetworkAttachment{IPv4: "198.18.0.5"}
	if err := s.Save(rec); err != nil {
		t.Fatal(err)
	}
	// A second agent on the same state dir is refused, not corrupting it.
	if _, err := OpenStoreTimeout(dir, 100*time.Millisecond); err == nil {
		t.Fatal("second open of the state succeeded")
	}
	s.Close()
	s, err = OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	rec.Version = taskrunner.RecordVersion
	if diff := cmp.Diff([]*taskrunner.Record{rec}, got); diff != "" {
		t.Fatalf("load (-want +got):\n%s", diff)
	}
	if _, err := os.Stat(filepath.Join(dir, "tasks.db")); err != nil {
		t.Fatal(err)
	}
}
