package metabench

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/titus-agent/titus-agent/pkg/metadataproxy"
)

// BenchResult is what a metadata benchmark measured.
type BenchResult struct {
	Requests int
	P50, P99 time.Duration
	RPS      float64
}

// BenchCredentials measures credential requests as a task makes them: from
// inside the task's netns (nsPath) to 169.254.169.254, n requests over
// `concurrency` keep-alive connections (at most the per-task connection
// limit), after a short warm-up. The task must have a role.
func BenchCredentials(ctx context.Context, nsPath string, n, concurrency int) (BenchResult, error) {
	c := metadataproxy.HTTPClientInNetNS(nsPath, concurrency)
	defer c.CloseIdleConnections()
	base := "http://169.254.169.254/latest/meta-data/iam/security-credentials/"
	role, err := fetch(ctx, c, base)
	if err != nil {
		return BenchResult{}, fmt.Errorf("role name: %w", err)
	}
	role = strings.TrimSpace(strings.SplitN(role, "\n", 2)[0])
	if role == "" {
		return BenchResult{}, errors.New("the task has no role")
	}
	return bench(ctx, c, base+role, n, concurrency)
}

// BenchURL measures GETs of url from the namespace at nsPath ("" for the
// caller's own), for a baseline such as the upstream IMDS mock directly.
func BenchURL(ctx context.Context, nsPath, url string, n, concurrency int) (BenchResult, error) {
	c := metadataproxy.HTTPClientInNetNS(nsPath, concurrency)
	defer c.CloseIdleConnections()
	return bench(ctx, c, url, n, concurrency)
}

func fetch(ctx context.Context, c *http.Client, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return string(b), nil
}

func bench(ctx context.Context, c *http.Client, url string, n, concurrency int) (BenchResult, error) {
	concurrency = max(1, min(concurrency, n))
	for range concurrency { // warm-up: open the connections, fill caches
		if _, err := fetch(ctx, c, url); err != nil {
			return BenchResult{}, err
		}
	}
	lat := make([]time.Duration, n)
	next := make(chan int)
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	start := time.Now()
	for range concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				t0 := time.Now()
				_, err := fetch(ctx, c, url)
				lat[i] = time.Since(t0)
				if err != nil {
					mu.Lock()
					firstErr = cmp.Or(firstErr, err)
					mu.Unlock()
				}
			}
		}()
	}
	for i := range n {
		if ctx.Err() != nil {
			break
		}
		next <- i
	}
	close(next)
	wg.Wait()
	elapsed := time.Since(start)
	if firstErr != nil {
		return BenchResult{}, firstErr
	}
	if err := ctx.Err(); err != nil {
		return BenchResult{}, err
	}
	slices.Sort(lat)
	return BenchResult{Requests: n, P50: lat[(n-1)/2], P99: lat[(n-1)*99/100], RPS: float64(n) / elapsed.Seconds()}, nil
}
