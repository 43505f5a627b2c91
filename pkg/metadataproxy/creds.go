package metadataproxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsmiddleware "github.com/aws/aws-sdk-go-v2/aws/middleware"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	ststypes "github.com/aws/aws-sdk-go-v2/service/sts/types"
	"github.com/aws/smithy-go/middleware"
	"golang.org/x/time/rate"

	"github.com/titus-agent/titus-agent/pkg/backoff"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// Credentials are one role session's keys. Expiration is on this host's
// clock: STS's answer, carried over by the lifetime STS granted, so that a
// host clock ahead of or behind STS's neither refreshes in a loop nor
// serves expired keys (the task's SDK reads the same clock).
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
// maxBackoff, with jitter. Waiting for the STS rate limiter is not
// bounded by fetchTimeout: a restart with many tasks queues, it does not
// fail.
const (
	minBackoff = time.Second
	maxBackoff = time.Minute
	// expirySlack: credentials are not served in their last minute (or
	// last quarter of a shorter life), so a task never gets keys that
	// expire before it can use them.
	expirySlack = time.Minute
)

// fetchTimeout bounds one STS call once the rate limiter let it through (a
// variable for tests).
var fetchTimeout = 10 * time.Second

// stsBackoff waits in [ceil/2, ceil] after n failures, ceil =
// min(minBackoff·2^n, maxBackoff).
var stsBackoff = backoff.Policy{Base: minBackoff, Max: maxBackoff, Jitter: backoff.Equal}

// roleCreds keeps one task's role credentials fresh: fetched when the task
// starts, refreshed in the background well before expiry and on demand
// when a caller finds none valid, and the last good ones served while STS
// fails, until they expire. Concurrent fetches are one (callers queue on
// the fetch in flight).
type roleCreds struct {
	sts      assumer
	limiter  *rate.Limiter
	roleARN  string
	session  string
	duration time.Duration
	before   time.Duration
	// tags and sourceIdentity go on every AssumeRole, so a role's trust
	// policy can require the task's application, job and owner.
	tags           []ststypes.Tag
	sourceIdentity string
	log            *slog.Logger
	audit          *slog.Logger
	now            func() time.Time
	// serverTime reads STS's own time off a response (its Date header);
	// nil means awsmiddleware.GetServerTime.
	serverTime func(middleware.Metadata) (time.Time, bool)

	first  chan struct{} // closed once the first fetch has been tried
	bg     context.Context
	cancel context.CancelFunc
	done   chan struct{}
	wake   chan struct{} // an on-demand fetch failed: let the loop back off from now

	mu       sync.Mutex
	cur      *Credentials
	lastErr  error
	lastTry  time.Time // local time the last fetch finished
	inflight *fetchCall
}

// fetchCall is one STS fetch that callers wait on together.
type fetchCall struct {
	done  chan struct{}
	creds *Credentials
	err   error
}

var sessionNameRE = regexp.MustCompile(`[^\w+=,.@-]`)

// sessionName derives a valid STS session name (2-64 of [\w+=,.@-]) from a
// task id. It is also the session's SourceIdentity, which has the same
// rules (and may not start with "aws:", which the ':' rule already rules
// out).
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

// Session tag keys passed on AssumeRole (see docs/security.md for a trust
// policy that requires them).
const (
	TagApplication = "titus-application"
	TagJob         = "titus-job"
	TagSubmitter   = "titus-submitter"
	TagTask        = "titus-task"
)

// tagValueRE is what STS accepts in a tag value; anything else becomes '_'.
var tagValueRE = regexp.MustCompile(`[^\p{L}\p{Z}\p{N}_.:/=+\-@]`)

const maxTagValue = 256

