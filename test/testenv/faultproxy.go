package testenv

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sync"
)

// FaultProxy is an HTTP reverse proxy in front of an AWS query endpoint
// (moto) that can answer a share of calls with EC2's throttling error
// (HTTP 503, RequestLimitExceeded) instead of forwarding them.
type FaultProxy struct {
	URL string // http://127.0.0.1:PORT

	mu       sync.Mutex
	faults   map[string]float64 // action ("" = every action) → fraction throttled
	injected map[string]int
	seen     map[string]int
	params   map[string][]url.Values // action → parameters of calls forwarded
	rewrite  map[string]func([]byte) []byte
	denied   map[string]string // action → error code answered instead
}

// maxRecorded bounds the parameters kept per action.
const maxRecorded = 1000

const throttleBody = `<?xml version="1.0" encoding="UTF-8"?>
<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message></Error></Errors><RequestID>fault-proxy</RequestID></Response>`

// StartFaultProxy proxies to upstream on a free loopback port until cleanup.
func StartFaultProxy(t TB, upstream string) *FaultProxy {
	t.Helper()
	u, err := url.Parse(upstream)
	if err != nil {
		t.Fatalf("fault proxy upstream %q: %v", upstream, err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("fault proxy listen: %v", err)
	}
	f := &FaultProxy{URL: "http://" + l.Addr().String(), faults: map[string]float64{}, injected: map[string]int{}, seen: map[string]int{}, params: map[string][]url.Values{}}
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.ModifyResponse = func(resp *http.Response) error {
		f.mu.Lock()
		fn := f.rewrite[resp.Request.Header.Get(actionHeader)]
		f.mu.Unlock()
		if fn == nil || resp.StatusCode != http.StatusOK {
			return nil
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return err
		}
		body = fn(body)
		resp.Body = io.NopCloser(bytes.NewReader(body))
		resp.ContentLength = int64(len(body))
		resp.Header.Set("Content-Length", fmt.Sprint(len(body)))
		return nil
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		action := actionOf(r, body)
		if code := f.deniedCode(action); code != "" {
			w.Header().Set("Content-Type", "text/xml")
			w.WriteHeader(http.StatusForbidden)
			fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?>
<ErrorResponse><Error><Type>Sender</Type><Code>%s</Code><Message>User: arn:aws:iam::123456789012:user/fault-proxy is not authorized to perform: %s</Message></Error><RequestId>fault-proxy</RequestId></ErrorResponse>`, code, action)
			return
		}
		if f.shouldFail(action) {
			w.Header().Set("Content-Type", "text/xml")
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, throttleBody)
			return
		}
		f.recordParams(action, r, body)
		r.Header.Set(actionHeader, action)
		rp.ServeHTTP(w, r)
	})}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return f
}

// actionHeader carries a forwarded call's action to ModifyResponse.
const actionHeader = "X-Fault-Proxy-Action"

// Rewrite passes the body of every successful answer to action through
// fn (nil stops it): what the upstream cannot be made to say, e.g. an
// unhealthy target, which moto never reports.
func (f *FaultProxy) Rewrite(action string, fn func(body []byte) []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.rewrite == nil {
		f.rewrite = map[string]func([]byte) []byte{}
	}
	if fn == nil {
		delete(f.rewrite, action)
		return
	}
	f.rewrite[action] = fn
}

func actionOf(r *http.Request, body []byte) string {
	if a := r.URL.Query().Get("Action"); a != "" {
		return a
	}
	if v, err := url.ParseQuery(string(body)); err == nil {
		return v.Get("Action")
	}
	return ""
}

func (f *FaultProxy) recordParams(action string, r *http.Request, body []byte) {
	v, err := url.ParseQuery(string(body))
	if err != nil {
		return
	}
	for k, vs := range r.URL.Query() {
		v[k] = append(v[k], vs...)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.params[action]) < maxRecorded {
		f.params[action] = append(f.params[action], v)
	}
}

// Params returns the parameters of the calls of action that were forwarded
// upstream (what EC2 was asked, including what moto ignores).
func (f *FaultProxy) Params(action string) []url.Values {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]url.Values(nil), f.params[action]...)
}

// Throttle makes fraction (0..1) of calls to action fail with
// RequestLimitExceeded; action "" means every action. Fraction 0 stops it.
func (f *FaultProxy) Throttle(action string, fraction float64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if fraction <= 0 {
		delete(f.faults, action)
		return
	}
	f.faults[action] = fraction
}

func (f *FaultProxy) shouldFail(action string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.seen[action]++
	frac, ok := f.faults[action]
	if !ok {
		frac = f.faults[""]
	}
	if frac > 0 && rand.Float64() < frac {
		f.injected[action]++
		return true
	}
	return false
}

// Deny answers every call of action with HTTP 403 and error code (as
// AccessDenied, for a caller IAM does not allow); code "" stops it.
func (f *FaultProxy) Deny(action, code string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.denied == nil {
		f.denied = map[string]string{}
	}
	if code == "" {
		delete(f.denied, action)
		return
	}
	f.denied[action] = code
}

func (f *FaultProxy) deniedCode(action string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.denied[action]
}

// Injected returns how many calls of action were throttled ("" = all).
func (f *FaultProxy) Injected(action string) int { return f.count(f.injected, action) }

// Seen returns how many calls of action reached the proxy ("" = all).
func (f *FaultProxy) Seen(action string) int { return f.count(f.seen, action) }

func (f *FaultProxy) count(m map[string]int, action string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	if action != "" {
		return m[action]
	}
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

func (f *FaultProxy) String() string { return fmt.Sprintf("fault proxy %s", f.URL) }
