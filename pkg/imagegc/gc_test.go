package imagegc

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/titus-agent/titus-agent/pkg/metrics"
	"github.com/titus-agent/titus-agent/pkg/runtime"
)

var t0 = time.Date(2026, 12, 3, 9, 0, 0, 0, time.UTC)

func dg(c byte) string { return "sha256:" + strings.Repeat(string(c), 64) }

// fakeStore holds images of a size each; usage is their sum. It records
// removals, and beforeRemove runs before the keep check (a launch racing in).
type fakeStore struct {
	imgs         []runtime.ImageInfo
	sizes        map[string]int64
	removed      []string
	touched      []string
	beforeRemove func(name string)
	containers   []runtime.ContainerImage
	listErr      error
}

func (f *fakeStore) ContainerImages(context.Context) ([]runtime.ContainerImage, error) {
	return f.containers, f.listErr
}

func (f *fakeStore) ListImages(context.Context) ([]runtime.ImageInfo, error) {
	return append([]runtime.ImageInfo(nil), f.imgs...), nil // LRU order as given
}

func (f *fakeStore) RemoveImage(ctx context.Context, name string, keep func(runtime.ImageInfo) error) error {
	if f.beforeRemove != nil {
		f.beforeRemove(name)
	}
	for i, img := range f.imgs {
		if img.Name != name {
			continue
		}
		if err := keep(img); err != nil {
			return err
		}
		f.imgs = append(f.imgs[:i], f.imgs[i+1:]...)
		f.removed = append(f.removed, name)
		return nil
	}
	return runtime.ErrImageNotFound
}

func (f *fakeStore) StoreUsage(context.Context) (int64, error) {
	var n int64
	for _, img := range f.imgs {
		n += f.sizes[img.Name]
	}
	return n, nil
}

func (f *fakeStore) TouchImages(_ context.Context, _ time.Time, names ...string) error {
	f.touched = append(f.touched, names...)
	return nil
}

// store: a..e of 100 bytes each, least recently used first, all pulled an
// hour before t0 except "young" (1 minute).
func store() *fakeStore {
	f := &fakeStore{sizes: map[string]int64{}}
	for i, n := range []string{"r/a:1", "r/young:1", "r/b:1", "r/c:1", "r/d:1", "r/e:1"} {
		name := "docker.io/" + n
		created := t0.Add(-time.Hour)
		if n == "r/young:1" {
			created = t0.Add(-time.Minute)
		}
		f.imgs = append(f.imgs, runtime.ImageInfo{Name: name, Digest: dg(byte('a' + i)), Created: created, LastUsed: created.Add(time.Duration(i) * time.Second)})
		f.sizes[name] = 100
	}
	return f
}