// sessionTags are the STS session tags of a task: its application and job
// (labels only the scheduler sets), its owner and its id. Empty values are
// left out, so a trust policy that requires a tag refuses a task without it.
func sessionTags(spec *task.Spec) []ststypes.Tag {
	vals := map[string]string{
		TagApplication: spec.Labels[task.LabelApplication],
		TagJob:         spec.Labels[task.LabelJobID],
		TagSubmitter:   spec.Labels[task.LabelSubmitter],
		TagTask:        spec.ID,
	}
	var tags []ststypes.Tag
	for k, v := range vals {
		v = tagValueRE.ReplaceAllString(v, "_")
		if len(v) > maxTagValue {
			v = v[:maxTagValue]
		}
		if v != "" {
			tags = append(tags, ststypes.Tag{Key: aws.String(k), Value: aws.String(v)})
		}
	}
	sort.Slice(tags, func(i, j int) bool { return *tags[i].Key < *tags[j].Key })
	return tags
}

// sameTags reports whether two sessionTags results are equal.
func sameTags(a, b []ststypes.Tag) bool {
	return slices.EqualFunc(a, b, func(x, y ststypes.Tag) bool {
		return aws.ToString(x.Key) == aws.ToString(y.Key) && aws.ToString(x.Value) == aws.ToString(y.Value)
	})
}

