package metadataproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	ststypes "github.com/aws/aws-sdk-go-v2/service/sts/types"
	"github.com/google/go-cmp/cmp"
	"golang.org/x/time/rate"

	"github.com/titus-agent/titus-agent/pkg/task"
)

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

func newCreds(st assumer, clk func() time.Time, lim *rate.Limiter) *roleCreds {
	if lim == nil {
		lim = rate.NewLimiter(rate.Inf, 1)
	}
	return &roleCreds{sts: st, limiter: lim, roleARN: "arn:aws:iam::123456789012:role/app", session: "task-1",
		duration: time.Hour, before: 15 * time.Minute, log: discard, now: clk}
}

// A host clock two hours ahead of STS: every session STS hands out looks
// expired at birth on the local clock. The lifetime STS granted still
// counts: one fetch, keys served, the next refresh half an hour away.
func TestCredentialsHostClockAheadOfSTS(t *testing.T) {
	stsClock := &clock{t: time.Unix(1_800_000_000, 0)}
	host := &clock{t: stsClock.now().Add(2 * time.Hour)}
	st := &fakeSTS{now: stsClock.now, life: time.Hour}
	c := newCreds(st, host.now, nil)
	want := host.now().Add(time.Hour)
	for range 5 {
		cr, err := c.get(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if !cr.Expiration.Equal(want) {
			t.Errorf("expiration on the host clock = %v, want %v", cr.Expiration, want)
		}
		host.add(time.Second)
		stsClock.add(time.Second)
	}
	if n := st.callCount(); n != 1 {
		t.Errorf("AssumeRole calls = %d, want 1 (no re-assume every second)", n)
	}
	if w := c.nextWait(c.cur, 0); w < 29*time.Minute {
		t.Errorf("next refresh in %v, want about 30m", w)
	}
}

// stsServer answers AssumeRole like STS, with its own clock in the Date
// header, and records the forms it was sent.
type stsServer struct {
	mu    sync.Mutex
	forms []url.Values
	now   func() time.Time
	life  time.Duration
}

func (s *stsServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		http.Error(w, err.Error(), 400)
		return
	}
	s.mu.Lock()
	s.forms = append(s.forms, r.PostForm)
	s.mu.Unlock()
	now := s.now()
	w.Header().Set("Date", now.UTC().Format(http.TimeFormat))
	w.Header().Set("Content-Type", "text/xml")
	fmt.Fprintf(w, `<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleResult>
<Credentials><AccessKeyId>ASIATEST</AccessKeyId><SecretAccessKey>s</SecretAccessKey><SessionToken>t</SessionToken>
<Expiration>%s</Expiration></Credentials>
<AssumedRoleUser><Arn>arn:aws:sts::123456789012:assumed-role/app/task-1</Arn><AssumedRoleId>AROA:task-1</AssumedRoleId></AssumedRoleUser>
</AssumeRoleResult><ResponseMetadata><RequestId>r</RequestId></ResponseMetadata></AssumeRoleResponse>`,
		now.Add(s.life).UTC().Format(time.RFC3339))
}

func newSTSClient(url string) *sts.Client {
	return sts.New(sts.Options{Region: "us-east-1", BaseEndpoint: aws.String(url),
		Credentials: credentials.NewStaticCredentialsProvider("AKIDHOST", "secret", "")})
}

