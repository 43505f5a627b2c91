package agent

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/titus-agent/titus-agent/pkg/agent/taskrunner"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// Saves made while a commit is in flight share the next commit, and every
// one of them is on disk when its Save returns.
func TestStoreGroupCommit(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	// A lone Save commits at once, in a round of its own.
	if err := s.Save(&taskrunner.Record{Spec: task.Spec{ID: "alone"}}); err != nil {
		t.Fatal(err)
	}
	if got := s.rounds.Load(); got != 1 {
		t.Fatalf("rounds after one save = %d, want 1", got)
	}
	// A commit in flight (held): n Saves queue behind it.
	s.mu.Lock()
	s.busy = true
	s.mu.Unlock()
	const n = 20
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			errs[i] = s.Save(&taskrunner.Record{Spec: task.Spec{ID: fmt.Sprintf("t%02d", i)}})
		})
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		s.mu.Lock()
		queued := len(s.queue)
		s.mu.Unlock()
		if queued == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d saves queued", queued, n)
		}
		time.Sleep(time.Millisecond)
	}
	s.commitQueued() // the commit in flight ends: the queue goes in one round
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("save %d: %v", i, err)
		}
	}
	if got := s.rounds.Load(); got != 2 {
		t.Errorf("rounds = %d, want 2 (the lone save, then all %d queued together)", got, n)
	}
	s.mu.Lock()
	if s.busy || len(s.queue) > 0 {
		t.Errorf("after the round: busy %v, %d queued", s.busy, len(s.queue))
	}
	s.mu.Unlock()
	// All on disk: a reopened store has every record.
	s.Close()
	s, err = OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	recs, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, r := range recs {
		ids = append(ids, r.Spec.ID)
	}
	slices.Sort(ids)
	want := []string{"alone"}
	for i := range n {
		want = append(want, fmt.Sprintf("t%02d", i))
	}
	if diff := cmp.Diff(want, ids); diff != "" {
		t.Errorf("records on disk (-want +got):\n%s", diff)
	}
}

// A write that fails a commit fails alone: the others in it are retried
// each on its own.
func TestStoreGroupCommitFailure(t *testing.T) {
	s, err := OpenStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// An empty key is refused by bbolt.
	s.mu.Lock()
	s.busy = true
	s.mu.Unlock()
	var wg sync.WaitGroup
	var bad, good error
	wg.Go(func() { bad = s.Save(&taskrunner.Record{}) })
	wg.Go(func() { good = s.Save(&taskrunner.Record{Spec: task.Spec{ID: "g"}}) })
	for {
		s.mu.Lock()
		q := len(s.queue)
		s.mu.Unlock()
		if q == 2 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	s.commitQueued()
	wg.Wait()
	if bad == nil || good != nil {
		t.Fatalf("saves in a failed commit: bad %v, good %v; want only the bad one to fail", bad, good)
	}
	if err := s.Save(&taskrunner.Record{Spec: task.Spec{ID: "h"}}); err != nil {
		t.Fatalf("save after a failed commit: %v", err)
	}
}