// fetch makes one AssumeRole call. The returned Expiration is on the local
// clock: the lifetime STS granted (its Expiration minus its own time, from
// the response's Date header, or the duration asked for when the response
// has none) counted from when the request was sent.
func (c *roleCreds) fetch(ctx context.Context) (*Credentials, error) {
	if err := c.limiter.Wait(ctx); err != nil {
		return nil, fmt.Errorf("sts rate limit: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, fetchTimeout)
	defer cancel()
	in := &sts.AssumeRoleInput{
		RoleArn:         aws.String(c.roleARN),
		RoleSessionName: aws.String(c.session),
		DurationSeconds: aws.Int32(int32(c.duration / time.Second)),
		Tags:            c.tags,
	}
	if c.sourceIdentity != "" {
		in.SourceIdentity = aws.String(c.sourceIdentity)
	}
	sent := c.now()
	out, err := c.sts.AssumeRole(ctx, in)
	if err != nil {
		return nil, fmt.Errorf("sts assume role %s: %w", c.roleARN, err)
	}
	if out.Credentials == nil || out.Credentials.Expiration == nil {
		return nil, fmt.Errorf("sts assume role %s: empty credentials", c.roleARN)
	}
	cr := out.Credentials
	life := c.lifetime(aws.ToTime(cr.Expiration), sent, out.ResultMetadata)
	return &Credentials{
		AccessKeyID: aws.ToString(cr.AccessKeyId), SecretAccessKey: aws.ToString(cr.SecretAccessKey),
		SessionToken: aws.ToString(cr.SessionToken), Expiration: sent.Add(life).UTC(), LastUpdated: sent.UTC(),
	}, nil
}

// lifetime is how long STS granted the session, on STS's own clock:
// Expiration minus STS's time (the response's Date header). Without a Date
// header, Expiration minus the time the request was sent when that is a
// plausible lifetime, else the duration asked for (STS grants exactly that
// or fails). A host clock ahead of STS never makes a session look expired
// at birth.
func (c *roleCreds) lifetime(exp, sent time.Time, md middleware.Metadata) time.Duration {
	get := c.serverTime
	if get == nil {
		get = awsmiddleware.GetServerTime
	}
	if at, ok := get(md); ok {
		// A Date header a little late (a slow response) only shortens
		// the estimate.
		if life := exp.Sub(at); life > 0 && life <= c.duration+time.Minute {
			return min(life, c.duration)
		}
	}
	if life := exp.Sub(sent); life > 0 && life <= c.duration {
		return life
	}
	return c.duration
}

// refresh fetches new credentials, or joins the fetch already in flight,
// and waits for it (bounded by ctx). The fetch itself runs on the
// session's own context: a caller giving up does not cancel it for the
// others.
func (c *roleCreds) refresh(ctx context.Context) (*Credentials, error) {
	return c.refreshIf(ctx, true)
}

// refreshIf is refresh; unless force, valid credentials (a fetch that
// ended since the caller looked) are returned instead of a new fetch.
func (c *roleCreds) refreshIf(ctx context.Context, force bool) (*Credentials, error) {
	c.mu.Lock()
	if cr := c.cur; !force && c.inflight == nil && c.valid(cr) {
		c.mu.Unlock()
		return cr, nil
	}
	call := c.inflight
	if call == nil {
		call = &fetchCall{done: make(chan struct{})}
		c.inflight = call
		go c.doFetch(call)
	}
	c.mu.Unlock()
	select {
	case <-call.done:
		return call.creds, call.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (c *roleCreds) doFetch(call *fetchCall) {
	ctx := c.bg
	if ctx == nil {
		ctx = context.Background()
	}
	creds, err := c.fetch(ctx)
	c.mu.Lock()
	if err == nil {
		c.cur, c.lastErr = creds, nil
	} else {
		c.lastErr = err
	}
	c.lastTry = c.now()
	c.inflight = nil
	call.creds, call.err = creds, err
	c.mu.Unlock()
	close(call.done)
	if ctx.Err() != nil {
		return
	}
	audit := c.audit
	if audit == nil {
		audit = c.log
	}
	if err == nil {
		audit.Info("credentials fetched from STS", "role", c.roleARN, "session", c.session,
			"accessKeyId", creds.AccessKeyID, "expiration", creds.Expiration)
	} else {
		audit.Warn("credential fetch from STS failed", "role", c.roleARN, "session", c.session, "err", err)
	}
}

// start runs the fetch-and-refresh loop until stop; the first fetch starts
// at once (wait on c.first for it).
func (c *roleCreds) start() {
	c.bg, c.cancel = context.WithCancel(context.Background())
	c.first, c.done, c.wake = make(chan struct{}), make(chan struct{}), make(chan struct{}, 1)
	go c.run(c.bg)
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
	for first := true; ; first = false {
		// The first fetch may have been made already by a caller (the
		// secrets hook): not again.
		next, err := c.refreshIf(ctx, !first)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			failures = 0
		} else {
			failures++
		}
		select {
		case <-c.first:
		default:
			close(c.first)
		}
		t := time.NewTimer(c.nextWait(next, failures))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		case <-c.wake:
			// An on-demand fetch failed: start backing off from there.
			t.Stop()
			failures++
			t = time.NewTimer(c.nextWait(nil, failures))
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		}
	}
}

// nextWait is when to fetch again: well before expiry after a success
// (RefreshBefore ahead, or at half the remaining life if that is sooner),
// exponential backoff with jitter after failures.
func (c *roleCreds) nextWait(cur *Credentials, failures int) time.Duration {
	if failures == 0 && cur != nil {
		life := cur.Expiration.Sub(c.now())
		return max(min(life-c.before, life/2), minBackoff)
	}
	return stsBackoff.Delay(max(failures, 1))
}

// valid says whether cr may be served: not in its last minute (or last
// quarter of a shorter life). Call with c.mu held.
func (c *roleCreds) valid(cr *Credentials) bool {
	return cr != nil && c.now().Before(cr.Expiration.Add(-min(expirySlack, cr.Expiration.Sub(cr.LastUpdated)/4)))
}

// get returns valid credentials or an error wrapping ErrNoCredentials.
// Valid ones are served at once. Without them (the first fetch is still
// under way after a restart, or the last ones expired) the caller queues on
// a fetch, the one in flight or a new one, bounded by ctx; a fetch that
// failed less than minBackoff ago is answered with its error instead, so
// callers cannot drive STS faster than the backoff.
func (c *roleCreds) get(ctx context.Context) (*Credentials, error) {
	c.mu.Lock()
	if cr := c.cur; c.valid(cr) {
		c.mu.Unlock()
		return cr, nil
	}
	if c.inflight == nil && c.lastErr != nil && c.now().Sub(c.lastTry) < minBackoff {
		err := c.lastErr
		c.mu.Unlock()
		return nil, fmt.Errorf("%w: %w", ErrNoCredentials, err)
	}
	c.mu.Unlock()
	cr, err := c.refreshIf(ctx, false)
	if err != nil {
		if ctx.Err() == nil {
			select {
			case c.wake <- struct{}{}:
			default:
			}
		}
		return nil, fmt.Errorf("%w: %w", ErrNoCredentials, err)
	}
	return cr, nil
}
