package metadataproxy

import (
	"context"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"
)

// upstream fetches allowlisted paths from the host's IMDS (IMDSv2, token
// cached) and caches the answers: the host's answers do not change.
type upstream struct {
	base   string
	client *http.Client

	mu       sync.Mutex
	token    string
	tokenExp time.Time
	cache    map[string]cached
}

type cached struct {
	body string
	code int
}

func newUpstream(base string) *upstream {
	return &upstream{base: strings.TrimSuffix(base, "/"), client: &http.Client{Timeout: 2 * time.Second}, cache: map[string]cached{}}
}

func (u *upstream) get(ctx context.Context, p string) (string, int) {
	if u.base == "" {
		return "404 - Not Found\n", http.StatusNotFound
	}
	u.mu.Lock()
	if c, ok := u.cache[p]; ok {
		u.mu.Unlock()
		return c.body, c.code
	}
	u.mu.Unlock()
	tok := u.sessionToken(ctx)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.base+p, nil)
	if err != nil {
		return "502 - Bad Gateway\n", http.StatusBadGateway
	}
	if tok != "" {
		req.Header.Set(hdrToken, tok)
	}
	resp, err := u.client.Do(req)
	if err != nil {
		return "502 - Bad Gateway\n", http.StatusBadGateway
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	c := cached{body: string(b), code: resp.StatusCode}
	if resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusNotFound {
		u.mu.Lock()
		u.cache[p] = c
		u.mu.Unlock()
	}
	return c.body, c.code
}

func (u *upstream) sessionToken(ctx context.Context) string {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.token != "" && time.Now().Before(u.tokenExp) {
		return u.token
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, u.base+"/latest/api/token", nil)
	if err != nil {
		return ""
	}
	req.Header.Set(hdrTokenTTL, "21600")
	resp, err := u.client.Do(req)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return ""
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	u.token, u.tokenExp = string(b), time.Now().Add(5*time.Hour)
	return u.token
}
