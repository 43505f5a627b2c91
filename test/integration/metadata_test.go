package integration

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials/ec2rolecreds"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	"github.com/titus-agent/titus-agent/pkg/metadataproxy"
	"github.com/titus-agent/titus-agent/pkg/task"
	"github.com/titus-agent/titus-agent/test/testenv"
)

// taskHTTP is an HTTP client whose connections start inside a task netns.
func taskHTTP(nsPath string) *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: metadataproxy.DialInNetNS(nsPath), DisableKeepAlives: true}}
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

// mdEnv is an agent with the local network provider and the metadata
// service, STS on moto, and the IMDS mock as the host's metadata service
// behind a proxy that records what the host's IMDS is asked.
type mdEnv struct {
	*agentEnv
	moto    *testenv.Moto
	mock    *testenv.IMDSMock
	proxy   *countingProxy
	metrics string // host:port of the agent's /metrics
}

func startMetadataAgent(t *testing.T, credentialDuration string, extraConfig ...string) *mdEnv {
	t.Helper()
	m := &mdEnv{agentEnv: &agentEnv{t: t}}
	m.moto = testenv.StartMoto(t)
	m.mock = testenv.StartIMDSMock(t)
	m.proxy = startCountingProxy(t, m.mock.Endpoint)
	m.metrics = testenv.Addr(testenv.FreePort(t))
	ln := newLocalNet(t)
	cfg := ln.config + strings.Join(extraConfig, "") + fmt.Sprintf(`metricsListen: %q
metadata:
  enabled: true
  upstream: %s
  stsEndpoint: %s
  region: us-east-1
  accessKeyID: testing
  secretAccessKey: testing
  credentialDuration: %s
`, m.metrics, m.proxy.url, m.moto.Endpoint, credentialDuration)
	e := m.agentEnv
	e.ctd = testenv.StartContainerd(t)
	e.reg = testenv.StartRegistry(t)
	e.image = testenv.PushBusybox(t, e.reg, "busybox", "latest")
	e.agent = testenv.StartAgent(t, testenv.AgentOptions{Containerd: e.ctd.Address, PlainHTTP: []string{e.reg.Host}, Config: cfg})
	e.dir, e.socket, e.client = e.agent.Dir, e.agent.Socket, e.agent.Client
	return m
}

