package lb

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	elbv2 "github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2"
	"github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2/types"
	"github.com/aws/smithy-go"
	"golang.org/x/time/rate"

	"github.com/titus-agent/titus-agent/pkg/backoff"
	"github.com/titus-agent/titus-agent/pkg/scheduler/core"
)

// API is the part of the ELBv2 client this package calls
// (*elasticloadbalancingv2.Client implements it).
type API interface {
	RegisterTargets(ctx context.Context, in *elbv2.RegisterTargetsInput, opts ...func(*elbv2.Options)) (*elbv2.RegisterTargetsOutput, error)
	DeregisterTargets(ctx context.Context, in *elbv2.DeregisterTargetsInput, opts ...func(*elbv2.Options)) (*elbv2.DeregisterTargetsOutput, error)
	DescribeTargetHealth(ctx context.Context, in *elbv2.DescribeTargetHealthInput, opts ...func(*elbv2.Options)) (*elbv2.DescribeTargetHealthOutput, error)
	DescribeTargetGroupAttributes(ctx context.Context, in *elbv2.DescribeTargetGroupAttributesInput, opts ...func(*elbv2.Options)) (*elbv2.DescribeTargetGroupAttributesOutput, error)
	DescribeTargetGroups(ctx context.Context, in *elbv2.DescribeTargetGroupsInput, opts ...func(*elbv2.Options)) (*elbv2.DescribeTargetGroupsOutput, error)
}

// maxBatch is the most targets per Register/DeregisterTargets call.
const maxBatch = 500

// LoadBalancers implements core.LoadBalancers over API.
type LoadBalancers struct{ api API }

// New wraps an ELBv2 client.
func New(api API) *LoadBalancers { return &LoadBalancers{api: api} }

var _ core.LoadBalancers = (*LoadBalancers)(nil)

func descriptions(ts []core.Target) []types.TargetDescription {
	out := make([]types.TargetDescription, len(ts))
	for i, t := range ts {
		out[i] = types.TargetDescription{Id: aws.String(t.IP), Port: aws.Int32(int32(t.Port))}
	}
	return out
}

// Register implements core.LoadBalancers.
func (l *LoadBalancers) Register(ctx context.Context, arn string, ts []core.Target) error {
	for len(ts) > 0 {
		n := min(len(ts), maxBatch)
		if _, err := l.api.RegisterTargets(ctx, &elbv2.RegisterTargetsInput{TargetGroupArn: aws.String(arn), Targets: descriptions(ts[:n])}); err != nil {
			return fmt.Errorf("register %d targets in %s: %w", n, arn, err)
		}
		ts = ts[n:]
	}
	return nil
}

// Deregister implements core.LoadBalancers. A target not in the group is
// not an error: when a batch is refused for one (InvalidTarget), the
// targets are deregistered one by one, skipping those.
func (l *LoadBalancers) Deregister(ctx context.Context, arn string, ts []core.Target) error {
	for len(ts) > 0 {
		n := min(len(ts), maxBatch)
		if err := l.deregister(ctx, arn, ts[:n]); err != nil {
			return err
		}
		ts = ts[n:]
	}
	return nil
}

func (l *LoadBalancers) deregister(ctx context.Context, arn string, ts []core.Target) error {
	_, err := l.api.DeregisterTargets(ctx, &elbv2.DeregisterTargetsInput{TargetGroupArn: aws.String(arn), Targets: descriptions(ts)})
	if err == nil {
		return nil
	}
	if !isInvalidTarget(err) {
		return fmt.Errorf("deregister %d targets from %s: %w", len(ts), arn, err)
	}
	if len(ts) == 1 {
		return nil // not registered: what was asked
	}
	for _, t := range ts {
		if err := l.deregister(ctx, arn, []core.Target{t}); err != nil {
			return err
		}
	}
	return nil
}

func isInvalidTarget(err error) bool {
	var it *types.InvalidTargetException
	if errors.As(err, &it) {
		return true
	}
	var ae smithy.APIError
	return errors.As(err, &ae) && ae.ErrorCode() == "InvalidTarget"
}

// Targets implements core.LoadBalancers.
func (l *LoadBalancers) Targets(ctx context.Context, arn string) ([]core.TargetHealth, error) {
	out, err := l.api.DescribeTargetHealth(ctx, &elbv2.DescribeTargetHealthInput{TargetGroupArn: aws.String(arn)})
	if err != nil {
		return nil, fmt.Errorf("describe targets of %s: %w", arn, err)
	}
	var hs []core.TargetHealth
	for _, d := range out.TargetHealthDescriptions {
		if d.Target == nil || d.Target.Id == nil {
			continue
		}
		h := core.TargetHealth{Target: core.Target{IP: *d.Target.Id}}
		if d.Target.Port != nil {
			h.Port = uint32(*d.Target.Port)
		}
		if d.TargetHealth != nil {
			h.State = string(d.TargetHealth.State)
			h.Reason = string(d.TargetHealth.Reason)
			h.Description = aws.ToString(d.TargetHealth.Description)
		}
		hs = append(hs, h)
	}
	return hs, nil
}