// Through the real SDK: STS's Date header says how long the session lives
// on STS's clock (here 15 minutes, less than asked), whatever the host
// clock says; the session tags and SourceIdentity are on the wire.
func TestCredentialsLifetimeFromSTSDate(t *testing.T) {
	stsNow := time.Now().Truncate(time.Second)
	srv := &stsServer{now: func() time.Time { return stsNow }, life: 15 * time.Minute}
	ts := httptest.NewServer(srv)
	defer ts.Close()
	host := &clock{t: stsNow.Add(3 * time.Hour)}
	c := newCreds(newSTSClient(ts.URL), host.now, nil)
	spec := &task.Spec{ID: "job-1.0.1", OwnerEmail: "team+x@example.com",
		Labels: map[string]string{task.LabelApplication: "billing", task.LabelJobID: "job-1", task.LabelSubmitter: "team+x@example.com", "other": "x"}}
	c.tags, c.sourceIdentity = sessionTags(spec), sessionName(spec.ID)
	cr, err := c.get(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if want := host.now().Add(15 * time.Minute); !cr.Expiration.Equal(want) {
		t.Errorf("expiration = %v, want %v (STS's 15m on the host clock)", cr.Expiration, want)
	}
	got := map[string]string{}
	for k, v := range srv.forms[0] {
		got[k] = v[0]
	}
	want := map[string]string{
		"Action": "AssumeRole", "Version": "2011-06-15", "RoleArn": "arn:aws:iam::123456789012:role/app",
		"RoleSessionName": "task-1", "DurationSeconds": "3600", "SourceIdentity": "job-1.0.1",
		"Tags.member.1.Key": TagApplication, "Tags.member.1.Value": "billing",
		"Tags.member.2.Key": TagJob, "Tags.member.2.Value": "job-1",
		"Tags.member.3.Key": TagSubmitter, "Tags.member.3.Value": "team+x@example.com",
		"Tags.member.4.Key": TagTask, "Tags.member.4.Value": "job-1.0.1",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("AssumeRole form (-want +got):\n%s", diff)
	}
}

func TestSessionTags(t *testing.T) {
	tag := func(k, v string) ststypes.Tag { return ststypes.Tag{Key: aws.String(k), Value: aws.String(v)} }
	for _, tt := range []struct {
		name string
		spec task.Spec
		want []ststypes.Tag
	}{
		{"all", task.Spec{ID: "j.0.1", OwnerEmail: "o@example.com", Labels: map[string]string{task.LabelApplication: "app", task.LabelJobID: "j", task.LabelSubmitter: "a@example.com"}},
			[]ststypes.Tag{tag(TagApplication, "app"), tag(TagJob, "j"), tag(TagSubmitter, "a@example.com"), tag(TagTask, "j.0.1")}},
		// A hand-launched task has no job labels: the tags are left out,
		// and a trust policy requiring them refuses it. The owner email is
		// the submitter's claim, never a tag.
		{"no job", task.Spec{ID: "t", OwnerEmail: "a@example.com"},
			[]ststypes.Tag{tag(TagTask, "t")}},
		{"odd characters", task.Spec{ID: "t", Labels: map[string]string{task.LabelSubmitter: "a b\"<x>@example.com"}},
			[]ststypes.Tag{tag(TagSubmitter, "a b__x_@example.com"), tag(TagTask, "t")}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, sessionTags(&tt.spec), cmp.Comparer(func(a, b ststypes.Tag) bool {
				return aws.ToString(a.Key) == aws.ToString(b.Key) && aws.ToString(a.Value) == aws.ToString(b.Value)
			})); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

// Many callers without credentials (an agent restart): one STS call, all
// of them served.
func TestCredentialsCallersShareOneFetch(t *testing.T) {
	clk := &clock{t: time.Unix(1_800_000_000, 0)}
	st := &fakeSTS{now: clk.now, life: time.Hour}
	c := newCreds(st, clk.now, nil)
	var wg sync.WaitGroup
	errs := make(chan error, 50)
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := c.get(context.Background()); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := st.callCount(); n != 1 {
		t.Errorf("AssumeRole calls = %d, want 1", n)
	}
}

// After a restart, tasks beyond the STS limiter's burst queue for their
// turn instead of failing at once (the limiter's wait used to share the
// fetch timeout, and a wait past it failed without waiting).
func TestCredentialsQueueBeyondLimiterBurst(t *testing.T) {
	defer func(d time.Duration) { fetchTimeout = d }(fetchTimeout)
	fetchTimeout = 200 * time.Millisecond
	clk := &clock{t: time.Unix(1_800_000_000, 0)}
	st := &fakeSTS{now: clk.now, life: time.Hour}
	lim := rate.NewLimiter(10, 1) // the 5th waits 400ms, past fetchTimeout
	var wg sync.WaitGroup
	errs := make(chan error, 6)
	for i := range 6 {
		c := newCreds(st, clk.now, lim)
		c.session = fmt.Sprint("task-", i)
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if _, err := c.get(ctx); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := st.callCount(); n != 6 {
		t.Errorf("AssumeRole calls = %d, want 6", n)
	}
}

// Expired credentials are fetched on demand; a failed fetch is not retried
// by every caller (the backoff holds), and the error says why.
func TestCredentialsOnDemandRefreshBacksOff(t *testing.T) {
	clk := &clock{t: time.Unix(1_800_000_000, 0)}
	st := &fakeSTS{now: clk.now, life: time.Hour}
	c := newCreds(st, clk.now, nil)
	if _, err := c.get(context.Background()); err != nil {
		t.Fatal(err)
	}
	clk.add(2 * time.Hour) // expired, and the background refresh did not run
	st.setFail(true)
	for range 10 {
		if _, err := c.get(context.Background()); !errors.Is(err, ErrNoCredentials) {
			t.Fatalf("get = %v, want ErrNoCredentials", err)
		}
	}
	if n := st.callCount(); n != 2 {
		t.Errorf("AssumeRole calls = %d, want 2 (one on demand, then backoff)", n)
	}
	clk.add(minBackoff)
	st.setFail(false)
	cr, err := c.get(context.Background())
	if err != nil || cr.AccessKeyID != "ASIAXX" {
		t.Fatalf("after the backoff: %v, %v", cr, err)
	}
}
