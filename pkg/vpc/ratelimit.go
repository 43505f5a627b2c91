package vpc

import (
	"net/http"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"golang.org/x/time/rate"

	"github.com/titus-agent/titus-agent/pkg/backoff"
)

// RetryConfig bounds the EC2 client's own pacing: one client-side token
// bucket for every EC2 request the agent makes (each retry attempt takes a
// token too), and exponential backoff with full jitter on throttling
// (RequestLimitExceeded, Throttling, …) and 5xx answers.
type RetryConfig struct {
	// RatePerSecond and Burst size the shared token bucket. Zero means 20/s,
	// burst 40 (well under EC2's per-account mutating-call budget).
	RatePerSecond float64
	Burst         int
	// MaxAttempts per call, including the first. Zero means 8.
	MaxAttempts int
	// BaseDelay and MaxDelay shape the backoff: attempt i sleeps a uniformly
	// random time in [0, min(MaxDelay, BaseDelay·2^i)). Zero means 100ms and 10s.
	BaseDelay time.Duration
	MaxDelay  time.Duration
}

func (c RetryConfig) withDefaults() RetryConfig {
	if c.RatePerSecond <= 0 {
		c.RatePerSecond = 20
	}
	if c.Burst <= 0 {
		c.Burst = 40
	}
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = 8
	}
	if c.BaseDelay <= 0 {
		c.BaseDelay = 100 * time.Millisecond
	}
	if c.MaxDelay <= 0 {
		c.MaxDelay = 10 * time.Second
	}
	return c
}

// fullJitter is the "full jitter" backoff: sleep = rand[0, min(cap, base·2^attempt)).
type fullJitter struct{ base, max time.Duration }

func (j fullJitter) BackoffDelay(attempt int, _ error) (time.Duration, error) {
	return backoff.Policy{Base: j.base, Max: j.max, Jitter: backoff.Full}.Delay(attempt), nil
}

// newRetryer is the SDK's standard retryer (which already treats
// RequestLimitExceeded/Throttling as throttles and 5xx as transient) with our
// backoff, and without the SDK's retry-quota bucket: the shared rate limiter
// paces us instead, so a throttling storm slows the agent down rather than
// failing calls outright.
func newRetryer(c RetryConfig) func() aws.Retryer {
	return func() aws.Retryer {
		return retry.NewStandard(func(o *retry.StandardOptions) {
			o.MaxAttempts = c.MaxAttempts
			o.MaxBackoff = c.MaxDelay
			o.Backoff = fullJitter{base: c.BaseDelay, max: c.MaxDelay}
			o.RateLimiter = ratelimit.None
		})
	}
}

// limitedHTTP waits on the shared limiter before every HTTP attempt, so
// retries are paced by the same bucket as first tries.
type limitedHTTP struct {
	lim  *rate.Limiter
	next interface {
		Do(*http.Request) (*http.Response, error)
	}
}

func (l *limitedHTTP) Do(r *http.Request) (*http.Response, error) {
	if err := l.lim.Wait(r.Context()); err != nil {
		return nil, err
	}
	return l.next.Do(r)
}
