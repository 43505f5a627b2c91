package metadataproxy

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	ststypes "github.com/aws/aws-sdk-go-v2/service/sts/types"
	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/titus-agent/titus-agent/pkg/metrics"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// fakeSTS hands out numbered credentials and can be made to fail.
type fakeSTS struct {
	mu    sync.Mutex
	calls []string
	ins   []*sts.AssumeRoleInput
	fail  bool
	n     int
	now   func() time.Time
	life  time.Duration
}

func (f *fakeSTS) AssumeRole(ctx context.Context, in *sts.AssumeRoleInput, _ ...func(*sts.Options)) (*sts.AssumeRoleOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, aws.ToString(in.RoleArn)+" "+aws.ToString(in.RoleSessionName))
	f.ins = append(f.ins, in)
	if f.fail {
		return nil, errors.New("sts unavailable")
	}
	f.n++
	return &sts.AssumeRoleOutput{Credentials: &ststypes.Credentials{
		AccessKeyId: aws.String("ASIA" + strings.Repeat("X", f.n)), SecretAccessKey: aws.String("secret"),
		SessionToken: aws.String("token"), Expiration: aws.Time(f.now().Add(f.life)),
	}}, nil
}

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

func newTestService(t *testing.T, st *fakeSTS, clk *clock) *Service {
	t.Helper()
	s, err := New(context.Background(), Config{KeyPath: filepath.Join(t.TempDir(), "key.pem"), STS: st, Now: clk.now,
		Region: "us-east-1", AvailabilityZone: "us-east-1a", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// serve runs one request against a task's handler without a netns.
func serve(s *Service, tv *taskView, method, path string, hdr map[string]string) (int, string) {
	req := httptest.NewRequest(method, "http://169.254.169.254"+path, nil)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	rec := httptest.NewRecorder()
	(&handler{svc: s, tv: tv}).ServeHTTP(rec, req)
	b, _ := io.ReadAll(rec.Result().Body)
	return rec.Code, string(b)
}

func testView(s *Service, st *fakeSTS, clk *clock, id, role string) *taskView {
	tv := &taskView{
		spec:    task.Spec{ID: id, IAMRoleARN: role},
		net:     task.NetworkAttachment{IPv4: "198.18.0.7", MAC: "0E:00:00:00:00:07", SubnetID: "subnet-1", VPCID: "vpc-1", SecurityGroupIDs: []string{"sg-1", "sg-2"}},
		started: clk.now(),
	}
	if role != "" {
		tv.creds = &roleCreds{sts: st, limiter: s.limiter, roleARN: role, session: sessionName(id), duration: time.Hour, before: 15 * time.Minute, log: s.log, now: clk.now}
		c, err := tv.creds.fetch(context.Background())
		tv.creds.cur, tv.creds.lastErr = c, err
	}
	return tv
}

func TestHandlerPaths(t *testing.T) {
	clk := &clock{t: time.Unix(1_800_000_000, 0)}
	st := &fakeSTS{now: clk.now, life: time.Hour}
	s := newTestService(t, st, clk)
	tv := testView(s, st, clk, "task-1", "arn:aws:iam::123456789012:role/app")
	mac := "0e:00:00:00:00:07"
	tests := []struct {
		path string
		code int
		body string
	}{
		{"/latest/meta-data/instance-id", 200, "task-1"},
		{"/latest/meta-data/local-ipv4", 200, "198.18.0.7"},
		{"/latest/meta-data/mac", 200, mac},
		{"/latest/meta-data/security-groups", 200, "sg-1\nsg-2"},
		{"/latest/meta-data/placement/availability-zone", 200, "us-east-1a"},
		{"/latest/meta-data/placement/region", 200, "us-east-1"},
		{"/latest/meta-data/network/interfaces/macs/", 200, mac + "/"},
		{"/latest/meta-data/network/interfaces/macs/" + mac + "/subnet-id", 200, "subnet-1"},
		{"/latest/meta-data/network/interfaces/macs/" + mac + "/vpc-id", 200, "vpc-1"},
		{"/latest/meta-data/network/interfaces/macs/" + mac + "/security-group-ids", 200, "sg-1\nsg-2"},
		{"/latest/meta-data/network/interfaces/macs/" + mac + "/local-ipv4s", 200, "198.18.0.7"},
		{"/latest/meta-data/iam/security-credentials/", 200, "app"},
		{"/latest/meta-data/iam/security-credentials/other", 404, "404 - Not Found\n"},
		{"/latest/user-data", 404, "404 - Not Found\n"},
		{"/latest/meta-data/nonsense", 404, "404 - Not Found\n"},
		{"/latest/meta-data/../user-data", 400, "400 - Bad Request\n"},
		{"/latest/meta-data/%2e%2e/user-data", 400, "400 - Bad Request\n"},
		{"/latest//meta-data/instance-id", 400, "400 - Bad Request\n"},
	}
	for _, tt := range tests {
		code, body := serve(s, tv, http.MethodGet, tt.path, nil)
		if diff := cmp.Diff([]any{tt.code, tt.body}, []any{code, body}); diff != "" {
			t.Errorf("GET %s (-want +got):\n%s", tt.path, diff)
		}
	}
	// Listings end directories with a slash.
	if _, body := serve(s, tv, http.MethodGet, "/latest/meta-data/", nil); !strings.Contains(body, "iam/\n") || !strings.Contains(body, "\ninstance-id\n") {
		t.Errorf("meta-data listing: %q", body)
	}
	// Credentials are the IMDS JSON.
	code, body := serve(s, tv, http.MethodGet, "/latest/meta-data/iam/security-credentials/app", nil)
	for _, k := range []string{`"Code": "Success"`, `"Type": "AWS-HMAC"`, `"AccessKeyId": "ASIAX"`, `"SecretAccessKey"`, `"Token"`, `"Expiration"`, `"LastUpdated"`} {
		if code != 200 || !strings.Contains(body, k) {
			t.Errorf("credentials missing %s: %d %s", k, code, body)
		}
	}
	// No role: no iam tree at all.
	bare := testView(s, st, clk, "task-2", "")
	if code, _ := serve(s, bare, http.MethodGet, "/latest/meta-data/iam/security-credentials/", nil); code != 404 {
		t.Errorf("task without a role: %d", code)
	}
	if diff := cmp.Diff([]string{"arn:aws:iam::123456789012:role/app task-1"}, st.calls); diff != "" {
		t.Errorf("sts calls (-want +got):\n%s", diff)
	}
}

func TestTokens(t *testing.T) {
	clk := &clock{t: time.Unix(1_800_000_000, 0)}
	st := &fakeSTS{now: clk.now, life: time.Hour}
	s := newTestService(t, st, clk)
	a := testView(s, st, clk, "task-a", "")
	b := testView(s, st, clk, "task-b", "")
	b.requireV2 = true
	for _, tt := range []struct {
		name string
		hdr  map[string]string
		code int
	}{
		{"no ttl", nil, 400},
		{"ttl 0", map[string]string{hdrTokenTTL: "0"}, 400},
		{"ttl too big", map[string]string{hdrTokenTTL: "21601"}, 400},
		{"ttl not a number", map[string]string{hdrTokenTTL: "1e3"}, 400},
		{"forwarded", map[string]string{hdrTokenTTL: "60", "X-Forwarded-For": "10.1.1.1"}, 403},
		{"ok", map[string]string{hdrTokenTTL: "60"}, 200},
	} {
		if code, _ := serve(s, a, http.MethodPut, "/latest/api/token", tt.hdr); code != tt.code {
			t.Errorf("%s: %d, want %d", tt.name, code, tt.code)
		}
	}
	if code, _ := serve(s, a, http.MethodGet, "/latest/api/token", nil); code != 405 {
		t.Errorf("GET token: %d, want 405", code)
	}
	_, tokA := serve(s, a, http.MethodPut, "/latest/api/token", map[string]string{hdrTokenTTL: "60"})
	_, tokB := serve(s, b, http.MethodPut, "/latest/api/token", map[string]string{hdrTokenTTL: "60"})
	check := func(tv *taskView, tok string, want int) {
		t.Helper()
		hdr := map[string]string{}
		if tok != "" {
			hdr[hdrToken] = tok
		}
		if code, _ := serve(s, tv, http.MethodGet, "/latest/meta-data/instance-id", hdr); code != want {
			t.Errorf("token %.10q in %s: %d, want %d", tok, tv.spec.ID, code, want)
		}
	}
	check(a, "", 200)   // v1 allowed for A
	check(b, "", 401)   // B requires v2
	check(b, tokB, 200) // B's own token
	check(b, tokA, 401) // A's token replayed in B
	check(a, "garbage", 401)
	check(a, tokA[:len(tokA)-2]+"xx", 401) // tampered signature
	clk.add(61 * time.Second)
	check(b, tokB, 401) // expired
}

func TestCredentialsSurviveSTSOutageUntilExpiry(t *testing.T) {
	clk := &clock{t: time.Unix(1_800_000_000, 0)}
	st := &fakeSTS{now: clk.now, life: 30 * time.Minute}
	s := newTestService(t, st, clk)
	tv := testView(s, st, clk, "task-1", "arn:aws:iam::123456789012:role/app")
	st.fail = true
	tv.creds.lastErr = errors.New("sts unavailable") // a refresh failed
	clk.add(20 * time.Minute)
	if code, body := serve(s, tv, http.MethodGet, "/latest/meta-data/iam/security-credentials/app", nil); code != 200 || !strings.Contains(body, "ASIAX") {
		t.Fatalf("cached credentials while STS is down: %d %s", code, body)
	}
	clk.add(11 * time.Minute) // past expiry
	code, body := serve(s, tv, http.MethodGet, "/latest/meta-data/iam/security-credentials/app", nil)
	if code != http.StatusServiceUnavailable || strings.Contains(body, "ASIA") {
		t.Fatalf("after expiry: %d %q, want a clean 503", code, body)
	}
}

func TestIdentityDocumentVerifies(t *testing.T) {
	clk := &clock{t: time.Unix(1_800_000_000, 0)}
	st := &fakeSTS{now: clk.now, life: time.Hour}
	s := newTestService(t, st, clk)
	tv := testView(s, st, clk, "task-1", "")
	_, doc := serve(s, tv, http.MethodGet, "/latest/dynamic/instance-identity/document", nil)
	_, sig := serve(s, tv, http.MethodGet, "/latest/dynamic/instance-identity/signature", nil)
	d, err := VerifyIdentityDocument([]byte(doc), []byte(sig), s.PublicKey())
	if err != nil || d.TaskID != "task-1" || d.PrivateIP != "198.18.0.7" {
		t.Fatalf("verify: %v %+v", err, d)
	}
	forged := strings.Replace(doc, "198.18.0.7", "198.18.0.8", 1)
	if _, err := VerifyIdentityDocument([]byte(forged), []byte(sig), s.PublicKey()); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("forged document: %v", err)
	}
	// The key survives a restart: a new service over the same key file verifies old documents.
	s2, err := New(context.Background(), Config{KeyPath: s.cfg.KeyPath, STS: st, Now: clk.now, Logger: s.log})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := VerifyIdentityDocument([]byte(doc), []byte(sig), s2.PublicKey()); err != nil {
		t.Fatalf("after restart: %v", err)
	}
}

func TestRequestMetrics(t *testing.T) {
	clk := &clock{t: time.Unix(1_800_000_000, 0)}
	st := &fakeSTS{now: clk.now, life: time.Hour}
	reg := prometheus.NewRegistry()
	m := metrics.New(reg)
	s, err := New(context.Background(), Config{KeyPath: filepath.Join(t.TempDir(), "k.pem"), STS: st, Now: clk.now, Metrics: m,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	tv := testView(s, st, clk, "task-1", "arn:aws:iam::123456789012:role/app")
	serve(s, tv, http.MethodGet, "/latest/meta-data/iam/security-credentials/app", nil)
	serve(s, tv, http.MethodGet, "/latest/user-data", nil)
	serve(s, tv, http.MethodGet, "/latest/meta-data/instance-id", nil)
	got := map[string]float64{
		"credentials 200": testutil.ToFloat64(m.MetadataResponses.WithLabelValues("credentials", "200")),
		"denied 404":      testutil.ToFloat64(m.MetadataResponses.WithLabelValues("denied", "404")),
		"identity 200":    testutil.ToFloat64(m.MetadataResponses.WithLabelValues("identity", "200")),
		"requests":        testutil.ToFloat64(m.MetadataRequests.WithLabelValues("credentials")),
	}
	want := map[string]float64{"credentials 200": 1, "denied 404": 1, "identity 200": 1, "requests": 1}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("metrics (-want +got):\n%s", diff)
	}
	if n := testutil.CollectAndCount(m.MetadataLatency); n != 3 {
		t.Fatalf("latency series = %d, want 3 classes", n)
	}
}

func TestAgentWideRequireV2(t *testing.T) {
	clk := &clock{t: time.Unix(1_800_000_000, 0)}
	st := &fakeSTS{now: clk.now, life: time.Hour}
	s, err := New(context.Background(), Config{KeyPath: filepath.Join(t.TempDir(), "key.pem"), STS: st, Now: clk.now, RequireV2: true,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	tv := testView(s, st, clk, "task-1", "") // the task itself does not ask for v2
	_, tok := serve(s, tv, http.MethodPut, "/latest/api/token", map[string]string{hdrTokenTTL: "21600"})
	for _, c := range []struct {
		name string
		hdr  map[string]string
		code int
	}{
		{"v1", nil, 401},
		{"bad token", map[string]string{hdrToken: "x.y"}, 401},
		{"v2", map[string]string{hdrToken: tok}, 200},
	} {
		if code, _ := serve(s, tv, http.MethodGet, "/latest/meta-data/instance-id", c.hdr); code != c.code {
			t.Errorf("%s: %d, want %d", c.name, code, c.code)
		}
	}
}
