package ecrauth

import (
	"context"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ecr"
	"github.com/aws/aws-sdk-go-v2/service/ecr/types"
	"github.com/google/go-cmp/cmp"

	"github.com/titus-agent/titus-agent/pkg/runtime"
)

// fakeECR records the calls and hands out token N (password pwN) valid
// for life.
type fakeECR struct {
	region string
	calls  *[]string
	life   time.Duration
	now    func() time.Time
	err    error
}

func (f fakeECR) GetAuthorizationToken(ctx context.Context, in *ecr.GetAuthorizationTokenInput, _ ...func(*ecr.Options)) (*ecr.GetAuthorizationTokenOutput, error) {
	*f.calls = append(*f.calls, f.region+":"+strings.Join(in.RegistryIds, ","))
	if f.err != nil {
		return nil, f.err
	}
	n := len(*f.calls)
	tok := base64.StdEncoding.EncodeToString([]byte("AWS:pw" + string(rune('0'+n))))
	return &ecr.GetAuthorizationTokenOutput{AuthorizationData: []types.AuthorizationData{{
		AuthorizationToken: aws.String(tok), ExpiresAt: aws.Time(f.now().Add(f.life)),
	}}}, nil
}

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func newTest(t *testing.T, life time.Duration, cfg Config) (*Provider, *[]string, *clock) {
	t.Helper()
	calls := &[]string{}
	c := &clock{t: time.Date(2026, 12, 3, 9, 0, 0, 0, time.UTC)}
	cfg.Now = c.now
	cfg.Client = func(region string) API { return fakeECR{region: region, calls: calls, life: life, now: c.now} }
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return p, calls, c
}

// TestMatchIsExact is the attack of a task naming a registry that looks
// like ECR: only a whole ECR host gets the host's token.
func TestMatchIsExact(t *testing.T) {
	p, _, _ := newTest(t, 12*time.Hour, Config{})
	tests := []struct {
		host            string
		account, region string
		ok              bool
	}{
		{"123456789012.dkr.ecr.us-east-1.amazonaws.com", "123456789012", "us-east-1", true},
		{"123456789012.dkr.ecr.EU-WEST-1.amazonaws.com", "123456789012", "eu-west-1", true},
		{"123456789012.dkr.ecr-fips.us-gov-west-1.amazonaws.com", "123456789012", "us-gov-west-1", true},
		{"123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn", "123456789012", "cn-north-1", true},
		{"123456789012.dkr.ecr.us-east-1.amazonaws.com.evil.com", "", "", false},
		{"evil.com", "", "", false},
		{"evil.com/123456789012.dkr.ecr.us-east-1.amazonaws.com", "", "", false},
		{"x123456789012.dkr.ecr.us-east-1.amazonaws.com", "", "", false},
		{"123456789012.dkr.ecr.us-east-1.amazonaws.com:443", "", "", false},
		{"123456789012.dkr.ecrXus-east-1.amazonaws.com", "", "", false},
		{"123456789012.dkr.ecr.us-east-1.amazonawsXcom", "", "", false},
		{"123456789012.dkr.ecr.us-east-1.amazonaws.com\n", "", "", false},
		{"evil.123456789012.dkr.ecr.us-east-1.amazonaws.com", "", "", false},
	}
	for _, tt := range tests {
		a, r, ok := p.Match(tt.host)
		if a != tt.account || r != tt.region || ok != tt.ok {
			t.Errorf("Match(%q) = %q, %q, %v; want %q, %q, %v", tt.host, a, r, ok, tt.account, tt.region, tt.ok)
		}
	}
}

