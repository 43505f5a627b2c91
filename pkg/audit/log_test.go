package audit

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// clock is a settable time.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

func start(t *testing.T, o Options) (*Log, *clientv3.Client) {
	t.Helper()
	cli := testEtcd(t)
	l := New(o)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { l.Run(ctx, cli); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	// Run attaches the client asynchronously.
	deadline := time.Now().Add(5 * time.Second)
	for {
		l.mu.Lock()
		ok := l.kv != nil
		l.mu.Unlock()
		if ok {
			return l, cli
		}
		if time.Now().After(deadline) {
			t.Fatal("Run did not attach")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestRecordIsDurableAndLogged(t *testing.T) {
	var buf bytes.Buffer
	var bmu sync.Mutex
	l, cli := start(t, Options{Prefix: "/t/", Log: slog.New(slog.NewJSONHandler(lockedWriter{&buf, &bmu}, nil))})
	ctx := t.Context()
	recs := []Record{
		{Principal: "alice@example.com", Method: "SubmitJob", Action: "job.submit", Application: "billing", JobID: "j1", Code: "OK"},
		{Principal: "eve@example.com", Method: "KillJob", Action: "job.kill", JobID: "j1", Code: "PermissionDenied", Message: "eve may not"},
		{Principal: "alice@example.com", Method: "KillJob", Action: "job.kill", JobID: "j2", Code: "OK"},
	}
	var wg sync.WaitGroup
	for _, r := range recs {
		if err := l.Record(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	// Concurrent callers are grouped and each waits for its own record.
	for i := range 50 {
		wg.Go(func() {
			if err := l.Record(ctx, Record{Principal: "bulk", Method: "ScaleJob", JobID: "j3", Code: "OK", Message: strings.Repeat("m", i)}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	resp, err := cli.Get(ctx, "/t/audit/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || resp.Count != 53 {
		t.Fatalf("records in etcd = %d, %v; want 53", resp.Count, err)
	}
	got, next, err := l.List(ctx, Filter{JobID: "j1"})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(recs[:2], got, cmpopts.IgnoreFields(Record{}, "ID", "Time")); diff != "" || next != "" {
		t.Errorf("List(job j1) (-want +got):\n%s next=%q", diff, next)
	}
	got, _, err = l.List(ctx, Filter{Principal: "alice@example.com"})
	if err != nil || len(got) != 2 || got[0].JobID != "j1" || got[1].JobID != "j2" {
		t.Errorf("List(principal alice) = %v, %v", got, err)
	}
	bmu.Lock()
	logged := buf.String()
	bmu.Unlock()
	if !strings.Contains(logged, `"principal":"eve@example.com"`) || !strings.Contains(logged, `"code":"PermissionDenied"`) {
		t.Errorf("structured log lacks the denied call:\n%s", logged)
	}
}

type lockedWriter struct {
	b  *bytes.Buffer
	mu *sync.Mutex
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func TestPagination(t *testing.T) {
	l, _ := start(t, Options{Prefix: "/t/", Log: slog.New(slog.DiscardHandler)})
	for i := range 25 {
		if err := l.Record(t.Context(), Record{Principal: "p", Method: "KillTask", TaskID: string(rune('a' + i)), Code: "OK"}); err != nil {
			t.Fatal(err)
		}
	}
	var all []string
	token := ""
	for pages := 0; ; pages++ {
		page, next, err := l.List(t.Context(), Filter{After: token, Limit: 10})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range page {
			all = append(all, r.TaskID)
		}
		if next == "" {
			break
		}
		if pages > 5 {
			t.Fatal("pagination does not end")
		}
		token = next
	}
	if len(all) != 25 || all[0] != "a" || all[24] != "y" {
		t.Errorf("paged through %v", all)
	}
	if _, _, err := l.List(t.Context(), Filter{After: "../jobs/x"}); err == nil {
		t.Error("a page token leaving the audit prefix was accepted")
	}
}

func TestRetentionByAgeAndCount(t *testing.T) {
	c := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	l, cli := start(t, Options{Prefix: "/t/", MaxAge: time.Hour, MaxRecords: 20, Now: c.now, Log: slog.New(slog.DiscardHandler)})
	ctx := t.Context()
	rec := func(job string) {
		if err := l.Record(ctx, Record{Principal: "p", Method: "KillJob", JobID: job, Code: "OK"}); err != nil {
			t.Fatal(err)
		}
	}
	for range 5 {
		rec("old")
	}
	c.add(2 * time.Hour)
	for range 30 {
		rec("new")
	}
	if err := l.pruneOnce(ctx, cli); err != nil {
		t.Fatal(err)
	}
	got, _, err := l.List(ctx, Filter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 20 {
		t.Fatalf("kept %d records, want 20", len(got))
	}
	for _, r := range got {
		if r.JobID != "new" {
			t.Fatalf("kept a record past its age: %+v", r)
		}
	}
	// The newest are the ones kept.
	all, _, _ := l.List(ctx, Filter{Limit: MaxPage})
	if all[len(all)-1].ID <= all[0].ID {
		t.Error("records are not in time order")
	}
}

func TestRecordClipsFields(t *testing.T) {
	l, _ := start(t, Options{Prefix: "/t/", Log: slog.New(slog.DiscardHandler)})
	if err := l.Record(t.Context(), Record{Principal: strings.Repeat("p", 10_000), Message: strings.Repeat("m", 1<<20), Code: "OK"}); err != nil {
		t.Fatal(err)
	}
	got, _, _ := l.List(t.Context(), Filter{})
	if len(got) != 1 || len(got[0].Principal) > maxField+4 || len(got[0].Message) > maxMessage+4 {
		t.Errorf("record not clipped: principal %d bytes, message %d bytes", len(got[0].Principal), len(got[0].Message))
	}
}

func TestRecordWithoutStore(t *testing.T) {
	l := New(Options{Log: slog.New(slog.DiscardHandler)})
	if err := l.Record(t.Context(), Record{Principal: "p", Code: "OK"}); !errors.Is(err, ErrNotStored) {
		t.Errorf("Record before Run = %v, want ErrNotStored", err)
	}
}

// TestRecordClipsCommandOfEmptyArgs: a command of a million empty
// arguments (2 bytes each on the wire, 3 in JSON) is bounded like any
// other: a record too large for one etcd request would take the records
// batched with it down too.
func TestRecordClipsCommandOfEmptyArgs(t *testing.T) {
	r := Record{Command: make([]string, 1_000_000)}
	r.clip()
	if len(r.Command) > maxMessage+1 {
		t.Errorf("%d arguments kept, want at most %d", len(r.Command), maxMessage+1)
	}
	r = Record{Command: []string{"sh", "-c", strings.Repeat("x", 5000)}}
	r.clip()
	if n := len(r.Command[2]); len(r.Command) != 3 || n > maxMessage {
		t.Errorf("long argument: %d arguments, the last %d bytes", len(r.Command), n)
	}
}
