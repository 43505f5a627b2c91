package integration

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials/ec2rolecreds"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"github.com/vishvananda/netns"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	"github.com/titus-agent/titus-agent/test/testenv"
)

// dialInNetNS opens a TCP connection from inside a task's netns; the
// socket stays there whichever goroutine uses it afterwards.
func dialInNetNS(nsPath string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		type res struct {
			c   net.Conn
			err error
		}
		ch := make(chan res, 1)
		go func() {
			runtime.LockOSThread()
			orig, err := netns.Get()
			if err != nil {
				ch <- res{err: err}
				return
			}
			defer orig.Close()
			target, err := netns.GetFromPath(nsPath)
			if err != nil {
				ch <- res{err: err}
				return
			}
			defer target.Close()
			if err := netns.Set(target); err != nil {
				ch <- res{err: err}
				return
			}
			c, err := (&net.Dialer{Timeout: 3 * time.Second}).DialContext(ctx, network, addr)
			if netns.Set(orig) == nil {
				runtime.UnlockOSThread()
			}
			ch <- res{c, err}
		}()
		r := <-ch
		return r.c, r.err
	}
}

// taskHTTP is an HTTP client whose connections start inside a task netns.
func taskHTTP(nsPath string) *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: dialInNetNS(nsPath), DisableKeepAlives: true}}
}

// countingProxy stands between the agent and the IMDS mock and records
// every path the host's metadata service is asked for.
type countingProxy struct {
	mu    sync.Mutex
	paths []string
	url   string
}

func startCountingProxy(t *testing.T, upstream string) *countingProxy {
	u, _ := url.Parse(upstream)
	cp := &countingProxy{}
	rp := httputil.NewSingleHostReverseProxy(u)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cp.mu.Lock()
		cp.paths = append(cp.paths, r.URL.Path)
		cp.mu.Unlock()
		rp.ServeHTTP(w, r)
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	cp.url = "http://" + l.Addr().String()
	return cp
}

func (cp *countingProxy) seen() []string {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return append([]string(nil), cp.paths...)
}