func newGC(t *testing.T, f *fakeStore, holders *[]Holder, cfg Config) *GC {
	t.Helper()
	cfg.Now = func() time.Time { return t0 }
	cfg.InUse = func() []Holder { return *holders }
	cfg.FSSize = func() (int64, error) { return 1000, nil }
	cfg.Log = slog.New(slog.DiscardHandler)
	if cfg.MinAge == 0 {
		cfg.MinAge = 10 * time.Minute
	}
	g, err := New(f, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func TestCollect(t *testing.T) {
	tests := []struct {
		name      string
		high, low string
		holders   []Holder
		pinned    []string
		want      []string
	}{
		{"below high: nothing", "600", "100", nil, nil, nil},
		{"at high: nothing", "60%", "10%", nil, nil, nil},
		{"LRU down to low, young skipped", "500", "300", nil, nil,
			[]string{"docker.io/r/a:1", "docker.io/r/b:1", "docker.io/r/c:1"}},
		{"held by spec ref before the pull (short name normalized)", "500", "300",
			[]Holder{{TaskID: "t1", Ref: "r/a:1"}}, nil,
			[]string{"docker.io/r/b:1", "docker.io/r/c:1", "docker.io/r/d:1"}},
		{"held by resolved digest (pulled by digest under another name)", "500", "300",
			[]Holder{{TaskID: "t1", Ref: "other/x@" + dg('d'), Name: "docker.io/other/x@" + dg('d'), Digest: dg('d')}}, nil,
			[]string{"docker.io/r/a:1", "docker.io/r/b:1", "docker.io/r/d:1"}},
		{"held by spec digest", "500", "300",
			[]Holder{{TaskID: "t1", Ref: "r/zzz@" + dg('a')}}, nil,
			[]string{"docker.io/r/b:1", "docker.io/r/c:1", "docker.io/r/d:1"}},
		{"pinned by name and by digest", "500", "300", nil,
			[]string{"r/a:1", "docker.io/r/other@" + dg('d')},
			[]string{"docker.io/r/b:1", "docker.io/r/d:1", "docker.io/r/e:1"}},
		{"everything held: nothing goes", "100", "50",
			[]Holder{{TaskID: "1", Ref: "r/a:1"}, {TaskID: "2", Ref: "r/b:1"}, {TaskID: "3", Ref: "r/c:1"}, {TaskID: "4", Ref: "r/d:1"}, {TaskID: "5", Ref: "r/e:1"}}, nil, nil},
		{"unreadable spec ref holds on doubt", "500", "300",
			[]Holder{{TaskID: "t1", Ref: "r/a:1:bad"}}, nil,
			[]string{"docker.io/r/a:1", "docker.io/r/b:1", "docker.io/r/c:1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := store()
			hi, err := ParseWatermark(tt.high)
			if err != nil {
				t.Fatal(err)
			}
			lo, err := ParseWatermark(tt.low)
			if err != nil {
				t.Fatal(err)
			}
			reg := prometheus.NewRegistry()
			m := metrics.NewImages(reg)
			holders := tt.holders
			g := newGC(t, f, &holders, Config{High: hi, Low: lo, Pinned: tt.pinned, Metrics: m})
			res, err := g.Collect(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tt.want, f.removed); d != "" {
				t.Errorf("removed (-want +got):\n%s", d)
			}
			if got := testutil.ToFloat64(m.Removed.WithLabelValues(metrics.TriggerGC)); got != float64(len(tt.want)) {
				t.Errorf("removed metric %v", got)
			}
			if got := testutil.ToFloat64(m.RemovedBytes.WithLabelValues(metrics.TriggerGC)); got != float64(100*len(tt.want)) || res.Freed != int64(got) {
				t.Errorf("removed bytes metric %v, result %d", got, res.Freed)
			}
			if got := testutil.ToFloat64(m.StoreBytes); got != float64(600-100*len(tt.want)) {
				t.Errorf("store bytes %v", got)
			}
		})
	}
}

// TestCollectRaceWithLaunch: a task accepted after the collector chose its
// candidates holds its image by the time of the removal's own check.
func TestCollectRaceWithLaunch(t *testing.T) {
	f := store()
	var holders []Holder
	g := newGC(t, f, &holders, Config{High: Watermark{Bytes: 500}, Low: Watermark{Bytes: 300}})
	f.beforeRemove = func(name string) {
		if name == "docker.io/r/a:1" {
			holders = append(holders, Holder{TaskID: "late", Ref: "r/a"}) // wrong tag: not held
			holders = append(holders, Holder{TaskID: "late2", Ref: "docker.io/r/a:1"})
		}
	}
	if _, err := g.Collect(context.Background()); err != nil {
		t.Fatal(err)
	}
	want := []string{"docker.io/r/b:1", "docker.io/r/c:1", "docker.io/r/d:1"}
	if d := cmp.Diff(want, f.removed); d != "" {
		t.Errorf("removed (-want +got):\n%s", d)
	}
}

func TestRemove(t *testing.T) {
	f := store()
	holders := []Holder{{TaskID: "tenant-a-task", Ref: "r/a:1"}}
	g := newGC(t, f, &holders, Config{High: Watermark{Bytes: 1}, Low: Watermark{Bytes: 1}, Pinned: []string{"r/b:1"}})
	ctx := context.Background()
	if _, err := g.Remove(ctx, "r/a:1"); !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), "tenant-a-task") {
		t.Errorf("rm of an image in use: %v", err)
	}
	if _, err := g.Remove(ctx, "r/b:1"); !errors.Is(err, ErrPinned) {
		t.Errorf("rm of a pinned image: %v", err)
	}
	if _, err := g.Remove(ctx, "r/nope:1"); !errors.Is(err, runtime.ErrImageNotFound) {
		t.Errorf("rm of a missing image: %v", err)
	}
	if _, err := g.Remove(ctx, "Bad::ref"); err == nil {
		t.Error("rm of a bad reference accepted")
	}
	res, err := g.Remove(ctx, "r/young:1") // the operator's choice: no minimum age
	if err != nil || len(res.Removed) != 1 || res.Freed != 100 {
		t.Errorf("rm young = %+v, %v", res, err)
	}
}