// TestPatternAnchored: a configured pattern without anchors still matches
// whole hosts only.
func TestPatternAnchored(t *testing.T) {
	p, calls, _ := newTest(t, 12*time.Hour, Config{HostPattern: `127\.0\.0\.1:(?P<account>[0-9]+)`, Region: "us-west-2"})
	if a, r, ok := p.Match("127.0.0.1:5000"); !ok || a != "5000" || r != "us-west-2" {
		t.Errorf("Match = %q %q %v", a, r, ok)
	}
	for _, h := range []string{"evil.127.0.0.1:5000", "127.0.0.1:5000.evil", "x127.0.0.1:5000"} {
		if _, ok, err := p.Credentials(context.Background(), h); ok || err != nil {
			t.Errorf("Credentials(%q) = %v, %v; want none", h, ok, err)
		}
	}
	if len(*calls) != 0 {
		t.Errorf("ECR called for foreign hosts: %v", *calls)
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	cl := func(string) API { return nil }
	for _, c := range []Config{
		{HostPattern: "(", Client: cl},
		{HostPattern: `127\.0\.0\.1:5000`, Client: cl}, // no region anywhere
		{},
	} {
		if _, err := New(c); err == nil {
			t.Errorf("New(%+v) accepted", c)
		}
	}
}

// TestCachedUntilRefreshBefore: one fetch per account and region while the
// token has more than RefreshBefore left; a new one before a pull would use
// a token near its expiry (or past it).
func TestCachedUntilRefreshBefore(t *testing.T) {
	p, calls, c := newTest(t, 12*time.Hour, Config{RefreshBefore: time.Hour})
	ctx := context.Background()
	get := func(host string) runtime.Auth {
		t.Helper()
		a, ok, err := p.Credentials(ctx, host)
		if err != nil || !ok {
			t.Fatalf("Credentials(%s) = %v, %v", host, ok, err)
		}
		return a
	}
	east := "111111111111.dkr.ecr.us-east-1.amazonaws.com"
	west := "111111111111.dkr.ecr.us-west-2.amazonaws.com"
	other := "222222222222.dkr.ecr.us-east-1.amazonaws.com"
	if a := get(east); a != (runtime.Auth{Username: "AWS", Password: "pw1"}) {
		t.Errorf("first token %+v", a)
	}
	get(east)
	c.t = c.t.Add(10*time.Hour + 59*time.Minute) // 1h01m left: still good
	get(east)
	get(west)
	get(other)
	c.t = c.t.Add(2 * time.Minute) // 59m left: fetched anew before use
	if a := get(east); a.Password != "pw4" {
		t.Errorf("near-expiry token not refreshed: %+v", a)
	}
	c.t = c.t.Add(24 * time.Hour) // long expired
	get(east)
	want := []string{"us-east-1:111111111111", "us-west-2:111111111111", "us-east-1:222222222222", "us-east-1:111111111111", "us-east-1:111111111111"}
	if d := cmp.Diff(want, *calls); d != "" {
		t.Errorf("ECR calls (-want +got):\n%s", d)
	}
}

// TestExpiredOnArrival: a token that is already expired when it comes
// (moto's) serves the pull that asked, and the next pull asks again.
func TestExpiredOnArrival(t *testing.T) {
	p, calls, _ := newTest(t, -time.Hour, Config{})
	for range 2 {
		if _, ok, err := p.Credentials(context.Background(), "111111111111.dkr.ecr.us-east-1.amazonaws.com"); !ok || err != nil {
			t.Fatal(ok, err)
		}
	}
	if len(*calls) != 2 {
		t.Errorf("calls = %v, want 2", *calls)
	}
}

func TestFetchError(t *testing.T) {
	calls := &[]string{}
	p, err := New(Config{Client: func(r string) API {
		return fakeECR{region: r, calls: calls, now: time.Now, err: errors.New("AccessDenied")}
	}})
	if err != nil {
		t.Fatal(err)
	}
	_, ok, err := p.Credentials(context.Background(), "111111111111.dkr.ecr.us-east-1.amazonaws.com")
	if ok || err == nil || !strings.Contains(err.Error(), "AccessDenied") {
		t.Errorf("Credentials = %v, %v", ok, err)
	}
}

// TestRefreshDue: tokens in use are fetched anew ahead of the pull that
// would need them; tokens no pull used for idle are dropped, not fetched.
func TestRefreshDue(t *testing.T) {
	p, calls, c := newTest(t, 12*time.Hour, Config{RefreshBefore: time.Hour})
	ctx := context.Background()
	east := "111111111111.dkr.ecr.us-east-1.amazonaws.com"
	west := "111111111111.dkr.ecr.us-west-2.amazonaws.com"
	for _, h := range []string{east, west} {
		if _, _, err := p.Credentials(ctx, h); err != nil {
			t.Fatal(err)
		}
	}
	c.t = c.t.Add(10 * time.Hour)
	if _, _, err := p.Credentials(ctx, east); err != nil { // east in use, west idle
		t.Fatal(err)
	}
	if n, err := p.RefreshDue(ctx, 24*time.Hour); n != 0 || err != nil {
		t.Fatalf("RefreshDue with 2h left = %d, %v", n, err)
	}
	c.t = c.t.Add(61 * time.Minute)
	if n, err := p.RefreshDue(ctx, 11*time.Hour); n != 1 || err != nil {
		t.Fatalf("RefreshDue near expiry = %d, %v; want east only (west idle 11h01m)", n, err)
	}
	a, _, err := p.Credentials(ctx, east)
	if err != nil || a.Password != "pw3" {
		t.Errorf("pull after the refresh got %+v, %v; want the refreshed token without a fetch", a, err)
	}
	want := []string{"us-east-1:111111111111", "us-west-2:111111111111", "us-east-1:111111111111"}
	if d := cmp.Diff(want, *calls); d != "" {
		t.Errorf("ECR calls (-want +got):\n%s", d)
	}
	if _, ok := p.tokens[registry{"111111111111", "us-west-2"}]; ok {
		t.Error("idle token kept")
	}
}
