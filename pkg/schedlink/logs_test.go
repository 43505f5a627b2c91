package schedlink

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
	"github.com/titus-agent/titus-agent/pkg/tasklog"
)

// chunks records what a logs relay sends up the stream.
type chunks struct {
	mu   sync.Mutex
	data map[string]int // bytes per session
	n    map[string]int // chunks per session
	end  map[string]string
}

func newChunks() *chunks {
	return &chunks{data: map[string]int{}, n: map[string]int{}, end: map[string]string{}}
}

func (c *chunks) send(m *schedv1.AgentMessage) error {
	l := m.GetLogs()
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case l.GetErrorCode() != 0:
		c.end[l.GetSession()] = fmt.Sprintf("error %s: %s", codes.Code(l.GetErrorCode()), l.GetError())
	case l.GetEof():
		c.end[l.GetSession()] = "eof"
	default:
		c.data[l.GetSession()] += len(l.GetData())
		c.n[l.GetSession()]++
	}
	return nil
}

func (c *chunks) get(s string) (int, int, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[s], c.data[s], c.end[s]
}

func open(session string, window uint32) *schedv1.LogsRelayRequest {
	return &schedv1.LogsRelayRequest{Session: session, Open: &schedv1.LogsRelayOpen{TaskId: "t", Window: window, Follow: true}}
}

// fileRun reads the log file of dir with tasklog.Read, as the agent does.
func fileRun(dir string) LogsFunc {
	return func(ctx context.Context, o *schedv1.LogsRelayOpen, send func(context.Context, []byte) error) error {
		return tasklog.Read(ctx, dir, tasklog.ReadOptions{Follow: o.GetFollow(), Poll: 5 * time.Millisecond}, func(p []byte) error { return send(ctx, p) })
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// filePos is where this process's descriptor open on path stands.
func filePos(t *testing.T, path string) int64 {
	t.Helper()
	ents, _ := os.ReadDir("/proc/self/fd")
	for _, e := range ents {
		if p, _ := os.Readlink("/proc/self/fd/" + e.Name()); p != path {
			continue
		}
		f, err := os.Open("/proc/self/fdinfo/" + e.Name())
		if err != nil {
			continue
		}
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "pos:"); ok {
				n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				return n
			}
		}
	}
	return -1
}

