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

// roleCreds keeps one task's role credentials fresh: fetched at task start,
// refreshed in the background well before expiry, and the last good ones
// served while STS fails, until they expire.
type roleCreds struct {
	sts      assumer
	limiter  *rate.Limiter
	roleARN  string
	session  string
	duration time.Duration
	before   time.Duration
	log      *slog.Logger
	now      func() time.Time

	mu      sync.Mutex
	cur     *Credentials
	lastErr error
	cancel  context.CancelFunc
	done    chan struct{}
}

var sessionNameRE = regexp.MustCompile(`[^\w+=,.@-]`)

// sessionName derives a valid STS session name from a task id.
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
	if err := c.limiter.Wait(ctx); err != nil {
		return nil, err
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

// start fetches once (bounded by ctx) and then keeps refreshing until stop.
func (c *roleCreds) start(ctx context.Context) {
	first, err := c.fetch(ctx)
	c.mu.Lock()
	c.cur, c.lastErr = first, err
	c.mu.Unlock()
	if err != nil {
		c.log.Warn("first credential fetch failed; retrying in the background", "role", c.roleARN, "err", err)
	}
	bg, cancel := context.WithCancel(context.Background())
	c.cancel, c.done = cancel, make(chan struct{})
	go c.refresh(bg)
}

func (c *roleCreds) stop() {
	if c.cancel != nil {
		c.cancel()
		<-c.done
	}
}

func (c *roleCreds) refresh(ctx context.Context) {
	defer close(c.done)
	backoff := time.Second
	for {
		c.mu.Lock()
		cur := c.cur
		c.mu.Unlock()
		wait := backoff
		if cur != nil && c.lastErrNil() {
			// Refresh well before expiry: `before` ahead, or at half-life.
			life := cur.Expiration.Sub(c.now())
			wait = max(min(life-c.before, life/2), time.Second)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		next, err := c.fetch(ctx)
		c.mu.Lock()
		if err == nil {
			c.cur, c.lastErr = next, nil
			backoff = time.Second
		} else {
			c.lastErr = err
			// Exponential backoff with full jitter, capped.
			backoff = min(backoff*2, time.Minute)
			backoff = time.Duration(rand.Int64N(int64(backoff))) + 100*time.Millisecond
		}
		c.mu.Unlock()
		if err != nil && ctx.Err() == nil {
			c.log.Warn("credential refresh failed; serving cached credentials until they expire", "role", c.roleARN, "err", err)
		}
	}
}

func (c *roleCreds) lastErrNil() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lastErr == nil
}

// get returns valid credentials or ErrNoCredentials.
func (c *roleCreds) get() (*Credentials, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cur != nil && c.now().Before(c.cur.Expiration) {
		return c.cur, nil
	}
	if c.lastErr != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoCredentials, c.lastErr)
	}
	return nil, fmt.Errorf("%w: expired", ErrNoCredentials)
}