func get(t *testing.T, c *http.Client, path string, hdr map[string]string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://169.254.169.254"+path, nil)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func putToken(t *testing.T, c *http.Client, ttl string, hdr map[string]string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPut, "http://169.254.169.254/latest/api/token", nil)
	req.Header.Set("X-aws-ec2-metadata-token-ttl-seconds", ttl)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("PUT token: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestMetadataTaskScopedIMDSAndCredentials(t *testing.T) {
	begin(t)
	moto := testenv.StartMoto(t)
	mock := testenv.StartIMDSMock(t)
	proxy := startCountingProxy(t, mock.Endpoint)
	ln := newLocalNet(t)
	cfg := ln.config + fmt.Sprintf(`metadata:
  enabled: true
  upstream: %s
  stsEndpoint: %s
  region: us-east-1
  accessKeyID: testing
  secretAccessKey: testing
  credentialDuration: 15m
`, proxy.url, moto.Endpoint)
	e := &agentEnv{t: t}
	e.ctd = testenv.StartContainerd(t)
	e.reg = testenv.StartRegistry(t)
	e.image = testenv.PushBusybox(t, e.reg, "busybox", "latest")
	e.agent = testenv.StartAgent(t, testenv.AgentOptions{Containerd: e.ctd.Address, PlainHTTP: []string{e.reg.Host}, Config: cfg})
	e.dir, e.socket, e.client = e.agent.Dir, e.agent.Socket, e.agent.Client

	a := e.spec("task-a", "sleep", "1000")
	a.IamRoleArn = "arn:aws:iam::123456789012:role/app-a"
	b := e.spec("task-b", "sleep", "1000")
	b.IamRoleArn = "arn:aws:iam::123456789012:role/app-b"
	b.MetadataRequireV2 = true
	e.launch(a)
	e.launch(b)
	ta := e.waitState("task-a", stRunning, 30*time.Second)
	tb := e.waitState("task-b", stRunning, 30*time.Second)
	ca, cb := taskHTTP(ta.GetNetwork().GetNetns()), taskHTTP(tb.GetNetwork().GetNetns())
	ctx := context.Background()

	// The AWS SDK's own IMDS client and EC2 role provider, unchanged but for
	// the dialer that starts connections inside task A's netns.
	imdsA := imds.New(imds.Options{HTTPClient: ca})
	out, err := imdsA.GetMetadata(ctx, &imds.GetMetadataInput{Path: "instance-id"})
	if err != nil {
		t.Fatalf("sdk imds (v2 flow): %v", err)
	}
	if id := readAll(out.Content); id != "task-a" {
		t.Fatalf("instance-id = %q, want task-a", id)
	}
	out, err = imdsA.GetMetadata(ctx, &imds.GetMetadataInput{Path: "local-ipv4"})
	if err != nil || readAll(out.Content) != ta.GetNetwork().GetIpv4() {
		t.Fatalf("local-ipv4: %v", err)
	}
	creds, err := ec2rolecreds.New(func(o *ec2rolecreds.Options) { o.Client = imdsA }).Retrieve(ctx)
	if err != nil || creds.AccessKeyID == "" {
		t.Fatalf("ec2rolecreds: %v", err)
	}
	stsc := sts.New(sts.Options{Region: "us-east-1", BaseEndpoint: aws.String(moto.Endpoint), Credentials: aws.NewCredentialsCache(staticProvider{creds})})
	who, err := stsc.GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
	if err != nil {
		t.Fatalf("GetCallerIdentity with the task's credentials: %v", err)
	}
	if arn := aws.ToString(who.Arn); !strings.Contains(arn, "assumed-role/app-a/task-a") {
		t.Fatalf("caller = %s, want task A's assumed role", arn)
	}

	// The IPv6 address answers too.
	if resp, err := ca.Get("http://[fd00:ec2::254]/latest/meta-data/instance-id"); err != nil {
		t.Fatalf("IPv6 metadata address: %v", err)
	} else if body := readAll(resp.Body); body != "task-a" {
		t.Fatalf("IPv6 instance-id = %q", body)
	}
	// IMDSv1 works for A; B requires v2.
	if code, body := get(t, ca, "/latest/meta-data/local-ipv4", nil); code != 200 || body != ta.GetNetwork().GetIpv4() {
		t.Fatalf("v1 local-ipv4: %d %q", code, body)
	}
	if code, _ := get(t, cb, "/latest/meta-data/instance-id", nil); code != 401 {
		t.Fatalf("v1 request to a require-v2 task: %d, want 401", code)
	}
	_, tokA := putToken(t, ca, "60", nil)
	code, tokB := putToken(t, cb, "60", nil)
	if code != 200 {
		t.Fatalf("token for B: %d", code)
	}
	if code, body := get(t, cb, "/latest/meta-data/instance-id", map[string]string{"X-aws-ec2-metadata-token": tokB}); code != 200 || body != "task-b" {
		t.Fatalf("B with its token: %d %q", code, body)
	}
	if code, _ := get(t, cb, "/latest/meta-data/instance-id", map[string]string{"X-aws-ec2-metadata-token": tokA}); code != 401 {
		t.Fatalf("A's token replayed in B: %d, want 401", code)
	}
	// A cannot reach B's credentials by any path.
	for _, p := range []string{
		"/latest/meta-data/iam/security-credentials/app-b",
		"/latest/meta-data/iam/security-credentials/app-a/../app-b",
		"/latest/meta-data/iam/security-credentials/%61pp-b",
		"/latest/meta-data/iam/security-credentials/app-b/",
	} {
		if code, body := get(t, ca, p, nil); code == 200 || strings.Contains(body, "AccessKeyId") {
			t.Fatalf("A got %s: %d %q", p, code, body)
		}
	}
	if code, body := get(t, ca, "/latest/meta-data/iam/security-credentials/", nil); code != 200 || body != "app-a" {
		t.Fatalf("role listing: %d %q", code, body)
	}
	// Hostile and forbidden requests.
	for _, c := range []struct {
		path string
		want int
	}{
		{"/latest/user-data", 404},
		{"/latest/meta-data/../user-data", 400},
		{"/latest/meta-data/identity-credentials/ec2/security-credentials/ec2-instance", 404},
		{"/latest/meta-data/iam/security-credentials/app-a-typo", 404},
	} {
		if code, _ := get(t, ca, c.path, nil); code != c.want {
			t.Fatalf("%s: %d, want %d", c.path, code, c.want)
		}
	}
	for _, ttl := range []string{"0", "21601", "-5", "abc", ""} {
		if code, _ := putToken(t, ca, ttl, nil); code != 400 {
			t.Fatalf("token ttl %q: %d, want 400", ttl, code)
		}
	}
	if code, _ := putToken(t, ca, "60", map[string]string{"X-Forwarded-For": "1.2.3.4"}); code != 403 {
		t.Fatalf("token with X-Forwarded-For: %d, want 403", code)
	}
	if code, _ := get(t, ca, "/latest/meta-data/instance-id", map[string]string{"X-Big": strings.Repeat("x", 64<<10)}); code != 431 {
		t.Fatalf("huge header: %d, want 431", code)
	}
	// An allowlisted path goes upstream; the upstream never sees anything else.
	if code, body := get(t, ca, "/latest/meta-data/ami-id", nil); code != 200 || body == "" {
		t.Fatalf("allowlisted ami-id: %d %q", code, body)
	}
	for _, p := range proxy.seen() {
		if p != "/latest/api/token" && p != "/latest/meta-data/ami-id" {
			t.Fatalf("the host's IMDS saw %s", p)
		}
	}
	// busybox inside the container reaches it too.
	if out, code := e.exec("task-a", "sh", "-c", "printf 'GET /latest/meta-data/local-ipv4 HTTP/1.0\\r\\n\\r\\n' | nc -w 3 169.254.169.254 80"); code != 0 || !strings.Contains(out, ta.GetNetwork().GetIpv4()) {
		t.Fatalf("from inside the container: %d %q", code, out)
	}
	// The identity document verifies with the agent's key; a forged one does not.
	doc, err := e.cli("metadata", "get", "task-a", "/latest/dynamic/instance-identity/document")
	if err != nil || !strings.Contains(doc, `"instanceId": "task-a"`) {
		t.Fatalf("metadata get: %v %s", err, doc)
	}
	sig, err := e.cli("metadata", "get", "task-a", "/latest/dynamic/instance-identity/signature")
	if err != nil {
		t.Fatalf("metadata get signature: %v %s", err, sig)
	}
	docFile, sigFile, forged := filepath.Join(e.dir, "doc.json"), filepath.Join(e.dir, "doc.sig"), filepath.Join(e.dir, "forged.json")
	os.WriteFile(docFile, []byte(doc), 0o644)
	os.WriteFile(sigFile, []byte(sig), 0o644)
	os.WriteFile(forged, []byte(strings.Replace(doc, "task-a", "task-b", 1)), 0o644)
	key := filepath.Join(e.dir, "state", "metadata-key.pem")
	if out, err := e.cli("identity", "verify", "--key", key, "--document", docFile, "--signature", sigFile); err != nil || !strings.Contains(out, "valid: task task-a") {
		t.Fatalf("identity verify: %v %s", err, out)
	}
	if out, err := e.cli("identity", "verify", "--key", key, "--document", forged, "--signature", sigFile); err == nil {
		t.Fatalf("forged document verified: %s", out)
	}

	// 1,000 connections held open by A: B still answers.
	var conns []net.Conn
	dial := dialInNetNS(ta.GetNetwork().GetNetns())
	for i := 0; i < 1000; i++ {
		c, err := dial(ctx, "tcp", "169.254.169.254:80")
		if err != nil {
			break
		}
		conns = append(conns, c)
	}
	if code, _ := get(t, cb, "/latest/meta-data/instance-id", map[string]string{"X-aws-ec2-metadata-token": tokB}); code != 200 {
		t.Fatalf("B while A floods: %d", code)
	}
	for _, c := range conns {
		c.Close()
	}

	// Agent restart: metadata answers again, credentials included.
	e.kill9()
	e.start()
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, body := get(t, ca, "/latest/meta-data/iam/security-credentials/app-a", nil)
		if code == 200 && strings.Contains(body, "AccessKeyId") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after agent restart: %d %q", code, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// STS down: cached credentials are still served.
	moto.Proc.Stop()
	if code, body := get(t, ca, "/latest/meta-data/iam/security-credentials/app-a", nil); code != 200 || !strings.Contains(body, "AccessKeyId") {
		t.Fatalf("with STS down: %d %q", code, body)
	}
	for _, id := range []string{"task-a", "task-b"} {
		e.client.KillTask(e.ctx(), &agentv1.KillTaskRequest{Id: id, GracePeriodSeconds: 1})
	}
	e.waitFinal("task-a")
	e.waitFinal("task-b")
	e.assertNoLeftovers()
	e.assertNoNetworkLeftovers()
}

type staticProvider struct{ c aws.Credentials }

func (s staticProvider) Retrieve(context.Context) (aws.Credentials, error) { return s.c, nil }

func readAll(r io.ReadCloser) string {
	defer r.Close()
	b, _ := io.ReadAll(bufio.NewReader(r))
	return string(b)
}
