package metadataproxy

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/titus-agent/titus-agent/pkg/task"
)

// fakeListen records the namespaces it was asked to listen in and hands
// out loopback listeners instead.
type fakeListen struct {
	mu    sync.Mutex
	calls []string
	fail  error
	addrs map[string]string // netns -> address listened on
}

func (f *fakeListen) listen(nsPath string) ([]net.Listener, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, nsPath)
	if f.fail != nil {
		return nil, f.fail
	}
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	if f.addrs == nil {
		f.addrs = map[string]string{}
	}
	f.addrs[nsPath] = l.Addr().String()
	return []net.Listener{l}, nil
}

func (f *fakeListen) addr(nsPath string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.addrs[nsPath]
}

func (f *fakeSTS) setFail(v bool) { f.mu.Lock(); f.fail = v; f.mu.Unlock() }

func (f *fakeSTS) callCount() int { f.mu.Lock(); defer f.mu.Unlock(); return len(f.calls) }

func newListenService(t *testing.T, cfg Config) (*Service, *fakeListen) {
	t.Helper()
	cfg.KeyPath = filepath.Join(t.TempDir(), "key.pem")
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	s, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	fl := &fakeListen{}
	s.listen = fl.listen
	t.Cleanup(func() { s.Close() })
	return s, fl
}

func spec(id, role string) (*task.Spec, *task.NetworkAttachment) {
	return &task.Spec{ID: id, IAMRoleARN: role},
		&task.NetworkAttachment{NetNSPath: "/run/netns/" + id, IPv4: "198.18.0.9", MAC: "0e:00:00:00:00:09"}
}

func httpGet(t *testing.T, addr, path string) (int, string) {
	t.Helper()
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + addr + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// eventually polls cond for up to 20s: background work is not timed.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func TestStartIsIdempotentAndStopCloses(t *testing.T) {
	st := &fakeSTS{now: time.Now, life: time.Hour}
	s, fl := newListenService(t, Config{STS: st})
	sp, att := spec("task-1", "arn:aws:iam::123456789012:role/app")
	var wg sync.WaitGroup
	addrs := make([][]string, 4)
	for i := range addrs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a, err := s.Start(context.Background(), sp, att)
			if err != nil {
				t.Errorf("Start: %v", err)
			}
			addrs[i] = a
		}()
	}
	wg.Wait()
	if diff := cmp.Diff([]string{"/run/netns/task-1"}, fl.calls); diff != "" {
		t.Errorf("listen calls (-want +got):\n%s", diff)
	}
	for _, a := range addrs[1:] {
		if diff := cmp.Diff(addrs[0], a); diff != "" {
			t.Errorf("addresses differ between Starts:\n%s", diff)
		}
	}
	// Credentials were fetched before Start returned: no request waits on STS.
	if n := st.callCount(); n != 1 {
		t.Errorf("STS calls after Start = %d, want 1", n)
	}
	addr := fl.addr(att.NetNSPath)
	if code, body := httpGet(t, addr, "/latest/meta-data/instance-id"); code != 200 || body != "task-1" {
		t.Errorf("instance-id: %d %q", code, body)
	}
	if code, body := httpGet(t, addr, "/latest/meta-data/iam/security-credentials/app"); code != 200 || !strings.Contains(body, `"AccessKeyId": "ASIAX"`) {
		t.Errorf("credentials: %d %q", code, body)
	}
	if _, found := s.Handler("task-1"); !found {
		t.Error("Handler: task not found")
	}
	for range 2 {
		if err := s.Stop(context.Background(), "task-1"); err != nil {
			t.Fatalf("Stop: %v", err)
		}
	}
	if _, found := s.Handler("task-1"); found {
		t.Error("Handler after Stop: still there")
	}
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Error("listener still open after Stop")
	}
	if _, _, _, err := s.Get(context.Background(), "task-1", "/latest/meta-data/instance-id"); !errors.Is(err, ErrUnknownTask) {
		t.Errorf("Get after Stop: %v, want ErrUnknownTask", err)
	}
}

func TestStartFailureIsRetried(t *testing.T) {
	s, fl := newListenService(t, Config{STS: &fakeSTS{now: time.Now, life: time.Hour}})
	sp, att := spec("task-1", "")
	fl.fail = errors.New("no such netns")
	if _, err := s.Start(context.Background(), sp, att); err == nil || !strings.Contains(err.Error(), "no such netns") {
		t.Fatalf("Start with a failing listener: %v", err)
	}
	if _, found := s.Handler("task-1"); found {
		t.Fatal("a failed Start left the task registered")
	}
	fl.fail = nil
	if _, err := s.Start(context.Background(), sp, att); err != nil {
		t.Fatalf("second Start: %v", err)
	}
}

func TestStartSucceedsWhileSTSFailsThenRecovers(t *testing.T) {
	st := &fakeSTS{now: time.Now, life: time.Hour, fail: true}
	s, fl := newListenService(t, Config{STS: st})
	sp, att := spec("task-1", "arn:aws:iam::123456789012:role/app")
	if _, err := s.Start(context.Background(), sp, att); err != nil {
		t.Fatalf("Start with STS down: %v", err)
	}
	addr := fl.addr(att.NetNSPath)
	if code, body := httpGet(t, addr, "/latest/meta-data/iam/security-credentials/app"); code != http.StatusServiceUnavailable || strings.Contains(body, "ASIA") {
		t.Fatalf("credentials with STS down: %d %q, want 503", code, body)
	}
	if code, _ := httpGet(t, addr, "/latest/meta-data/instance-id"); code != 200 {
		t.Fatalf("instance-id with STS down: %d", code)
	}
	st.setFail(false)
	eventually(t, "credentials after STS recovers", func() bool {
		code, _ := httpGet(t, addr, "/latest/meta-data/iam/security-credentials/app")
		return code == 200
	})
}

