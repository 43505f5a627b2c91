package integration

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	"github.com/titus-agent/titus-agent/test/testenv"
)

// blobGate is a registry's front that holds every blob download for delay
// and records how many were under way at once.
type blobGate struct {
	delay     time.Duration
	mu        sync.Mutex
	now, most int
	blobs     int
	proxy     *httputil.ReverseProxy
}

func (g *blobGate) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
		g.mu.Lock()
		g.now++
		g.blobs++
		g.most = max(g.most, g.now)
		g.mu.Unlock()
		defer func() { g.mu.Lock(); g.now--; g.mu.Unlock() }()
		time.Sleep(g.delay)
	}
	g.proxy.ServeHTTP(w, r)
}

// TestAgentColdPullBoundedAndApart pulls an image of eight fresh layers
// through a registry front that holds each blob download for 300 ms, with
// images.maxConcurrentDownloads 2. The attack: an image of many layers (or
// a slow registry) must not open a download per layer at once on the
// host; it never has more than 2 under way, and does have 2 (the layers
// come in parallel, not one by one). The launch records the fetch as its
// own step (image.fetch, at least 4 rounds of 300 ms), a second launch of
// the same image has none, and the metrics set the fetch apart from the
// launch (phase="fetch" once, phase="launch" below phase="total").
func TestAgentColdPullBoundedAndApart(t *testing.T) {
	begin(t)
	e := &agentEnv{t: t}
	e.ctd = testenv.StartContainerd(t)
	e.reg = testenv.StartRegistry(t)
	ref := testenv.PushBusyboxLayers(t, e.reg, "cold", "v1", 8, 64<<10)

	target, _ := url.Parse("http://" + e.reg.Host)
	gate := &blobGate{delay: 300 * time.Millisecond, proxy: httputil.NewSingleHostReverseProxy(target)}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: gate}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	front := ln.Addr().String()
	e.image = strings.Replace(ref, e.reg.Host, front, 1)

	addr := testenv.Addr(testenv.FreePort(t))
	e.agent = testenv.StartAgent(t, testenv.AgentOptions{Containerd: e.ctd.Address, PlainHTTP: []string{front},
		Config: fmt.Sprintf("metricsListen: %q\nimages:\n  maxConcurrentDownloads: 2\n", addr)})
	e.dir, e.socket, e.client = e.agent.Dir, e.agent.Socket, e.agent.Client

	fetchSteps := func(id string) []time.Duration {
		var out []time.Duration
		for _, tr := range e.get(id).GetTransitions() {
			for _, s := range tr.GetSteps() {
				if s.GetName() == "image.fetch" {
					out = append(out, s.GetTook().AsDuration())
				}
			}
		}
		return out
	}
	e.launch(e.spec("cold", "sleep", "60"))
	e.waitState("cold", agentv1.TaskState_TASK_STATE_RUNNING, 60*time.Second)
	gate.mu.Lock()
	most, blobs := gate.most, gate.blobs
	gate.mu.Unlock()
	t.Logf("blob downloads: %d, at most %d at once", blobs, most)
	if blobs < 9 { // the base layer, 8 more and the config
		t.Errorf("only %d blobs fetched through the front: the pull was not cold", blobs)
	}
	if most > 2 {
		t.Errorf("%d blob downloads at once, want at most images.maxConcurrentDownloads = 2", most)
	}
	if most < 2 {
		t.Errorf("blob downloads never overlapped (at most %d at once): layers came one by one", most)
	}
	steps := fetchSteps("cold")
	if len(steps) != 1 || steps[0] < 4*gate.delay {
		t.Errorf("image.fetch steps of the cold launch: %v, want one of at least %v (8 layers, 2 at a time)", steps, 4*gate.delay)
	}

	e.launch(e.spec("warm", "sleep", "60"))
	e.waitState("warm", agentv1.TaskState_TASK_STATE_RUNNING, 30*time.Second)
	if steps := fetchSteps("warm"); len(steps) != 0 {
		t.Errorf("image.fetch steps of a launch whose image was there: %v", steps)
	}

	var body string
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			body = string(b)
		}
		if strings.Contains(body, `titus_agent_launch_duration_seconds_count{phase="launch"} 2`) || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, w := range []string{
		`titus_agent_launch_duration_seconds_count{phase="fetch"} 1`,
		`titus_agent_launch_duration_seconds_count{phase="launch"} 2`,
		`titus_agent_launch_duration_seconds_count{phase="total"} 2`,
	} {
		if !strings.Contains(body, w) {
			t.Errorf("metrics lack %s", w)
		}
	}
	sum := func(phase string) float64 {
		var v float64
		for _, l := range strings.Split(body, "\n") {
			if strings.HasPrefix(l, `titus_agent_launch_duration_seconds_sum{phase="`+phase+`"} `) {
				fmt.Sscan(strings.Fields(l)[1], &v)
			}
		}
		return v
	}
	if total, launch := sum("total"), sum("launch"); launch <= 0 || total-launch < (4*gate.delay).Seconds() {
		t.Errorf("launch %.3fs vs total %.3fs: the fetch (>= %v) is not set apart", launch, total, 4*gate.delay)
	}
	for _, id := range []string{"cold", "warm"} {
		e.client.KillTask(e.ctx(), &agentv1.KillTaskRequest{Id: id})
	}
	for _, id := range []string{"cold", "warm"} {
		e.waitFinal(id)
	}
}