// scrape returns the agent's /metrics page.
func (m *mdEnv) scrape() string {
	resp, err := http.Get("http://" + m.metrics + "/metrics")
	if err != nil {
		m.t.Fatalf("metrics: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// metricValue is the value of one sample line (name{labels}) on a
// /metrics page, -1 when absent.
func metricValue(page, series string) float64 {
	for _, l := range strings.Split(page, "\n") {
		if rest, ok := strings.CutPrefix(l, series+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			if err == nil {
				return v
			}
		}
	}
	return -1
}

func TestMetadataTaskScopedIMDSAndCredentials(t *testing.T) {
	begin(t)
	m := startMetadataAgent(t, "15m")
	e, moto, proxy := m.agentEnv, m.moto, m.proxy

	// A asks for its identity and credentials with busybox wget as its very
	// first act: the metadata service is up before the task's process.
	a := e.spec("task-a", "sh", "-c", "wget -q -O - http://169.254.169.254/latest/meta-data/iam/security-credentials/app-a; echo; "+
		"wget -q -O - http://169.254.169.254/latest/meta-data/instance-id; echo ' first-answer'; exec sleep 1000")
	a.IamRoleArn = "arn:aws:iam::123456789012:role/app-a"
	b := e.spec("task-b", "sleep", "1000")
	b.IamRoleArn = "arn:aws:iam::123456789012:role/app-b"
	b.MetadataRequireV2 = true
	e.launch(a)
	e.launch(b)
	ta := e.waitState("task-a", stRunning, 30*time.Second)
	tb := e.waitState("task-b", stRunning, 30*time.Second)
	e.waitLog("task-a", "task-a first-answer")
	if logs, _ := e.cli("task", "logs", "task-a"); !strings.Contains(logs, `"AccessKeyId"`) {
		t.Fatalf("task A's first request got no credentials: %q", logs)
	}
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
	// The SDK's parsers accept the task's identity document, region and IAM
	// info as they would the real IMDS's.
	region, err := imdsA.GetRegion(ctx, &imds.GetRegionInput{})
	if err != nil || region.Region != "us-east-1" {
		t.Fatalf("sdk GetRegion: %+v %v", region, err)
	}
	idDoc, err := imdsA.GetInstanceIdentityDocument(ctx, &imds.GetInstanceIdentityDocumentInput{})
	if err != nil {
		t.Fatalf("sdk GetInstanceIdentityDocument: %v", err)
	}
	if d := idDoc.InstanceIdentityDocument; d.InstanceID != "task-a" || d.PrivateIP != ta.GetNetwork().GetIpv4() || d.AvailabilityZone == "" || d.Region != "us-east-1" {
		t.Fatalf("sdk identity document: %+v", d)
	}
	iamInfo, err := imdsA.GetIAMInfo(ctx, &imds.GetIAMInfoInput{})
	if err != nil || !strings.HasSuffix(iamInfo.IAMInfo.InstanceProfileArn, ":instance-profile/app-a") {
		t.Fatalf("sdk GetIAMInfo: %+v %v", iamInfo, err)
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

	// IMDSv1 works for A; B requires v2.
	if code, body := get(t, ca, "/latest/meta-data/local-ipv4", nil); code != 200 || body != ta.GetNetwork().GetIpv4() {
		t.Fatalf("v1 local-ipv4: %d %q", code, body)
	}
	if code, _ := get(t, cb, "/latest/meta-data/instance-id", nil); code != 401 {
		t.Fatalf("v1 request to a require-v2 task: %d, want 401", code)
	}
	_, tokA := putToken(t, ca, "60", nil)
	code, tokB := putToken(t, cb, "3600", nil)
	if code != 200 {
		t.Fatalf("token for B: %d", code)
	}
	hdrB := map[string]string{"X-aws-ec2-metadata-token": tokB}
	if code, body := get(t, cb, "/latest/meta-data/instance-id", hdrB); code != 200 || body != "task-b" {
		t.Fatalf("B with its token: %d %q", code, body)
	}
	if code, _ := get(t, cb, "/latest/meta-data/instance-id", map[string]string{"X-aws-ec2-metadata-token": tokA}); code != 401 {
		t.Fatalf("A's token replayed in B: %d, want 401", code)
	}
	// The IPv6 address answers in every task's netns, v1 in A, v2 in B.
	for _, c := range []struct {
		client *http.Client
		hdr    map[string]string
		want   string
	}{{ca, nil, "task-a"}, {cb, hdrB, "task-b"}} {
		req, _ := http.NewRequest(http.MethodGet, "http://[fd00:ec2::254]/latest/meta-data/instance-id", nil)
		for k, v := range c.hdr {
			req.Header.Set(k, v)
		}
		resp, err := c.client.Do(req)
		if err != nil {
			t.Fatalf("IPv6 metadata address in %s: %v", c.want, err)
		}
		if body := readAll(resp.Body); resp.StatusCode != 200 || body != c.want {
			t.Fatalf("IPv6 instance-id in %s: %d %q", c.want, resp.StatusCode, body)
		}
	}
	// A cannot reach B's credentials by any path.
	for _, p := range []string{
		"/latest/meta-data/iam/security-credentials/app-b",
		"/latest/meta-data/iam/security-credentials/app-a/../app-b",
		"/latest/meta-data/iam/security-credentials/%61pp-b",
		"/latest/meta-data/iam/security-credentials/app-b/",
		"/latest/meta-data/iam/security-credentials/APP-B",
	} {
		if code, body := get(t, ca, p, nil); code == 200 || strings.Contains(body, "AccessKeyId") {
			t.Fatalf("A got %s: %d %q", p, code, body)
		}
	}
	if code, body := get(t, ca, "/latest/meta-data/iam/security-credentials/", nil); code != 200 || body != "app-a" {
		t.Fatalf("role listing: %d %q", code, body)
	}
	// Hostile and forbidden requests: the host's user-data and credentials
	// are never served, traversal is refused.
	for _, c := range []struct {
		path string
		want int
	}{
		{"/latest/user-data", 404},
		{"/latest/user-data/", 404},
		{"/latest/meta-data/../user-data", 400},
		{"/latest/meta-data/ami-id/../../user-data", 400},
		{"/latest/meta-data/%2e%2e/user-data", 400},
		{"/latest/meta-data/public-keys/0/openssh-key", 404},
		{"/latest/meta-data/identity-credentials/ec2/security-credentials/ec2-instance", 404},
		{"/latest/meta-data/iam/security-credentials/app-a-typo", 404},
		{"/latest/meta-data/no-such-thing", 404},
	} {
		if code, _ := get(t, ca, c.path, nil); code != c.want {
			t.Fatalf("%s: %d, want %d", c.path, code, c.want)
		}
	}
	// Token TTL bounds: 1..21600 accepted, everything else 400; a token
	// request carrying X-Forwarded-For is refused.
	for _, ttl := range []string{"1", "21600"} {
		if code, tok := putToken(t, ca, ttl, nil); code != 200 || tok == "" {
			t.Fatalf("token ttl %s: %d %q, want 200", ttl, code, tok)
		}
	}
	for _, ttl := range []string{"0", "21601", "-5", "abc", "", "1e3", "99999999999999999999"} {
		if code, _ := putToken(t, ca, ttl, nil); code != 400 {
			t.Fatalf("token ttl %q: %d, want 400", ttl, code)
		}
	}
	for _, xff := range []string{"1.2.3.4", "169.254.169.254"} {
		if code, _ := putToken(t, ca, "60", map[string]string{"X-Forwarded-For": xff}); code != 403 {
			t.Fatalf("token with X-Forwarded-For %s: %d, want 403", xff, code)
		}
	}
	if code, _ := get(t, ca, "/latest/meta-data/instance-id", map[string]string{"X-Big": strings.Repeat("x", 64<<10)}); code != 431 {
		t.Fatalf("huge header: %d, want 431", code)
	}
	if code, _ := get(t, ca, "/latest/meta-data/"+strings.Repeat("a/", 4000), nil); code != 404 && code != 400 && code != 414 {
		t.Fatalf("huge path: %d, want a clear 4xx", code)
	}
	// An allowlisted path goes upstream (the host's answer, cached).
	direct, err := http.Get(m.mock.Endpoint + "/latest/meta-data/ami-id")
	if err != nil {
		t.Fatalf("ami-id from the mock directly: %v", err)
	}
	hostAMI := readAll(direct.Body)
	for range 2 {
		if code, body := get(t, ca, "/latest/meta-data/ami-id", nil); code != 200 || body != hostAMI {
			t.Fatalf("allowlisted ami-id: %d %q, want the host's %q", code, body, hostAMI)
		}
	}

	// busybox inside the container: wget (v1) over IPv4 and IPv6, and the
	// v2 flow (token PUT with nc, then wget with the token) in B.
	if out, code := e.exec("task-a", "wget", "-q", "-O", "-", "http://169.254.169.254/latest/meta-data/local-ipv4"); code != 0 || out != ta.GetNetwork().GetIpv4() {
		t.Fatalf("wget inside A: %d %q", code, out)
	}
	if out, code := e.exec("task-a", "wget", "-q", "-O", "-", "http://[fd00:ec2::254]/latest/meta-data/instance-id"); code != 0 || out != "task-a" {
		t.Fatalf("wget over IPv6 inside A: %d %q", code, out)
	}
	if out, code := e.exec("task-b", "wget", "-q", "-O", "-", "http://169.254.169.254/latest/meta-data/instance-id"); code == 0 {
		t.Fatalf("wget without a token inside require-v2 B succeeded: %q", out)
	}
	v2 := `tok=$(printf 'PUT /latest/api/token HTTP/1.0\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\n' | nc -w 3 169.254.169.254 80 | sed '1,/^\r$/d') && ` +
		`wget -q -O - --header "X-aws-ec2-metadata-token: $tok" http://169.254.169.254/latest/meta-data/iam/security-credentials/app-b`
	if out, code := e.exec("task-b", "sh", "-c", v2); code != 0 || !strings.Contains(out, `"AccessKeyId"`) {
		t.Fatalf("v2 flow inside B: %d %q", code, out)
	}

	// The operator's view: metadata get as the task sees it, and the
	// identity document verifies with the agent's key; a forged one does not.
	if out, err := e.cli("metadata", "get", "task-b", "/latest/meta-data/local-ipv4"); err != nil || strings.TrimSpace(out) != tb.GetNetwork().GetIpv4() {
		t.Fatalf("metadata get B's local-ipv4 (require-v2 task): %v %q", err, out)
	}
	if out, err := e.cli("metadata", "get", "task-a", "/latest/user-data"); err == nil || !strings.Contains(out, "404") {
		t.Fatalf("metadata get of user-data: %v %q, want a 404 and a failing exit", err, out)
	}
	if out, err := e.cli("metadata", "get", "no-such-task", "/latest/meta-data/instance-id"); err == nil {
		t.Fatalf("metadata get for an unknown task: %q", out)
	}
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
	// The document as the task itself fetched it verifies too.
	if out, code := e.exec("task-a", "wget", "-q", "-O", "-", "http://169.254.169.254/latest/dynamic/instance-identity/document"); code != 0 || out != strings.TrimSpace(doc) {
		t.Fatalf("document from inside A: %d %q, want what metadata get showed", code, out)
	}

	// Per-request metrics by class and status, with latency; an audit line
	// per credential fetch from STS and per credential answer.
	page := m.scrape()
	for _, series := range []string{
		`titus_agent_metadata_responses_total{class="credentials",code="200"}`,
		`titus_agent_metadata_responses_total{class="denied",code="404"}`,
		`titus_agent_metadata_responses_total{class="denied",code="400"}`,
		`titus_agent_metadata_responses_total{class="denied",code="401"}`,
		`titus_agent_metadata_responses_total{class="token",code="400"}`,
		`titus_agent_metadata_responses_total{class="token",code="403"}`,
		`titus_agent_metadata_responses_total{class="proxied",code="200"}`,
		`titus_agent_metadata_request_duration_seconds_count{class="credentials"}`,
		`titus_agent_metadata_request_duration_seconds_count{class="identity"}`,
	} {
		if v := metricValue(page, series); v <= 0 {
			t.Errorf("metric %s = %v, want > 0", series, v)
		}
	}
	log := e.agent.Proc.Log()
	for _, want := range []string{
		`msg="credentials fetched from STS" audit=metadata role=arn:aws:iam::123456789012:role/app-a session=task-a`,
		`msg="credentials fetched from STS" audit=metadata role=arn:aws:iam::123456789012:role/app-b session=task-b`,
		`msg="credentials served" audit=metadata task=task-a role=arn:aws:iam::123456789012:role/app-a`,
	} {
		if !strings.Contains(log, want) {
			t.Errorf("agent log has no audit line %q", want)
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	// 10,000 connections at once from A (plus idle ones that never send a
	// byte): B keeps answering, the agent's sockets stay bounded, and A
	// answers again by itself once the flood is over.
	m.floodFromA(ta.GetNetwork().GetNetns(), cb, hdrB, ca)

	// The host's IMDS saw the allowlisted path once (then cached) and
	// nothing else a task asked for.
	var amiSeen int
	for _, p := range proxy.seen() {
		switch p {
		case "/latest/api/token":
		case "/latest/meta-data/ami-id":
			amiSeen++
		default:
			t.Fatalf("the host's IMDS saw %s", p)
		}
	}
	if amiSeen != 1 {
		t.Fatalf("the host's IMDS saw ami-id %d times, want once (cached)", amiSeen)
	}

	// Agent restart: metadata answers again, credentials included. The
	// time is measured and reported, not asserted.
	answered := make(chan time.Duration, 1)
	stopPoll := make(chan struct{})
	defer close(stopPoll)
	e.kill9()
	killed := time.Now()
	go func() {
		c := taskHTTP(ta.GetNetwork().GetNetns())
		c.Timeout = time.Second
		for {
			select {
			case <-stopPoll:
				return
			default:
			}
			if resp, err := c.Get("http://169.254.169.254/latest/meta-data/instance-id"); err == nil {
				ok := resp.StatusCode == 200 && readAll(resp.Body) == "task-a"
				if ok {
					answered <- time.Since(killed)
					return
				}
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	startAt := time.Now()
	e.start()
	grpcReady := time.Since(startAt)
	select {
	case d := <-answered:
		t.Logf("agent restart: process started %v after kill -9; gRPC answered %v after start; metadata in task A answered %v after start",
			startAt.Sub(killed).Round(time.Millisecond), grpcReady.Round(time.Millisecond), (d - startAt.Sub(killed)).Round(time.Millisecond))
	case <-time.After(30 * time.Second):
		t.Fatalf("metadata never answered again after the agent restart\n%s", e.agent.Log())
	}
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
	// Tokens were signed with the old agent's key: refused now, and a new
	// one works, over IPv6 too.
	if code, _ := get(t, cb, "/latest/meta-data/instance-id", hdrB); code != 401 {
		t.Fatalf("B's token from before the restart: %d, want 401", code)
	}
	if code, tok := putToken(t, cb, "60", nil); code != 200 {
		t.Fatalf("token for B after the restart: %d", code)
	} else {
		req, _ := http.NewRequest(http.MethodGet, "http://[fd00:ec2::254]/latest/meta-data/instance-id", nil)
		req.Header.Set("X-aws-ec2-metadata-token", tok)
		resp, err := cb.Do(req)
		if err != nil {
			t.Fatalf("IPv6 in B after the restart: %v", err)
		}
		if body := readAll(resp.Body); resp.StatusCode != 200 || body != "task-b" {
			t.Fatalf("IPv6 in B after the restart: %d %q", resp.StatusCode, body)
		}
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
	// A finished task has no metadata service any more: a clear error.
	if out, err := e.cli("metadata", "get", "task-a", "/latest/meta-data/instance-id"); err == nil || !strings.Contains(out, "no metadata listener") {
		t.Fatalf("metadata get for a finished task: %v %q", err, out)
	}
}

// floodFromA opens 10,000 connections at once from inside A's netns, each
// asking for A's instance-id, plus 128 that never send a byte (twice the
// per-task connection limit) and stay open until the end. Meanwhile B must
// answer every request, and the agent's open files must stay bounded. The
// flood is bounded in count and time (a minute); afterwards A answers again while the
// idle connections are still held: the agent dropped them by itself.
func (m *mdEnv) floodFromA(nsA string, cb *http.Client, hdrB map[string]string, ca *http.Client) {
	t := m.t
	const flood, idle = 10000, 128
	pid := m.agent.Pid()
	baseFDs := countFDs(pid)
	idleConns, err := openConnsInNetNS(nsA, idle)
	if err != nil {
		t.Fatalf("idle connections: %v", err)
	}
	defer closeAll(idleConns)
	conns, err := openConnsInNetNS(nsA, flood)
	defer closeAll(conns) // also stops the readers if the test fails early
	if err != nil {
		t.Fatalf("flood connections: %v", err)
	}
	// The flood's bound: connections the kernel has not let through A's
	// accept queue by then (SYN and data retransmits back off while the
	// queue is full) give up, which counts as refused.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var (
		wg         sync.WaitGroup
		ok, failed atomic.Int64
	)
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			dl, _ := ctx.Deadline()
			c.SetDeadline(dl)
			if _, err := io.WriteString(c, "GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n\r\n"); err != nil {
				failed.Add(1)
				return
			}
			b, err := io.ReadAll(c)
			if err == nil && strings.HasPrefix(string(b), "HTTP/1.1 200 ") && strings.HasSuffix(string(b), "task-a") {
				ok.Add(1)
			} else {
				failed.Add(1)
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	var (
		bAnswers, maxFDs int
		bSlowest         time.Duration
	)
	began := time.Now()
poll:
	for {
		select {
		case <-done:
			break poll
		case <-ctx.Done():
			break poll
		default:
		}
		t0 := time.Now()
		if code, body := get(t, cb, "/latest/meta-data/instance-id", hdrB); code != 200 || body != "task-b" {
			t.Fatalf("B while A floods: %d %q", code, body)
		}
		bAnswers++
		bSlowest = max(bSlowest, time.Since(t0))
		maxFDs = max(maxFDs, countFDs(pid))
		time.Sleep(20 * time.Millisecond)
	}
	<-done
	t.Logf("flood from A: %d connections at once, %d answered 200, %d refused or unanswered at the bound, over %v; B answered all %d of its requests (slowest %v); agent open files %d before, at most %d during",
		flood, ok.Load(), failed.Load(), time.Since(began).Round(time.Millisecond), bAnswers, bSlowest.Round(time.Millisecond), baseFDs, maxFDs)
	if ok.Load() == 0 {
		t.Fatalf("no request of the flood was answered")
	}
	// The agent holds at most its per-task connection limit for A (64), so
	// its open files stay near where they were, whatever A opens.
	if maxFDs > baseFDs+64+64 {
		t.Fatalf("agent open files went from %d to %d during a flood from one task: not bounded", baseFDs, maxFDs)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, body := get(t, ca, "/latest/meta-data/instance-id", nil)
		if code == 200 && body == "task-a" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("A does not answer again after its flood, with idle connections held: %d %q", code, body)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// openConnsInNetNS starts n TCP connections to 169.254.169.254:80 from
// inside nsPath at once: non-blocking connects on one thread in the netns,
// so n connections need neither n threads nor n round trips to open.
func openConnsInNetNS(nsPath string, n int) ([]net.Conn, error) {
	var conns []net.Conn
	err := metadataproxy.InNetNS(nsPath, func() error {
		for range n {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return fmt.Errorf("socket %d: %w", len(conns), err)
			}
			if err := unix.Connect(fd, &unix.SockaddrInet4{Port: 80, Addr: [4]byte{169, 254, 169, 254}}); err != nil && err != unix.EINPROGRESS {
				unix.Close(fd)
				return fmt.Errorf("connect %d: %w", len(conns), err)
			}
			f := os.NewFile(uintptr(fd), "metadata-flood")
			c, err := net.FileConn(f)
			f.Close()
			if err != nil {
				return fmt.Errorf("conn %d: %w", len(conns), err)
			}
			conns = append(conns, c)
		}
		return nil
	})
	return conns, err
}

func closeAll(cs []net.Conn) {
	for _, c := range cs {
		c.Close()
	}
}

func countFDs(pid int) int {
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	return len(ents)
}

// TestMetadataCredentialsExpireWhileSTSDown: with STS gone, a task keeps
// getting its last good credentials until they expire, then a clean 503
// (and the SDK's provider a clean error), never stale keys.
func TestMetadataCredentialsExpireWhileSTSDown(t *testing.T) {
	begin(t)
	m := startMetadataAgent(t, "20s")
	e := m.agentEnv
	s := e.spec("task-c", "sleep", "1000")
	s.IamRoleArn = "arn:aws:iam::123456789012:role/app-c"
	e.launch(s)
	tc := e.waitState("task-c", stRunning, 30*time.Second)
	cc := taskHTTP(tc.GetNetwork().GetNetns())
	const credPath = "/latest/meta-data/iam/security-credentials/app-c"
	type imdsCreds struct {
		Code, AccessKeyId, Expiration string
	}
	decode := func(body string) imdsCreds {
		var c imdsCreds
		if err := json.Unmarshal([]byte(body), &c); err != nil {
			t.Fatalf("credentials %q: %v", body, err)
		}
		return c
	}
	code, body := get(t, cc, credPath, nil)
	if code != 200 {
		t.Fatalf("credentials with STS up: %d %q", code, body)
	}
	m.moto.Proc.Stop()
	stsDown := time.Now()
	// The last good credentials, still valid, keep coming.
	code, body = get(t, cc, credPath, nil)
	if code != 200 {
		t.Fatalf("credentials right after STS went down: %d %q", code, body)
	}
	last := decode(body)
	exp, err := time.Parse(time.RFC3339, last.Expiration)
	if err != nil || last.Code != "Success" || !exp.After(stsDown.Add(-time.Second)) {
		t.Fatalf("cached credentials while STS is down: %+v (%v)", last, err)
	}
	// After they expire: a clean 503, never the expired keys.
	deadline := exp.Add(30 * time.Second)
	for {
		code, body = get(t, cc, credPath, nil)
		if code == 503 {
			break
		}
		if code != 200 {
			t.Fatalf("credentials while STS is down: %d %q", code, body)
		}
		c := decode(body)
		cexp, err := time.Parse(time.RFC3339, c.Expiration)
		if err != nil {
			t.Fatalf("expiration %q: %v", c.Expiration, err)
		}
		if time.Now().After(cexp.Add(2 * time.Second)) {
			t.Fatalf("expired credentials %s (expired %s) still served", c.AccessKeyId, c.Expiration)
		}
		exp = cexp
		if time.Now().After(deadline) {
			t.Fatalf("credentials still served 30s after they expired: %q", body)
		}
		time.Sleep(250 * time.Millisecond)
	}
	if strings.Contains(body, "AccessKeyId") || !strings.Contains(body, "credentials are temporarily unavailable") {
		t.Fatalf("after expiry: %q, want a clean 503", body)
	}
	t.Logf("STS down at %s; last credentials expired %s; 503 from %s", stsDown.Format(time.TimeOnly), exp.Format(time.TimeOnly), time.Now().Format(time.TimeOnly))
	// The SDK's provider sees a clean error too; other paths still answer.
	imdsC := imds.New(imds.Options{HTTPClient: cc})
	if _, err := ec2rolecreds.New(func(o *ec2rolecreds.Options) { o.Client = imdsC }).Retrieve(context.Background()); err == nil {
		t.Fatal("ec2rolecreds got credentials after expiry with STS down")
	}
	if code, body := get(t, cc, "/latest/meta-data/instance-id", nil); code != 200 || body != "task-c" {
		t.Fatalf("instance-id with STS down: %d %q", code, body)
	}
	if !strings.Contains(e.agent.Proc.Log(), `msg="credential fetch from STS failed" audit=metadata role=arn:aws:iam::123456789012:role/app-c`) {
		t.Error("no audit line for the failed STS fetches")
	}
	e.client.KillTask(e.ctx(), &agentv1.KillTaskRequest{Id: "task-c", GracePeriodSeconds: 1})
	e.waitFinal("task-c")
	e.assertNoLeftovers()
	e.assertNoNetworkLeftovers()
}

// TestMetadataListenerIPv6 drives the metadata service directly on
// namespaces made here: IPv6 answers where the netns has it, Start fails
// (leaving nothing open) when IPv6 is on but cannot be served, and only a
// netns with IPv6 really disabled gets IPv4 alone, which is logged.
func TestMetadataListenerIPv6(t *testing.T) {
	begin(t)
	var logBuf syncBuffer
	svc, err := metadataproxy.New(context.Background(), metadataproxy.Config{
		KeyPath: filepath.Join(t.TempDir(), "key.pem"), AccessKeyID: "x", SecretKey: "x", STSEndpoint: "http://127.0.0.1:9",
		Logger: slog.New(slog.NewTextHandler(&logBuf, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Close() })
	ctx := context.Background()
	answers := func(ns, url string) (string, error) {
		resp, err := metadataproxy.HTTPClientInNetNS(ns, 1).Get(url)
		if err != nil {
			return "", err
		}
		return readAll(resp.Body), nil
	}
	start := func(id, ns string) ([]string, error) {
		return svc.Start(ctx, &task.Spec{ID: id}, &task.NetworkAttachment{NetNSPath: ns, IPv4: "198.18.0.9", MAC: "0e:00:00:00:00:09"})
	}

	// IPv6 on: both addresses answer.
	on := testNetNS(t)
	addrs, err := start("v6-on", on)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"169.254.169.254:80", "[fd00:ec2::254]:80"}, addrs); diff != "" {
		t.Fatalf("addresses (-want +got):\n%s", diff)
	}
	for _, u := range []string{"http://169.254.169.254/latest/meta-data/instance-id", "http://[fd00:ec2::254]/latest/meta-data/instance-id"} {
		if body, err := answers(on, u); err != nil || body != "v6-on" {
			t.Fatalf("%s: %q %v", u, body, err)
		}
	}

	// IPv6 on but [fd00:ec2::254]:80 taken: Start fails, nothing is left
	// listening, and it works once the port is free.
	busy := testNetNS(t)
	if out, err := exec.Command("ip", "-n", filepath.Base(busy), "addr", "add", "fd00:ec2::254/128", "dev", "lo", "nodad").CombinedOutput(); err != nil {
		t.Fatalf("ip addr add: %v %s", err, out)
	}
	var squatter net.Listener
	if err := metadataproxy.InNetNS(busy, func() (err error) {
		squatter, err = net.Listen("tcp6", "[fd00:ec2::254]:80")
		return err
	}); err != nil {
		t.Fatalf("squat [fd00:ec2::254]:80: %v", err)
	}
	if addrs, err := start("v6-busy", busy); err == nil || !strings.Contains(err.Error(), "fd00:ec2::254") {
		squatter.Close()
		t.Fatalf("Start with IPv6 on but its port taken: %v %v, want an error naming the IPv6 address", addrs, err)
	}
	if body, err := answers(busy, "http://169.254.169.254/latest/meta-data/instance-id"); err == nil {
		squatter.Close()
		t.Fatalf("a failed Start left IPv4 answering: %q", body)
	}
	squatter.Close()
	if addrs, err := start("v6-busy", busy); err != nil || len(addrs) != 2 {
		t.Fatalf("Start once the port is free: %v %v", addrs, err)
	}

	// IPv6 disabled in the netns: IPv4 only, and the log says so.
	off := testNetNS(t)
	if err := metadataproxy.InNetNS(off, func() error {
		return os.WriteFile("/proc/sys/net/ipv6/conf/lo/disable_ipv6", []byte("1"), 0o644)
	}); err != nil {
		t.Fatalf("disable IPv6: %v", err)
	}
	addrs, err = start("v6-off", off)
	if err != nil {
		t.Fatalf("Start with IPv6 disabled: %v", err)
	}
	if diff := cmp.Diff([]string{"169.254.169.254:80"}, addrs); diff != "" {
		t.Fatalf("addresses with IPv6 disabled (-want +got):\n%s", diff)
	}
	if body, err := answers(off, "http://169.254.169.254/latest/meta-data/instance-id"); err != nil || body != "v6-off" {
		t.Fatalf("IPv4 with IPv6 disabled: %q %v", body, err)
	}
	if !strings.Contains(logBuf.String(), "IPv6 is disabled in the task's netns") || !strings.Contains(logBuf.String(), off) {
		t.Fatalf("no log line for the IPv4-only netns:\n%s", logBuf.String())
	}
	for _, id := range []string{"v6-on", "v6-busy", "v6-off"} {
		if err := svc.Stop(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if body, err := answers(on, "http://169.254.169.254/latest/meta-data/instance-id"); err == nil {
		t.Fatalf("still answering after Stop: %q", body)
	}
}

// testNetNS makes a named netns for this test, removed at cleanup.
func testNetNS(t *testing.T) string {
	t.Helper()
	b := make([]byte, 4)
	rand.Read(b)
	name := "tmd" + hex.EncodeToString(b)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	return "/run/netns/" + name
}

// syncBuffer is a bytes.Buffer safe for a logger and a reader at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

type staticProvider struct{ c aws.Credentials }

func (s staticProvider) Retrieve(context.Context) (aws.Credentials, error) { return s.c, nil }

func readAll(r io.ReadCloser) string {
	defer r.Close()
	b, _ := io.ReadAll(bufio.NewReader(r))
	return string(b)
}
