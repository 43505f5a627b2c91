package integration

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	"github.com/titus-agent/titus-agent/pkg/task"
	"github.com/titus-agent/titus-agent/test/testenv"
)

// ecrProxy stands between the agent and moto: it counts
// GetAuthorizationToken calls and, unless passthrough, rewrites the
// tokens' expiresAt to now+life (moto's are always long expired).
type ecrProxy struct {
	mu          sync.Mutex
	calls       int
	at          []time.Time // of each call
	life        time.Duration
	passthrough bool
	srv         *httptest.Server
}

func startECRProxy(t *testing.T, moto string, life time.Duration) *ecrProxy {
	t.Helper()
	p := &ecrProxy{life: life}
	target, err := url.Parse(moto)
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.ModifyResponse = func(resp *http.Response) error {
		if !strings.HasSuffix(resp.Request.Header.Get("X-Amz-Target"), ".GetAuthorizationToken") {
			return nil
		}
		p.mu.Lock()
		defer p.mu.Unlock()
		p.calls++
		p.at = append(p.at, time.Now())
		if p.passthrough || resp.StatusCode != http.StatusOK {
			return nil
		}
		var body map[string]any
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return err
		}
		if err := json.Unmarshal(b, &body); err != nil {
			return err
		}
		for _, d := range body["authorizationData"].([]any) {
			d.(map[string]any)["expiresAt"] = float64(time.Now().Add(p.life).Unix())
		}
		b, _ = json.Marshal(body)
		resp.Body = io.NopCloser(bytes.NewReader(b))
		resp.ContentLength = int64(len(b))
		resp.Header.Set("Content-Length", strconv.Itoa(len(b)))
		return nil
	}
	p.srv = httptest.NewServer(rp)
	t.Cleanup(p.srv.Close)
	return p
}

func (p *ecrProxy) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.calls
}

// TestImageECRTokenRefresh: pulls from a registry matching the ECR host
// pattern (Debian's docker-registry with htpasswd standing in, moto's
// token as the password) use the token of ecr:GetAuthorizationToken,
// cached while it has more than refreshBefore left, fetched anew before a
// pull once it is near expiry or expired. A task naming an evil registry
// whose path spells an ECR host gets no credentials sent there, and the
// token is in no log, state file or task view.
func TestImageECRTokenRefresh(t *testing.T) {
	begin(t)
	moto := testenv.StartMoto(t)
	const fresh = 8 * time.Second
	proxy := startECRProxy(t, moto.Endpoint, time.Hour+fresh) // refreshBefore 1h: fresh for 8 s
	const password = "123456789012-auth-token"                // moto's for its default account
	token := base64.StdEncoding.EncodeToString([]byte("AWS:" + password))
	reg := testenv.StartRegistryAuth(t, "AWS", password)
	var apps []string
	for i := range 5 {
		apps = append(apps, testenv.PushBusybox(t, reg, "app", strconv.Itoa(i)))
	}
	if resp, err := http.Get("http://" + reg.Host + "/v2/"); err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("the stand-in registry lets anonymous pulls in: %v %v", resp, err)
	}
	var evilMu sync.Mutex
	var evilReqs int
	var evilAuth []string
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		evilMu.Lock()
		evilReqs++
		if a := r.Header.Get("Authorization"); a != "" {
			evilAuth = append(evilAuth, a)
		}
		evilMu.Unlock()
		w.Header().Set("WWW-Authenticate", `Basic realm="evil"`)
		w.WriteHeader(http.StatusUnauthorized)
	}))
	t.Cleanup(evil.Close)
	evilHost := strings.TrimPrefix(evil.URL, "http://")

	cfg := fmt.Sprintf(`registries:
  ecr:
    hostPattern: '%s|(?P<account>[0-9]{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com'
    region: us-east-1
    endpoint: %s
    accessKeyID: testing
    secretAccessKey: testing
    refreshBefore: 1h
`, regexp.QuoteMeta(reg.Host), proxy.srv.URL)
	e := &agentEnv{t: t, reg: reg, ctd: testenv.StartContainerd(t)}
	e.agent = testenv.StartAgent(t, testenv.AgentOptions{Containerd: e.ctd.Address, PlainHTTP: []string{reg.Host, evilHost}, Config: cfg})
	e.dir, e.socket, e.client = e.agent.Dir, e.agent.Socket, e.agent.Client

	run := func(id, image string, wantCalls func(int) bool, what string) {
		t.Helper()
		s := e.spec(id, "true")
		s.Image = image
		e.launch(s)
		wantState(t, e.waitFinal(id), stFinished, task.ReasonCompleted, 0)
		if n := proxy.count(); !wantCalls(n) {
			t.Fatalf("after %s (%s): %d GetAuthorizationToken calls: %s\n%s", id, image, n, what, e.agent.Log())
		}
	}
	start := time.Now()
	run("t1", apps[0], func(n int) bool { return n == 1 }, "want 1, the first pull fetches")
	run("t2", apps[1], func(n int) bool { return n == 1 }, "want 1, a token with more than refreshBefore left is cached")
	time.Sleep(time.Until(start.Add(fresh + time.Second)))
	// From here on moto's own tokens: expired on arrival.
	proxy.mu.Lock()
	proxy.passthrough = true
	proxy.mu.Unlock()
	run("t3", apps[2], func(n int) bool { return n == 2 }, "want 2, a token near its expiry is fetched anew before the pull")
	run("t4", apps[3], func(n int) bool { return n >= 3 }, "want a new fetch")
	before := proxy.count()
	run("t5", apps[4], func(n int) bool { return n > before }, "want a new fetch, an expired token is never reused")

	// The attack: a registry of the task's choosing whose path spells an
	// ECR host gets no credentials.
	s := e.spec("evil", "true")
	s.Image = evilHost + "/123456789012.dkr.ecr.us-east-1.amazonaws.com/app:1"
	e.launch(s)
	tk := e.waitFinal("evil")
	if tk.GetState() != agentv1.TaskState_TASK_STATE_FAILED || tk.GetReason() != string(task.ReasonImagePullFailed) {
		t.Errorf("evil task: %s/%s %s", tk.GetState(), tk.GetReason(), tk.GetMessage())
	}
	evilMu.Lock()
	if evilReqs == 0 || len(evilAuth) > 0 {
		t.Errorf("evil registry: %d requests, Authorization headers %q", evilReqs, evilAuth)
	}
	evilMu.Unlock()

	// The token is nowhere: the agent's log, its state files, task views.
	leaks := func(where, s string) {
		t.Helper()
		for _, secret := range []string{password, token} {
			if strings.Contains(s, secret) {
				t.Errorf("ECR token in %s", where)
			}
		}
	}
	leaks("the agent's log", e.agent.Log())
	_ = filepath.Walk(e.dir, func(p string, info os.FileInfo, err error) error {
		if err == nil && info.Mode().IsRegular() && !strings.HasSuffix(p, ".sock") && !strings.HasPrefix(p, filepath.Join(e.dir, "disks")) {
			if b, err := os.ReadFile(p); err == nil {
				leaks(p, string(b))
			}
		}
		return nil
	})
	for _, id := range []string{"t1", "t3", "t5", "evil"} {
		out, err := e.cli("task", "get", id, "-o", "json")
		if err != nil {
			t.Fatalf("task get %s: %v\n%s", id, err, out)
		}
		leaks("task get "+id, out)
	}
	page, err := e.cli("task", "ls", "-a", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	leaks("task ls", page)
}

