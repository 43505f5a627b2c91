package audit

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestRefusalFloodCannotEvictOthers (attack): mallory, an authenticated
// principal, is refused 500 times in a trail bounded to 30 records, between
// alice's mutating calls. Bounded per principal, her refusals keep every
// record of alice's; each of hers is in the structured log, and the ones
// not stored one by one are counted in one record of the window. With no
// bound (the control), the same flood pushes alice's records out.
func TestRefusalFloodCannotEvictOthers(t *testing.T) {
	for _, c := range []struct {
		name       string
		burst      int
		wantAlice  int
		wantStored int // mallory's records, the aggregate included
	}{
		{"bounded", 5, 15, 6},
		{"control: no bound", 1 << 30, -1, -1},
	} {
		t.Run(c.name, func(t *testing.T) {
			clk := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
			var buf bytes.Buffer
			var bmu sync.Mutex
			l, cli := start(t, Options{Prefix: "/t/", MaxRecords: 30, Now: clk.now, RefusalBurst: c.burst, RefusalEvery: time.Hour,
				RefusalWindow: time.Minute, Log: slog.New(slog.NewJSONHandler(lockedWriter{&buf, &bmu}, nil))})
			ctx := t.Context()
			alice := func(n int) {
				for range n {
					if err := l.Record(ctx, Record{Principal: "alice@example.com", Method: "ScaleJob", JobID: "billing-1", Code: "OK"}); err != nil {
						t.Fatal(err)
					}
					clk.add(time.Millisecond)
				}
			}
			alice(10)
			for i := range 500 {
				method := "KillJob"
				if i%5 == 0 {
					method = "ScaleJob"
				}
				if err := l.Record(ctx, Record{Principal: "mallory@example.com", Method: method, JobID: "billing-1", Code: "NotFound", Message: "no such job"}); err != nil {
					t.Fatal(err)
				}
				clk.add(time.Millisecond)
			}
			alice(5)
			clk.add(2 * time.Minute)
			l.flushAggregates(false)
			// The aggregate is queued without a waiter: wait for it.
			deadline := time.Now().Add(5 * time.Second)
			for c.burst < 1000 {
				recs, _, _ := l.List(ctx, Filter{Principal: "mallory@example.com"})
				if len(recs) == c.burst+1 || time.Now().After(deadline) {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
			if err := l.pruneOnce(ctx, cli); err != nil {
				t.Fatal(err)
			}
			all, _, err := l.List(ctx, Filter{})
			if err != nil {
				t.Fatal(err)
			}
			n := map[string]int{}
			var agg []Record
			for _, r := range all {
				n[r.Principal]++
				if r.Count > 0 {
					agg = append(agg, r)
				}
			}
			if c.wantAlice < 0 {
				if n["alice@example.com"] == 15 {
					t.Fatalf("control: the unbounded flood kept all of alice's records (%v): the attack does not test anything", n)
				}
				return
			}
			if n["alice@example.com"] != c.wantAlice || n["mallory@example.com"] != c.wantStored {
				t.Errorf("records kept by principal %v; want alice's %d, mallory's %d", n, c.wantAlice, c.wantStored)
			}
			if len(agg) != 1 {
				t.Fatalf("aggregates %+v, want one", agg)
			}
			type sum struct {
				Principal, Method, Code, Job string
				Count                        int
			}
			if diff := cmp.Diff(sum{"mallory@example.com", AggregateMethod, "NotFound", "billing-1", 495}, sum{agg[0].Principal, agg[0].Method, agg[0].Code, agg[0].JobID, agg[0].Count}); diff != "" {
				t.Errorf("aggregate (-want +got):\n%s", diff)
			}
			if !strings.Contains(agg[0].Message, "KillJob NotFound ×396") || !strings.Contains(agg[0].Message, "ScaleJob NotFound ×99") || !agg[0].Ended.After(agg[0].Time) {
				t.Errorf("aggregate message %q, %s..%s", agg[0].Message, agg[0].Time, agg[0].Ended)
			}
			bmu.Lock()
			logged := buf.String()
			bmu.Unlock()
			if got := strings.Count(logged, `"principal":"mallory@example.com","method":"KillJob"`) + strings.Count(logged, `"principal":"mallory@example.com","method":"ScaleJob"`); got != 500 {
				t.Errorf("%d of mallory's refusals in the structured log, want 500", got)
			}
			if got := strings.Count(logged, `"stored":false`); got != 495 {
				t.Errorf("%d log lines say stored=false, want 495", got)
			}
		})
	}
}

// TestRefusalBucket: the bucket refills one per every, principals are
// bounded apart, calls let in (OK, an exec session its caller ended) are
// never counted, mixed refusals aggregate as
// Various without a job, and a principal idle with a full bucket is
// forgotten.
func TestRefusalBucket(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s := newRefusals(2, time.Minute, time.Hour)
	admit := func(p, method, code, job string, at time.Time) bool {
		return s.admit(&Record{Principal: p, Method: method, Code: code, JobID: job}, at)
	}
	var got []bool
	for i := range 4 {
		got = append(got, admit("m", "KillJob", "PermissionDenied", "j1", t0.Add(time.Duration(i)*time.Second)))
	}
	got = append(got, admit("m", "KillJob", "OK", "j1", t0.Add(5*time.Second)))
	got = append(got, admit("m", "ExecTask", "Canceled", "j1", t0.Add(5*time.Second))) // a session let in, ended by its caller
	got = append(got, admit("other", "KillJob", "PermissionDenied", "j1", t0.Add(5*time.Second)))
	got = append(got, admit("m", "ScaleJob", "InvalidArgument", "j2", t0.Add(10*time.Second)))
	got = append(got, admit("m", "ScaleJob", "InvalidArgument", "j2", t0.Add(70*time.Second)))
	if diff := cmp.Diff([]bool{true, true, false, false, true, true, true, false, true}, got); diff != "" {
		t.Errorf("admitted (-want +got):\n%s", diff)
	}
	if r := s.due(t0.Add(30*time.Minute), false); len(r) != 0 {
		t.Errorf("aggregates before the window ended: %+v", r)
	}
	aggs := s.due(t0.Add(2*time.Hour), false)
	if len(aggs) != 1 || aggs[0].Count != 3 || aggs[0].Code != "Various" || aggs[0].JobID != "" || aggs[0].Principal != "m" {
		t.Errorf("aggregates %+v, want m's 3 refusals, Various, no job", aggs)
	}
	if len(s.m) != 0 {
		t.Errorf("idle principals kept: %v", s.m)
	}
}
