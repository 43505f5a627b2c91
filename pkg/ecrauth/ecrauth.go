// Package ecrauth gives image pulls from Amazon ECR registries their
// credentials: tokens from ecr:GetAuthorizationToken, fetched with the
// agent host's own AWS credentials, cached per registry account and region,
// and fetched anew once less than RefreshBefore of their life is left, so
// that no pull meets an expired token.
//
// A registry is ECR only when its whole host (host[:port] of the image
// reference) matches the host pattern: a name that merely contains an ECR
// host (evil.example/1234.dkr.ecr…, 1234.dkr.ecr….amazonaws.com.evil.example)
// gets nothing, so a task spec cannot make the agent hand the host's ECR
// token to a registry of its choosing.
package ecrauth

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ecr"
	"golang.org/x/sync/singleflight"

	"github.com/titus-agent/titus-agent/pkg/runtime"
)

// DefaultHostPattern matches ECR's private registries: account, optional
// FIPS endpoint, region, and the China partition's suffix.
const DefaultHostPattern = `(?P<account>[0-9]{12})\.dkr\.ecr(?:-fips)?\.(?P<region>[a-z]{2}(?:-[a-z]+)+-[0-9])\.amazonaws\.com(?:\.cn)?`

// DefaultRefreshBefore: ECR tokens live 12 hours; one with less than this
// left is fetched anew before a pull uses it.
const DefaultRefreshBefore = time.Hour

// API is the part of the ECR client the provider uses.
type API interface {
	GetAuthorizationToken(ctx context.Context, in *ecr.GetAuthorizationTokenInput, opts ...func(*ecr.Options)) (*ecr.GetAuthorizationTokenOutput, error)
}

// Config configures a Provider.
type Config struct {
	// HostPattern is a regular expression that must match a registry's
	// whole host[:port]; its named groups "account" and "region" (both
	// optional) say which registry's token to ask for. Empty:
	// DefaultHostPattern.
	HostPattern string
	// Region is the region of hosts whose match has no region group.
	Region string
	// RefreshBefore: a cached token with less life left is fetched anew.
	// Zero: DefaultRefreshBefore.
	RefreshBefore time.Duration
	// Client returns the ECR client of a region.
	Client func(region string) API
	// Now is the clock; nil: time.Now.
	Now func() time.Time
}

// Provider is a runtime.CredentialSource for ECR registries.
type Provider struct {
	cfg     Config
	pattern *regexp.Regexp
	acct    int // submatch index of "account", -1 when absent
	region  int

	mu     sync.Mutex
	tokens map[registry]token
	fetch  singleflight.Group
}

// registry is the cache key: one token per account and region.
type registry struct{ account, region string }

type token struct {
	auth    runtime.Auth
	expires time.Time
	used    time.Time // last handed to a pull
}

