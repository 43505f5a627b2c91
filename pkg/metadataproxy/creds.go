package metadataproxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"regexp"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"golang.org/x/time/rate"
)

// Credentials are one role session's keys.
type Credentials struct {
	AccessKeyID     string
	SecretAccessKey string
	SessionToken    string
	Expiration      time.Time
	LastUpdated     time.Time
}

// assumer is the STS call the credential cache makes.
type assumer interface {
	AssumeRole(ctx context.Context, in *sts.AssumeRoleInput, opts ...func(*sts.Options)) (*sts.AssumeRoleOutput, error)
}

// ErrNoCredentials means no valid credentials could be had from STS.
var ErrNoCredentials = errors.New("credentials are not available")

// Refresh backoff while STS fails: exponential from minBackoff, capped at
// maxBackoff, with full jitter.
const (
	minBackoff   = time.Second
	maxBackoff   = time.Minute
	fetchTimeout = 10 * time.Second
)

// roleCreds keeps one task's role credentials fresh: fetched when the task
// starts, refreshed in the background well before expiry, and the last good
// ones served while STS fails, until they expire.
type roleCreds struct {
	sts      assumer
	limiter  *rate.Limiter
	roleARN  string
	session  string
	duration time.Duration
	before   time.Duration
	log      *slog.Logger
	audit    *slog.Logger
	now      func() time.Time

	first  chan struct{} // closed once the first fetch has been tried
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	cur     *Credentials
	lastErr error
}

var sessionNameRE = regexp.MustCompile(`[^\w+=,.@-]`)

// sessionName derives a valid STS session name (2-64 of [\w+=,.@-]) from a
// task id.
func sessionName(taskID string) string {
	s := sessionNameRE.ReplaceAllString(taskID, "-")
	if len(s) > 64 {
		s = s[:64]
	}
	for len(s) < 2 {
		s += "-"
	}
	return s
}

func (c *roleCreds) fetch(ctx context.Context) (*Credentials, error) {
	ctx, cancel := context.WithTimeout(ctx, fetchTimeout)
	defer cancel()
	if err := c.limiter.Wait(ctx); err != nil {
		return nil, fmt.Errorf("sts rate limit: %w", err)
	}
	out, err := c.sts.AssumeRole(ctx, &sts.AssumeRoleInput{
		RoleArn:         aws.String(c.roleARN),
		RoleSessionName: aws.String(c.session),
		DurationSeconds: aws.Int32(int32(c.duration / time.Second)),
	})
	if err != nil {
		return nil, fmt.Errorf("sts assume role %s: %w", c.roleARN, err)
	}
	if out.Credentials == nil {
		return nil, fmt.Errorf("sts assume role %s: empty credentials", c.roleARN)
	}
	cr := out.Credentials
	return &Credentials{
		AccessKeyID: aws.ToString(cr.AccessKeyId), SecretAccessKey: aws.ToString(cr.SecretAccessKey),
		SessionToken: aws.ToString(cr.SessionToken), Expiration: aws.ToTime(cr.Expiration), LastUpdated: c.now().UTC(),
	}, nil
}

// start runs the fetch-and-refresh loop until stop; the first fetch starts
// at once (wait on c.first for it).
func (c *roleCreds) start() {
	bg, cancel := context.WithCancel(context.Background())
	c.first, c.cancel, c.done = make(chan struct{}), cancel, make(chan struct{})
	go c.run(bg)
}

func (c *roleCreds) stop() {
	if c.cancel != nil {
		c.cancel()
		<-c.done
	}
}

func (c *roleCreds) run(ctx context.Context) {
	defer close(c.done)
	failures := 0
	for {
		next, err := c.fetch(ctx)
		if ctx.Err() != nil {
			return
		}
		c.mu.Lock()
		if err == nil {
			c.cur, c.lastErr = next, nil
			failures = 0
		} else {
			c.lastErr = err
			failures++
		}
		c.mu.Unlock()
		audit := c.audit
		if audit == nil {
			audit = c.log
		}
		if err == nil {
			audit.Info("credentials fetched from STS", "role", c.roleARN, "session", c.session,
				"accessKeyId", next.AccessKeyID, "expiration", next.Expiration)
		} else {
			audit.Warn("credential fetch from STS failed", "role", c.roleARN, "session", c.session, "err", err)
		}
		select {
		case <-c.first:
		default:
			close(c.first)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(c.nextWait(next, failures)):
		}
	}
}

// nextWait is when to fetch again: well before expiry after a success
// (RefreshBefore ahead, or at half the remaining life if that is sooner),
// exponential backoff with full jitter after failures.
func (c *roleCreds) nextWait(cur *Credentials, failures int) time.Duration {
	if failures == 0 {
		life := cur.Expiration.Sub(c.now())
		return max(min(life-c.before, life/2), minBackoff)
	}
	ceil := maxBackoff
	if failures < 7 {
		ceil = min(minBackoff<<failures, maxBackoff)
	}
	return minBackoff/2 + rand.N(ceil)
}

// get returns valid credentials or an error wrapping ErrNoCredentials. It
// waits for the first fetch (bounded by ctx) only when that is still under
// way, as right after an agent restart.
func (c *roleCreds) get(ctx context.Context) (*Credentials, error) {
	if c.first != nil {
		select {
		case <-c.first:
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: still waiting for the first fetch: %w", ErrNoCredentials, ctx.Err())
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cur != nil && c.now().Before(c.cur.Expiration) {
		return c.cur, nil
	}
	if c.lastErr != nil {
		return nil, fmt.Errorf("%w: %w", ErrNoCredentials, c.lastErr)
	}
	return nil, fmt.Errorf("%w: expired", ErrNoCredentials)
}
