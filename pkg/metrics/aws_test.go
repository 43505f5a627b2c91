package metrics

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// stsServer answers GetCallerIdentity with the given responses in turn.
func stsServer(t *testing.T, responses ...func(http.ResponseWriter)) *httptest.Server {
	t.Helper()
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		i := int(n.Add(1)) - 1
		if i >= len(responses) {
			t.Errorf("unexpected request %d", i+1)
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "text/xml")
		responses[i](w)
	}))
	t.Cleanup(srv.Close)
	return srv
}

func stsError(status int, code string) func(http.ResponseWriter) {
	return func(w http.ResponseWriter) {
		w.WriteHeader(status)
		_, _ = w.Write([]byte(`<ErrorResponse><Error><Type>Sender</Type><Code>` + code + `</Code><Message>no</Message></Error><RequestId>r</RequestId></ErrorResponse>`))
	}
}

func stsOK(w http.ResponseWriter) {
	_, _ = w.Write([]byte(`<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><GetCallerIdentityResult>` +
		`<Arn>arn:aws:iam::123456789012:user/t</Arn><UserId>T</UserId><Account>123456789012</Account>` +
		`</GetCallerIdentityResult><ResponseMetadata><RequestId>r</RequestId></ResponseMetadata></GetCallerIdentityResponse>`))
}

func TestAWSAPIOptionsCountsAttemptsAndThrottles(t *testing.T) {
	srv := stsServer(t,
		stsError(http.StatusBadRequest, "Throttling"), stsOK, // throttled, retried, ok
		stsError(http.StatusForbidden, "AccessDenied"), // not retried
	)
	reg := prometheus.NewPedanticRegistry()
	a := New(reg)
	client := sts.New(sts.Options{
		Region:       "us-east-1",
		BaseEndpoint: aws.String(srv.URL),
		Credentials:  credentials.NewStaticCredentialsProvider("AKID", "SECRET", ""),
		Retryer: retry.NewStandard(func(o *retry.StandardOptions) {
			o.Backoff = retry.BackoffDelayerFunc(func(int, error) (time.Duration, error) { return 0, nil })
			o.RateLimiter = ratelimit.None
		}),
		APIOptions: a.AWSAPIOptions(),
	})
	ctx := context.Background()
	if _, err := client.GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{}); err != nil {
		t.Fatalf("first call (throttled, then retried): %v", err)
	}
	if _, err := client.GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{}); err == nil {
		t.Fatal("second call: want AccessDenied")
	}
	want := `
# HELP titus_agent_aws_api_calls_total AWS API attempts by service, operation and outcome (ok, error, throttled).
# TYPE titus_agent_aws_api_calls_total counter
titus_agent_aws_api_calls_total{operation="GetCallerIdentity",outcome="error",service="STS"} 1
titus_agent_aws_api_calls_total{operation="GetCallerIdentity",outcome="ok",service="STS"} 1
titus_agent_aws_api_calls_total{operation="GetCallerIdentity",outcome="throttled",service="STS"} 1
# HELP titus_agent_aws_api_throttles_total Throttled AWS API attempts by service and operation.
# TYPE titus_agent_aws_api_throttles_total counter
titus_agent_aws_api_throttles_total{operation="GetCallerIdentity",service="STS"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "titus_agent_aws_api_calls_total", "titus_agent_aws_api_throttles_total"); err != nil {
		t.Error(err)
	}
}