func TestCredentialsRefreshBeforeExpiry(t *testing.T) {
	st := &fakeSTS{now: time.Now, life: 3 * time.Second}
	s, fl := newListenService(t, Config{STS: st, RefreshBefore: 2 * time.Second})
	sp, att := spec("task-1", "arn:aws:iam::123456789012:role/app")
	if _, err := s.Start(context.Background(), sp, att); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a background refresh", func() bool { return st.callCount() >= 2 })
	addr := fl.addr(att.NetNSPath)
	eventually(t, "refreshed credentials served", func() bool {
		_, body := httpGet(t, addr, "/latest/meta-data/iam/security-credentials/app")
		return strings.Contains(body, "ASIAXX")
	})
	if diff := cmp.Diff("arn:aws:iam::123456789012:role/app task-1", st.calls[0]); diff != "" {
		t.Errorf("AssumeRole (-want +got):\n%s", diff)
	}
}

func TestNextWait(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	c := &roleCreds{before: 15 * time.Minute, now: func() time.Time { return now }}
	for _, tt := range []struct {
		life, want time.Duration
	}{
		{time.Hour, 30 * time.Minute}, // half-life is sooner than 15m ahead
		{6 * time.Hour, 3 * time.Hour},
		{20 * time.Minute, 5 * time.Minute}, // 15m ahead
		{time.Second, minBackoff},           // never a hot loop
		{-time.Minute, minBackoff},          // already expired
	} {
		got := c.nextWait(&Credentials{Expiration: now.Add(tt.life)}, 0)
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("life %v (-want +got):\n%s", tt.life, diff)
		}
	}
	// Failures back off exponentially, with jitter, up to a cap.
	for failures := 1; failures < 12; failures++ {
		ceil := min(minBackoff<<failures, maxBackoff)
		for range 50 {
			if w := c.nextWait(nil, failures); w < minBackoff/2 || w >= minBackoff/2+ceil {
				t.Fatalf("failures=%d: wait %v outside [%v, %v)", failures, w, minBackoff/2, minBackoff/2+ceil)
			}
		}
	}
}

func TestGetAnswersRequireV2Tasks(t *testing.T) {
	s, _ := newListenService(t, Config{STS: &fakeSTS{now: time.Now, life: time.Hour}, RequireV2: true})
	sp, att := spec("task-1", "")
	if _, err := s.Start(context.Background(), sp, att); err != nil {
		t.Fatal(err)
	}
	code, body, ctype, err := s.Get(context.Background(), "task-1", "latest/meta-data/local-ipv4")
	if diff := cmp.Diff([]any{200, "198.18.0.9", "text/plain", nil}, []any{code, string(body), ctype, err}); diff != "" {
		t.Errorf("Get (-want +got):\n%s", diff)
	}
}

func TestConnectionLimitIsPerTask(t *testing.T) {
	s, fl := newListenService(t, Config{STS: &fakeSTS{now: time.Now, life: time.Hour}, MaxConnsPerTask: 2})
	for _, id := range []string{"task-a", "task-b"} {
		sp, att := spec(id, "")
		if _, err := s.Start(context.Background(), sp, att); err != nil {
			t.Fatal(err)
		}
	}
	// Task A uses up its connections and sends nothing on them.
	for range 10 {
		c, err := net.DialTimeout("tcp", fl.addr("/run/netns/task-a"), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	if code, body := httpGet(t, fl.addr("/run/netns/task-b"), "/latest/meta-data/instance-id"); code != 200 || body != "task-b" {
		t.Fatalf("task B while A holds its connections: %d %q", code, body)
	}
}

func TestAllowlistRefusesHostSecrets(t *testing.T) {
	for _, c := range []struct {
		entry string
		ok    bool
	}{
		{"ami-id", true},
		{"services/domain", true},
		{"placement/availability-zone-id", true},
		{"iam/security-credentials/host-role", false},
		{"iam/info", false},
		{"IAM/info", false},
		{"identity-credentials/ec2/security-credentials/ec2-instance", false},
		{"public-keys/../../user-data", false},
		{"../user-data", false},
		{"/latest/user-data", false},
		{"spot/", false},
		{"ami-id%2f..", false},
		{"", false},
	} {
		err := checkAllowlist([]string{"instance-type", c.entry})
		if (err == nil) != c.ok {
			t.Errorf("allowlist %q: err = %v, want ok=%v", c.entry, err, c.ok)
		}
	}
	_, err := New(context.Background(), Config{KeyPath: filepath.Join(t.TempDir(), "k"), STS: &fakeSTS{},
		UpstreamAllowlist: []string{"iam/security-credentials/host-role"}})
	if err == nil {
		t.Fatal("New accepted an allowlist that serves the host's credentials")
	}
}