// DeregistrationDelay implements core.LoadBalancers (AWS's default, 300 s,
// when the group does not say).
func (l *LoadBalancers) DeregistrationDelay(ctx context.Context, arn string) (time.Duration, error) {
	out, err := l.api.DescribeTargetGroupAttributes(ctx, &elbv2.DescribeTargetGroupAttributesInput{TargetGroupArn: aws.String(arn)})
	if err != nil {
		return 0, fmt.Errorf("describe attributes of %s: %w", arn, err)
	}
	for _, a := range out.Attributes {
		if aws.ToString(a.Key) == "deregistration_delay.timeout_seconds" {
			s, err := strconv.Atoi(aws.ToString(a.Value))
			if err != nil || s < 0 {
				return 0, fmt.Errorf("target group %s: deregistration_delay.timeout_seconds %q: not a number of seconds", arn, aws.ToString(a.Value))
			}
			return time.Duration(s) * time.Second, nil
		}
	}
	return DefaultDeregistrationDelay, nil
}

// TargetType implements core.LoadBalancers: the group's target type, or
// core.ErrNoTargetGroup.
func (l *LoadBalancers) TargetType(ctx context.Context, arn string) (string, error) {
	out, err := l.api.DescribeTargetGroups(ctx, &elbv2.DescribeTargetGroupsInput{TargetGroupArns: []string{arn}})
	var nf *types.TargetGroupNotFoundException
	var ae smithy.APIError
	if errors.As(err, &nf) || (errors.As(err, &ae) && ae.ErrorCode() == "TargetGroupNotFound") {
		return "", fmt.Errorf("%s: %w", arn, core.ErrNoTargetGroup)
	}
	if err != nil {
		return "", fmt.Errorf("describe target group %s: %w", arn, err)
	}
	for _, g := range out.TargetGroups {
		if aws.ToString(g.TargetGroupArn) == arn {
			return string(g.TargetType), nil
		}
	}
	return "", fmt.Errorf("%s: %w", arn, core.ErrNoTargetGroup)
}

// DefaultDeregistrationDelay is ELBv2's default deregistration delay.
const DefaultDeregistrationDelay = 300 * time.Second

// Config builds the ELBv2 client.
type Config struct {
	// Region of the target groups.
	Region string
	// Endpoint overrides the ELBv2 endpoint (moto in tests). Empty means AWS.
	Endpoint string
	// AccessKeyID/SecretAccessKey, when set, are static credentials;
	// otherwise the SDK's default chain is used.
	AccessKeyID     string
	SecretAccessKey string
	// RatePerSecond and Burst size the client-side token bucket every
	// request (retries included) waits on. Zero: 10/s, burst 20.
	RatePerSecond float64
	Burst         int
	// MaxAttempts per call, including the first. Zero: 8.
	MaxAttempts int
	// BaseDelay and MaxDelay shape the backoff of throttled and failed
	// attempts (full jitter). Zero: 200ms and 10s.
	BaseDelay, MaxDelay time.Duration
}

// NewClient builds an ELBv2 client with the retry and pacing of Config.
func NewClient(ctx context.Context, c Config) (*elbv2.Client, error) {
	if c.RatePerSecond <= 0 {
		c.RatePerSecond = 10
	}
	if c.Burst <= 0 {
		c.Burst = 20
	}
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = 8
	}
	if c.BaseDelay <= 0 {
		c.BaseDelay = 200 * time.Millisecond
	}
	if c.MaxDelay <= 0 {
		c.MaxDelay = 10 * time.Second
	}
	if c.Region == "" {
		return nil, errors.New("load balancers: region is required")
	}
	opts := []func(*config.LoadOptions) error{
		config.WithRegion(c.Region),
		config.WithRetryer(func() aws.Retryer {
			return retry.NewStandard(func(o *retry.StandardOptions) {
				o.MaxAttempts = c.MaxAttempts
				o.MaxBackoff = c.MaxDelay
				o.Backoff = jitter{backoff.Policy{Base: c.BaseDelay, Max: c.MaxDelay, Jitter: backoff.Full}}
				o.RateLimiter = ratelimit.None // the token bucket paces us instead
			})
		}),
	}
	if c.AccessKeyID != "" {
		opts = append(opts, config.WithCredentialsProvider(credentials.NewStaticCredentialsProvider(c.AccessKeyID, c.SecretAccessKey, "")))
	}
	cfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("aws config: %w", err)
	}
	var next interface {
		Do(*http.Request) (*http.Response, error)
	} = http.DefaultClient
	if cfg.HTTPClient != nil {
		next = cfg.HTTPClient
	}
	cfg.HTTPClient = &paced{lim: rate.NewLimiter(rate.Limit(c.RatePerSecond), c.Burst), next: next}
	return elbv2.NewFromConfig(cfg, func(o *elbv2.Options) {
		if c.Endpoint != "" {
			o.BaseEndpoint = aws.String(c.Endpoint)
		}
	}), nil
}

// jitter is the SDK retryer's backoff from a backoff.Policy.
type jitter struct{ p backoff.Policy }

func (j jitter) BackoffDelay(attempt int, _ error) (time.Duration, error) {
	return j.p.Delay(attempt), nil
}

// paced waits on the shared limiter before every HTTP attempt.
type paced struct {
	lim  *rate.Limiter
	next interface {
		Do(*http.Request) (*http.Response, error)
	}
}

func (p *paced) Do(r *http.Request) (*http.Response, error) {
	if err := p.lim.Wait(r.Context()); err != nil {
		return nil, err
	}
	return p.next.Do(r)
}
