package audit

import (
	"log/slog"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestPrincipalCapKeepsOthersRecords is the attack: an application owner
// scales its own job in a loop (calls that succeed, so no refusal bound
// applies), ten times the trail's size, to push another tenant's records
// out. With the per-principal cap its own oldest records go, B's all stay;
// without it (the control) B's are gone.
func TestPrincipalCapKeepsOthersRecords(t *testing.T) {
	const maxRecords = 50
	for _, tc := range []struct {
		name         string
		perPrincipal int
		bKept        bool
	}{
		{"capped", 10, true},
		{"control without a cap", maxRecords, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, cli := start(t, Options{Prefix: "/t/", MaxRecords: maxRecords, MaxRecordsPerPrincipal: tc.perPrincipal, Log: slog.New(slog.DiscardHandler)})
			ctx := t.Context()
			rec := func(who, job string) {
				if err := l.Record(ctx, Record{Principal: who, Method: "ScaleJob", Action: "job.scale", JobID: job, Code: "OK"}); err != nil {
					t.Error(err)
				}
			}
			for range 5 {
				rec("b@example.com", "b-job")
			}
			// Concurrent, so that batches hold many of A's records.
			var wg sync.WaitGroup
			for range 10 {
				wg.Go(func() {
					for range maxRecords {
						rec("a@example.com", "a-job")
					}
				})
			}
			wg.Wait()
			for range 5 {
				rec("b@example.com", "b-job")
			}
			rec("a@example.com", "a-last")
			if err := l.pruneOnce(ctx, cli); err != nil {
				t.Fatal(err)
			}
			b, _, err := l.List(ctx, Filter{Principal: "b@example.com"})
			if err != nil {
				t.Fatal(err)
			}
			a, _, err := l.List(ctx, Filter{Principal: "a@example.com"})
			if err != nil {
				t.Fatal(err)
			}
			if tc.bKept {
				if len(b) != 10 {
					t.Errorf("B keeps %d of its 10 records after A's %d scales", len(b), 10*maxRecords+1)
				}
				if len(a) != tc.perPrincipal {
					t.Errorf("A holds %d records, want its cap %d", len(a), tc.perPrincipal)
				}
				if len(a) == 0 || a[len(a)-1].JobID != "a-last" {
					t.Errorf("A's newest call was not stored: %+v", a)
				}
				// The index holds no more than the records.
				resp, err := cli.Get(ctx, "/t/audit-by/", clientv3.WithPrefix(), clientv3.WithCountOnly())
				if err != nil || resp.Count != int64(len(a)+len(b)) {
					t.Errorf("index entries = %d, %v; want %d", resp.Count, err, len(a)+len(b))
				}
			} else if len(b) == 10 {
				t.Error("control: B's records all survived without a per-principal cap; the attack test proves nothing")
			}
		})
	}
}

// TestPrincipalCapIndexFollowsPruning: records pruned by age or count take
// their index entries with them, so the index does not grow.
func TestPrincipalCapIndexFollowsPruning(t *testing.T) {
	l, cli := start(t, Options{Prefix: "/t/", MaxRecords: 20, MaxRecordsPerPrincipal: 20, Log: slog.New(slog.DiscardHandler)})
	ctx := t.Context()
	for i := range 60 {
		if err := l.Record(ctx, Record{Principal: string(rune('a' + i%3)), Method: "KillJob", Code: "OK"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.pruneOnce(ctx, cli); err != nil {
		t.Fatal(err)
	}
	// Run prunes too, after its own writes: between its delete of records
	// and of their index entries the count is briefly higher. Left-over
	// entries would stay.
	var n int64
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		resp, err := cli.Get(ctx, "/t/audit-by/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			t.Fatal(err)
		}
		if n = resp.Count; n == 20 || time.Now().After(deadline) {
			break
		}
	}
	if n != 20 {
		t.Errorf("index entries after pruning = %d; want 20", n)
	}
}

func TestPrincipalCapDefault(t *testing.T) {
	for _, tc := range []struct{ max, per, want int }{
		{0, 0, 10_000}, {20_000, 0, 2000}, {5000, 0, 1000}, {500, 0, 500}, {100, 7, 7},
	} {
		if got := New(Options{MaxRecords: tc.max, MaxRecordsPerPrincipal: tc.per}).opts.MaxRecordsPerPrincipal; got != tc.want {
			t.Errorf("MaxRecords %d, MaxRecordsPerPrincipal %d: cap %d, want %d", tc.max, tc.per, got, tc.want)
		}
	}
}