func TestPrune(t *testing.T) {
	f := store()
	holders := []Holder{{TaskID: "t", Ref: "r/c:1"}}
	g := newGC(t, f, &holders, Config{High: Watermark{Bytes: 1 << 40}, Low: Watermark{Bytes: 1 << 40}, Pinned: []string{"r/e:1"}})
	res, err := g.Prune(context.Background(), 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"docker.io/r/a:1", "docker.io/r/b:1", "docker.io/r/d:1"}
	if d := cmp.Diff(want, res.Removed); d != "" {
		t.Errorf("pruned (-want +got):\n%s", d)
	}
	if res.Before != 600 || res.After != 300 || res.Freed != 300 {
		t.Errorf("result %+v", res)
	}
}

func TestTouchHeld(t *testing.T) {
	f := store()
	holders := []Holder{{TaskID: "1", Ref: "r/a:1", Name: "docker.io/r/a:1"}, {TaskID: "2", Ref: "r/a:1", Name: "docker.io/r/a:1"}, {TaskID: "3", Ref: "r/b:1"}}
	g := newGC(t, f, &holders, Config{High: Watermark{Bytes: 1 << 40}, Low: Watermark{Bytes: 1}})
	if _, err := g.Collect(context.Background()); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]string{"docker.io/r/a:1"}, f.touched); d != "" {
		t.Errorf("touched (-want +got):\n%s", d)
	}
}

func TestParseWatermark(t *testing.T) {
	tests := []struct {
		in   string
		want Watermark
		bad  bool
	}{
		{"85%", Watermark{Percent: 85}, false},
		{" 7.5 % ", Watermark{Percent: 7.5}, false},
		{"20GiB", Watermark{Bytes: 20 << 30}, false},
		{"512MiB", Watermark{Bytes: 512 << 20}, false},
		{"1.5TB", Watermark{Bytes: 1.5e12}, false},
		{"4096", Watermark{Bytes: 4096}, false},
		{"0%", Watermark{}, true},
		{"101%", Watermark{}, true},
		{"-1GiB", Watermark{}, true},
		{"0", Watermark{}, true},
		{"lots", Watermark{}, true},
		{"", Watermark{}, true},
		{"99999999999TiB", Watermark{}, true},
	}
	for _, tt := range tests {
		got, err := ParseWatermark(tt.in)
		if (err != nil) != tt.bad || got != tt.want {
			t.Errorf("ParseWatermark(%q) = %+v, %v", tt.in, got, err)
		}
	}
	if got := (Watermark{Percent: 50}).Resolve(1000); got != 500 {
		t.Errorf("Resolve = %d", got)
	}
}

