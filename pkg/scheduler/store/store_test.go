package store

import (
	"context"
	"errors"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestFencedWritesOfADeposedLeaderFail: once another replica holds the
// election, the old leader's placement writes are refused (ErrNotLeader),
// and a task key is never created twice, so two placements cannot both
// commit.
func TestFencedWritesOfADeposedLeaderFail(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e, err := StartEmbeddedEtcd(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	cli, err := clientv3.New(clientv3.Config{Endpoints: e.Endpoints, Logger: nopZap()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	lead := func() (*Election, *Store) {
		el, err := NewElection(ctx, cli, "/t/", 30*time.Second, 128)
		if err != nil {
			t.Fatal(err)
		}
		st, err := el.Campaign(ctx, "x")
		if err != nil {
			t.Fatal(err)
		}
		return el, st
	}
	oldSess, old := lead()
	task := put{key: "/t/tasks/j/j.0.1", val: []byte("a"), create: true}
	if err := old.commit(ctx, []put{task}); err != nil {
		t.Fatalf("leader's write: %v", err)
	}
	if err := old.commit(ctx, []put{task}); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("creating the same task twice: err = %v, want ErrNotLeader", err)
	}
	oldSess.Close() // the lease ends (as when the leader stalls past its TTL)
	_, cur := lead()
	if err := old.commit(ctx, []put{{key: "/t/tasks/j/j.1.1", val: []byte("b"), create: true}}); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("deposed leader's write: err = %v, want ErrNotLeader", err)
	}
	if err := cur.commit(ctx, []put{{key: "/t/tasks/j/j.1.1", val: []byte("c"), create: true}}); err != nil {
		t.Fatalf("new leader's write: %v", err)
	}
}