// TestLogsRelayFlowControl: a caller that takes nothing gets the window
// and no more, and the agent's reader stops reading the file there: a slow
// caller holds the agent to window chunks, never a growing buffer. Each
// credit lets exactly one more chunk go.
func TestLogsRelayFlowControl(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "stdout.log")
	if err := os.WriteFile(path, make([]byte, 8<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	c := newChunks()
	r := newLogsRelay(context.Background(), fileRun(dir), c.send)
	r.handle(open("s1", 4))
	waitFor(t, "the window's chunks", func() bool { n, _, _ := c.get("s1"); return n == 4 })
	time.Sleep(100 * time.Millisecond)
	if n, b, _ := c.get("s1"); n != 4 || b != 4*maxLogChunk {
		t.Fatalf("without credit: %d chunks (%d bytes) sent, want the window's 4", n, b)
	}
	// The reader read at most one buffer past what it sent.
	if pos := filePos(t, path); pos < 0 || pos > 5*tasklog.ChunkSize {
		t.Errorf("the agent's reader stands at byte %d of an 8 MiB log with 4 chunks sent: it reads ahead of the caller", pos)
	}
	r.handle(&schedv1.LogsRelayRequest{Session: "s1", Credit: 3})
	waitFor(t, "3 more chunks", func() bool { n, _, _ := c.get("s1"); return n == 7 })
	time.Sleep(50 * time.Millisecond)
	if n, _, _ := c.get("s1"); n != 7 {
		t.Errorf("3 credits let %d chunks go", n-4)
	}
	// Credit never piles up past MaxLogWindow in flight: checked after each
	// grant (the count of chunks sent depends on how fast the reader drains
	// between grants, which a loaded machine changes).
	r.mu.Lock()
	s := r.sessions["s1"]
	r.mu.Unlock()
	for range 10 {
		r.handle(&schedv1.LogsRelayRequest{Session: "s1", Credit: 1 << 30})
		s.mu.Lock()
		credit := s.credit
		s.mu.Unlock()
		if credit > MaxLogWindow {
			t.Fatalf("credit %d after a huge grant, want at most %d", credit, MaxLogWindow)
		}
	}
	r.handle(&schedv1.LogsRelayRequest{Session: "s1", Cancel: true})
	waitFor(t, "the read to end", func() bool { return r.active() == 0 })
}

// TestLogsRelayCancelStopsTheReader: a follower that goes away (cancel,
// or the stream ends) stops the agent's reader: no goroutine and no open
// log file is left, and nothing more is sent.
func TestLogsRelayCancelStopsTheReader(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "stdout.log")
	if err := os.WriteFile(path, []byte("hello\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	before := runtime.NumGoroutine()
	sctx, endStream := context.WithCancel(context.Background())
	c := newChunks()
	r := newLogsRelay(sctx, fileRun(dir), c.send)
	for i := range 10 {
		r.handle(open(fmt.Sprint("f", i), 16))
	}
	waitFor(t, "10 followers", func() bool { n, _, _ := c.get("f9"); return n == 1 && r.active() == 10 })
	if pos := filePos(t, path); pos != 6 {
		t.Fatalf("a follower's file at %d, want 6", pos)
	}
	for i := range 5 {
		r.handle(&schedv1.LogsRelayRequest{Session: fmt.Sprint("f", i), Cancel: true})
	}
	waitFor(t, "5 followers to stop", func() bool { return r.active() == 5 })
	endStream()
	waitFor(t, "every follower to stop", func() bool { return r.active() == 0 })
	waitFor(t, "the goroutines to end", func() bool { return runtime.NumGoroutine() <= before })
	if pos := filePos(t, path); pos != -1 {
		t.Errorf("the log file is still open (at %d)", pos)
	}
	for i := range 10 {
		if _, _, end := c.get(fmt.Sprint("f", i)); end != "" {
			t.Errorf("f%d: a cancelled read sent %q", i, end)
		}
	}
}

// TestLogsRelayBounds: an agent serves MaxLogSessions reads at once and
// refuses the next; a read that ends says so; a relay without a reader
// refuses.
func TestLogsRelayBounds(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "stdout.log"), []byte("x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := newChunks()
	r := newLogsRelay(context.Background(), fileRun(dir), c.send)
	for i := range MaxLogSessions {
		r.handle(open(fmt.Sprint("s", i), 1))
	}
	r.handle(open("one-too-many", 1))
	waitFor(t, "the refusal", func() bool { _, _, end := c.get("one-too-many"); return end != "" })
	if _, _, end := c.get("one-too-many"); !strings.Contains(end, "ResourceExhausted") {
		t.Errorf("read %d: %q, want ResourceExhausted", MaxLogSessions+1, end)
	}
	for i := range MaxLogSessions {
		r.handle(&schedv1.LogsRelayRequest{Session: fmt.Sprint("s", i), Cancel: true})
	}
	waitFor(t, "the reads to end", func() bool { return r.active() == 0 })

	r.handle(&schedv1.LogsRelayRequest{Session: "once", Open: &schedv1.LogsRelayOpen{TaskId: "t", Window: 8}})
	waitFor(t, "eof", func() bool { _, _, end := c.get("once"); return end == "eof" })
	if _, b, _ := c.get("once"); b != 2 {
		t.Errorf("a read of a 2-byte log sent %d bytes", b)
	}

	n := newLogsRelay(context.Background(), nil, c.send)
	n.handle(open("no-reader", 1))
	waitFor(t, "the refusal", func() bool { _, _, end := c.get("no-reader"); return end != "" })
	if _, _, end := c.get("no-reader"); !strings.Contains(end, "Unimplemented") {
		t.Errorf("a relay without a reader: %q", end)
	}
}