// TestContainersHoldTheirImages: the container of a task whose record was
// quarantined (the agent no longer manages it, so InUse does not list it)
// keeps its image, for collection, prune and rm alike; when the containers
// cannot be listed, nothing goes.
func TestContainersHoldTheirImages(t *testing.T) {
	ctx := context.Background()
	f := store()
	f.containers = []runtime.ContainerImage{{ID: "quarantined", Image: "docker.io/r/a:1"}, {ID: "debug", Image: "docker.io/r/c:1"}}
	var holders []Holder
	g := newGC(t, f, &holders, Config{High: Watermark{Bytes: 500}, Low: Watermark{Bytes: 300}})
	if _, err := g.Collect(ctx); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]string{"docker.io/r/b:1", "docker.io/r/d:1", "docker.io/r/e:1"}, f.removed); d != "" {
		t.Errorf("collected (-want +got):\n%s", d)
	}
	if _, err := g.Remove(ctx, "r/a:1"); !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), "quarantined") {
		t.Errorf("rm of a quarantined task's image: %v", err)
	}
	if res, err := g.Prune(ctx, 0); err != nil || len(res.Removed) != 1 || res.Removed[0] != "docker.io/r/young:1" {
		t.Errorf("prune = %v, %v; want only r/young:1 removed", res.Removed, err)
	}
	imgs, err := g.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	used := map[string][]string{}
	for _, img := range imgs {
		used[img.Name] = img.UsedBy
	}
	if d := cmp.Diff(map[string][]string{"docker.io/r/a:1": {"quarantined"}, "docker.io/r/c:1": {"debug"}}, used); d != "" {
		t.Errorf("image ls users (-want +got):\n%s", d)
	}

	// Users unknown: nothing is removed, and the collection says why.
	f = store()
	f.listErr = errors.New("containerd is restarting")
	g = newGC(t, f, &holders, Config{High: Watermark{Bytes: 500}, Low: Watermark{Bytes: 300}})
	if _, err := g.Collect(ctx); err == nil || !strings.Contains(err.Error(), "containerd is restarting") {
		t.Errorf("collect with containers unknown: %v", err)
	}
	if _, err := g.Remove(ctx, "r/b:1"); err == nil {
		t.Error("rm with containers unknown went ahead")
	}
	if len(f.removed) != 0 {
		t.Errorf("removed %v with containers unknown", f.removed)
	}
}

// countHandler counts log records by level.
type countHandler struct {
	mu sync.Mutex
	n  map[slog.Level]int
}

func (h *countHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *countHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.n[r.Level]++
	return nil
}
func (h *countHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *countHandler) WithGroup(string) slog.Handler      { return h }

// TestRunLogsAFailureOnce: a store path that does not exist (containerd's
// root elsewhere) fails every collection; it is logged once, not at every
// interval, and its recovery once.
func TestRunLogsAFailureOnce(t *testing.T) {
	f := store()
	var holders []Holder
	h := &countHandler{n: map[slog.Level]int{}}
	var mu sync.Mutex
	calls, failing := 0, true
	g := newGC(t, f, &holders, Config{High: Watermark{Percent: 50}, Low: Watermark{Percent: 40}, Interval: time.Millisecond})
	g.cfg.Log = slog.New(h)
	g.cfg.FSSize = func() (int64, error) {
		mu.Lock()
		defer mu.Unlock()
		calls++
		if failing {
			return 0, errors.New("statfs /var/lib/containerd: no such file or directory")
		}
		return 1 << 40, nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); g.Run(ctx) }()
	waitCalls := func(n int) {
		for {
			mu.Lock()
			c := calls
			mu.Unlock()
			if c >= n {
				return
			}
			time.Sleep(time.Millisecond)
		}
	}
	waitCalls(5)
	mu.Lock()
	failing, calls = false, 0
	mu.Unlock()
	waitCalls(3)
	cancel()
	<-done
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.n[slog.LevelWarn] != 1 || h.n[slog.LevelInfo] != 1 {
		t.Errorf("log records by level %v: want 1 warning (the failure) and 1 info (its recovery)", h.n)
	}
}