// TestImageECRTokenBackgroundRefresh: with no pull at all after the
// first, the agent fetches the token anew in the background
// (registries.ecr.refreshInterval) once it is within refreshBefore of its
// expiry, and before it expires: a pull after the first token's expiry
// finds a fresh one.
func TestImageECRTokenBackgroundRefresh(t *testing.T) {
	begin(t)
	moto := testenv.StartMoto(t)
	const life = 8 * time.Second // each token; refreshBefore 4s: due 4 s after its fetch
	proxy := startECRProxy(t, moto.Endpoint, life)
	mu, fetched := &proxy.mu, &proxy.at
	reg := testenv.StartRegistryAuth(t, "AWS", "123456789012-auth-token")
	first := testenv.PushBusybox(t, reg, "app", "1")
	second := testenv.PushBusybox(t, reg, "app", "2")
	cfg := fmt.Sprintf(`registries:
  ecr:
    hostPattern: '%s'
    region: us-east-1
    endpoint: %s
    accessKeyID: testing
    secretAccessKey: testing
    refreshBefore: 4s
    refreshInterval: 1s
`, regexp.QuoteMeta(reg.Host), proxy.srv.URL)
	e := &agentEnv{t: t, reg: reg, ctd: testenv.StartContainerd(t)}
	e.agent = testenv.StartAgent(t, testenv.AgentOptions{Containerd: e.ctd.Address, PlainHTTP: []string{reg.Host}, Config: cfg})
	e.dir, e.socket, e.client = e.agent.Dir, e.agent.Socket, e.agent.Client

	s := e.spec("t1", "true")
	s.Image = first
	e.launch(s)
	wantState(t, e.waitFinal("t1"), stFinished, task.ReasonCompleted, 0)
	mu.Lock()
	if len(*fetched) != 1 {
		mu.Unlock()
		t.Fatalf("after the first pull: %d token fetches, want 1", len(*fetched))
	}
	expires := (*fetched)[0].Add(life)
	mu.Unlock()

	// No pull now: the background refresh alone must fetch anew, before
	// the first token expires.
	deadline := time.Now().Add(life + 2*time.Second)
	for {
		mu.Lock()
		n := len(*fetched)
		var at time.Time
		if n > 1 {
			at = (*fetched)[1]
		}
		mu.Unlock()
		if n > 1 {
			if !at.Before(expires) {
				t.Fatalf("token fetched anew at %s, after the first one expired at %s", at.Format(time.StampMilli), expires.Format(time.StampMilli))
			}
			if lead := expires.Sub(at); lead < time.Second {
				t.Errorf("token fetched anew only %s before its expiry", lead)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no background token fetch within %s of the first (the token expired at %s)\n%s", life+2*time.Second, expires.Format(time.StampMilli), e.agent.Log())
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Past the first token's expiry, a pull works with the refreshed token.
	time.Sleep(time.Until(expires.Add(500 * time.Millisecond)))
	s = e.spec("t2", "true")
	s.Image = second
	e.launch(s)
	wantState(t, e.waitFinal("t2"), stFinished, task.ReasonCompleted, 0)
	if log := e.agent.Log(); strings.Contains(log, "refresh ECR tokens") {
		t.Errorf("the background refresh failed:\n%s", log)
	}
}