// New checks cfg and makes a provider.
func New(cfg Config) (*Provider, error) {
	if cfg.HostPattern == "" {
		cfg.HostPattern = DefaultHostPattern
	}
	if cfg.RefreshBefore <= 0 {
		cfg.RefreshBefore = DefaultRefreshBefore
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Client == nil {
		return nil, errors.New("ecrauth: no ECR client")
	}
	// Anchored on both ends whatever the pattern says: only a whole host
	// matches.
	re, err := regexp.Compile(`^(?:` + cfg.HostPattern + `)$`)
	if err != nil {
		return nil, fmt.Errorf("host pattern: %w", err)
	}
	p := &Provider{cfg: cfg, pattern: re, acct: re.SubexpIndex("account"), region: re.SubexpIndex("region"), tokens: map[registry]token{}}
	if p.region < 0 && cfg.Region == "" {
		return nil, errors.New("host pattern has no (?P<region>…) group and no region is configured")
	}
	return p, nil
}

// Match reports whether host is an ECR registry, and which.
func (p *Provider) Match(host string) (account, region string, ok bool) {
	m := p.pattern.FindStringSubmatch(strings.ToLower(host))
	if m == nil {
		return "", "", false
	}
	region = p.cfg.Region
	if p.region >= 0 && m[p.region] != "" {
		region = m[p.region]
	}
	if p.acct >= 0 {
		account = m[p.acct]
	}
	return account, region, true
}

// Credentials returns the ECR token of host's registry as basic auth
// (user AWS), from the cache while it has more than RefreshBefore left.
// Hosts that are not ECR get ok == false.
func (p *Provider) Credentials(ctx context.Context, host string) (runtime.Auth, bool, error) {
	account, region, ok := p.Match(host)
	if !ok {
		return runtime.Auth{}, false, nil
	}
	key := registry{account, region}
	if t, ok := p.cached(key, true); ok {
		return t.auth, true, nil
	}
	t, err := p.refresh(ctx, key)
	if err != nil {
		return runtime.Auth{}, false, fmt.Errorf("ECR token for %s: %w", host, err)
	}
	return t.auth, true, nil
}

// refresh fetches key's token once for all concurrent callers and caches it.
func (p *Provider) refresh(ctx context.Context, key registry) (token, error) {
	v, err, _ := p.fetch.Do(key.account+"/"+key.region, func() (any, error) {
		if t, ok := p.cached(key, false); ok { // a concurrent fetch just ended
			return t, nil
		}
		t, err := p.get(ctx, key)
		if err != nil {
			return nil, err
		}
		p.mu.Lock()
		t.used = p.tokens[key].used
		if t.used.IsZero() {
			t.used = p.cfg.Now()
		}
		p.tokens[key] = t
		p.mu.Unlock()
		return t, nil
	})
	if err != nil {
		return token{}, err
	}
	return v.(token), nil
}

// cached returns key's token if it has more than RefreshBefore left; use
// marks it used now.
func (p *Provider) cached(key registry, use bool) (token, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	t, ok := p.tokens[key]
	if !ok || !p.cfg.Now().Before(t.expires.Add(-p.cfg.RefreshBefore)) {
		return token{}, false
	}
	if use {
		t.used = p.cfg.Now()
		p.tokens[key] = t
	}
	return t, true
}

// RefreshDue fetches anew, ahead of any pull, the cached tokens that are
// within RefreshBefore of their expiry and that a pull used within idle;
// the others are dropped once idle. It returns how many it fetched.
func (p *Provider) RefreshDue(ctx context.Context, idle time.Duration) (int, error) {
	now := p.cfg.Now()
	var due []registry
	p.mu.Lock()
	for k, t := range p.tokens {
		switch {
		case now.Sub(t.used) > idle:
			delete(p.tokens, k)
		case !now.Before(t.expires.Add(-p.cfg.RefreshBefore)):
			due = append(due, k)
		}
	}
	p.mu.Unlock()
	var errs []error
	n := 0
	for _, k := range due {
		if _, err := p.refresh(ctx, k); err != nil {
			errs = append(errs, fmt.Errorf("ECR token of account %q in %s: %w", k.account, k.region, err))
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}

// Run calls RefreshDue every interval until ctx ends, so that pulls
// rarely wait on ECR; errors are reported to onErr.
func (p *Provider) Run(ctx context.Context, interval, idle time.Duration, onErr func(error)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if _, err := p.RefreshDue(ctx, idle); err != nil && ctx.Err() == nil && onErr != nil {
				onErr(err)
			}
		}
	}
}

// get asks ECR for the token of key's registry. Errors never hold the token.
func (p *Provider) get(ctx context.Context, key registry) (token, error) {
	in := &ecr.GetAuthorizationTokenInput{}
	if key.account != "" {
		in.RegistryIds = []string{key.account} //nolint:staticcheck // deprecated by AWS, still the way to name a registry of another account
	}
	out, err := p.cfg.Client(key.region).GetAuthorizationToken(ctx, in)
	if err != nil {
		return token{}, err
	}
	if len(out.AuthorizationData) == 0 {
		return token{}, errors.New("GetAuthorizationToken returned no authorization data")
	}
	d := out.AuthorizationData[0]
	raw, err := base64.StdEncoding.DecodeString(aws.ToString(d.AuthorizationToken))
	if err != nil {
		return token{}, errors.New("authorization token is not base64")
	}
	user, pass, ok := strings.Cut(string(raw), ":")
	if !ok || user == "" || pass == "" {
		return token{}, errors.New("authorization token is not user:password")
	}
	t := token{auth: runtime.Auth{Username: user, Password: pass}}
	if d.ExpiresAt != nil {
		t.expires = *d.ExpiresAt
	}
	return t, nil
}
