package lb

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	elbv2 "github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2"
	"github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2/types"
	"github.com/google/go-cmp/cmp"

	"github.com/titus-agent/titus-agent/pkg/scheduler/core"
)

// fakeAPI records every call as one line and answers from its fields.
type fakeAPI struct {
	calls []string
	// registered is the group's targets ("ip:port"); deregistering one
	// absent fails with InvalidTarget, as ELBv2 (and moto) do.
	registered map[string]bool
	health     []types.TargetHealthDescription
	attrs      []types.TargetGroupAttribute
	groups     map[string]types.TargetTypeEnum
	err        error
}

func targetsOf(ds []types.TargetDescription) string {
	s := ""
	for _, d := range ds {
		s += fmt.Sprintf(" %s:%d", aws.ToString(d.Id), aws.ToInt32(d.Port))
	}
	return s
}

func (f *fakeAPI) RegisterTargets(_ context.Context, in *elbv2.RegisterTargetsInput, _ ...func(*elbv2.Options)) (*elbv2.RegisterTargetsOutput, error) {
	f.calls = append(f.calls, "register "+aws.ToString(in.TargetGroupArn)+targetsOf(in.Targets))
	if f.err != nil {
		return nil, f.err
	}
	for _, d := range in.Targets {
		f.registered[fmt.Sprintf("%s:%d", aws.ToString(d.Id), aws.ToInt32(d.Port))] = true
	}
	return &elbv2.RegisterTargetsOutput{}, nil
}

func (f *fakeAPI) DeregisterTargets(_ context.Context, in *elbv2.DeregisterTargetsInput, _ ...func(*elbv2.Options)) (*elbv2.DeregisterTargetsOutput, error) {
	f.calls = append(f.calls, "deregister "+aws.ToString(in.TargetGroupArn)+targetsOf(in.Targets))
	if f.err != nil {
		return nil, f.err
	}
	for _, d := range in.Targets {
		k := fmt.Sprintf("%s:%d", aws.ToString(d.Id), aws.ToInt32(d.Port))
		if !f.registered[k] {
			return nil, &types.InvalidTargetException{Message: aws.String("not registered")}
		}
		delete(f.registered, k)
	}
	return &elbv2.DeregisterTargetsOutput{}, nil
}

func (f *fakeAPI) DescribeTargetHealth(_ context.Context, in *elbv2.DescribeTargetHealthInput, _ ...func(*elbv2.Options)) (*elbv2.DescribeTargetHealthOutput, error) {
	f.calls = append(f.calls, "describe "+aws.ToString(in.TargetGroupArn))
	return &elbv2.DescribeTargetHealthOutput{TargetHealthDescriptions: f.health}, f.err
}

func (f *fakeAPI) DescribeTargetGroupAttributes(_ context.Context, in *elbv2.DescribeTargetGroupAttributesInput, _ ...func(*elbv2.Options)) (*elbv2.DescribeTargetGroupAttributesOutput, error) {
	f.calls = append(f.calls, "attributes "+aws.ToString(in.TargetGroupArn))
	return &elbv2.DescribeTargetGroupAttributesOutput{Attributes: f.attrs}, f.err
}

func (f *fakeAPI) DescribeTargetGroups(_ context.Context, in *elbv2.DescribeTargetGroupsInput, _ ...func(*elbv2.Options)) (*elbv2.DescribeTargetGroupsOutput, error) {
	f.calls = append(f.calls, "groups "+strings.Join(in.TargetGroupArns, ","))
	if f.err != nil {
		return nil, f.err
	}
	var out []types.TargetGroup
	for _, arn := range in.TargetGroupArns {
		if typ, ok := f.groups[arn]; ok {
			out = append(out, types.TargetGroup{TargetGroupArn: aws.String(arn), TargetType: typ})
		} else {
			return nil, &types.TargetGroupNotFoundException{Message: aws.String("One or more target groups not found")}
		}
	}
	return &elbv2.DescribeTargetGroupsOutput{TargetGroups: out}, nil
}

const tg = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/web/0123456789abcdef"

func TestTargetType(t *testing.T) {
	inst := "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/inst/0123456789abcdef"
	gone := "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/gone/0123456789abcdef"
	f := &fakeAPI{groups: map[string]types.TargetTypeEnum{tg: types.TargetTypeEnumIp, inst: types.TargetTypeEnumInstance}}
	l := New(f)
	ctx := context.Background()
	if typ, err := l.TargetType(ctx, tg); err != nil || typ != "ip" {
		t.Errorf("ip group: %q, %v", typ, err)
	}
	if typ, err := l.TargetType(ctx, inst); err != nil || typ != "instance" {
		t.Errorf("instance group: %q, %v", typ, err)
	}
	if _, err := l.TargetType(ctx, gone); !errors.Is(err, core.ErrNoTargetGroup) {
		t.Errorf("missing group: %v, want ErrNoTargetGroup", err)
	}
	f.err = errors.New("AccessDenied")
	if _, err := l.TargetType(ctx, tg); err == nil || errors.Is(err, core.ErrNoTargetGroup) {
		t.Errorf("denied: %v, want the API's error", err)
	}
}

func TestRegisterDeregister(t *testing.T) {
	a := core.Target{IP: "198.18.0.10", Port: 8080}
	b := core.Target{IP: "198.18.0.11", Port: 8080}
	for _, tc := range []struct {
		name       string
		registered []string
		do         func(*LoadBalancers) error
		wantCalls  []string
		wantErr    bool
	}{
		{"register batches", nil, func(l *LoadBalancers) error { return l.Register(context.Background(), tg, []core.Target{a, b}) },
			[]string{"register " + tg + " 198.18.0.10:8080 198.18.0.11:8080"}, false},
		{"deregister registered", []string{"198.18.0.10:8080", "198.18.0.11:8080"},
			func(l *LoadBalancers) error { return l.Deregister(context.Background(), tg, []core.Target{a, b}) },
			[]string{"deregister " + tg + " 198.18.0.10:8080 198.18.0.11:8080"}, false},
		{"deregister one absent: one by one, absent skipped", []string{"198.18.0.11:8080"},
			func(l *LoadBalancers) error { return l.Deregister(context.Background(), tg, []core.Target{a, b}) },
			[]string{"deregister " + tg + " 198.18.0.10:8080 198.18.0.11:8080", "deregister " + tg + " 198.18.0.10:8080", "deregister " + tg + " 198.18.0.11:8080"}, false},
		{"deregister absent is no error", nil, func(l *LoadBalancers) error { return l.Deregister(context.Background(), tg, []core.Target{a}) },
			[]string{"deregister " + tg + " 198.18.0.10:8080"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeAPI{registered: map[string]bool{}}
			for _, r := range tc.registered {
				f.registered[r] = true
			}
			err := tc.do(New(f))
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error %v", err, tc.wantErr)
			}
			if diff := cmp.Diff(tc.wantCalls, f.calls); diff != "" {
				t.Errorf("calls (-want +got):\n%s", diff)
			}
		})
	}
}

func TestErrorsWrapped(t *testing.T) {
	denied := errors.New("AccessDenied")
	f := &fakeAPI{registered: map[string]bool{}, err: denied}
	l := New(f)
	if err := l.Register(context.Background(), tg, []core.Target{{IP: "198.18.0.10", Port: 80}}); !errors.Is(err, denied) {
		t.Errorf("register: %v", err)
	}
	if err := l.Deregister(context.Background(), tg, []core.Target{{IP: "198.18.0.10", Port: 80}}); !errors.Is(err, denied) {
		t.Errorf("deregister: %v", err)
	}
}

func TestTargetsAndDelay(t *testing.T) {
	f := &fakeAPI{health: []types.TargetHealthDescription{
		{Target: &types.TargetDescription{Id: aws.String("198.18.0.10"), Port: aws.Int32(80)}, TargetHealth: &types.TargetHealth{State: types.TargetHealthStateEnumHealthy}},
		{Target: &types.TargetDescription{Id: aws.String("198.18.0.11"), Port: aws.Int32(80)}, TargetHealth: &types.TargetHealth{State: types.TargetHealthStateEnumDraining}},
	}, attrs: []types.TargetGroupAttribute{{Key: aws.String("stickiness.enabled"), Value: aws.String("false")}, {Key: aws.String("deregistration_delay.timeout_seconds"), Value: aws.String("15")}}}
	l := New(f)
	got, err := l.Targets(context.Background(), tg)
	if err != nil {
		t.Fatal(err)
	}
	want := []core.TargetHealth{{Target: core.Target{IP: "198.18.0.10", Port: 80}, State: "healthy"}, {Target: core.Target{IP: "198.18.0.11", Port: 80}, State: core.Draining}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("targets (-want +got):\n%s", diff)
	}
	d, err := l.DeregistrationDelay(context.Background(), tg)
	if err != nil || d != 15*time.Second {
		t.Errorf("delay = %v, %v; want 15s", d, err)
	}
	f.attrs = nil
	if d, _ := l.DeregistrationDelay(context.Background(), tg); d != DefaultDeregistrationDelay {
		t.Errorf("delay without the attribute = %v, want the default", d)
	}
	f.attrs = []types.TargetGroupAttribute{{Key: aws.String("deregistration_delay.timeout_seconds"), Value: aws.String("soon")}}
	if _, err := l.DeregistrationDelay(context.Background(), tg); err == nil {
		t.Error("a malformed delay was accepted")
	}
}

// A throttled call is retried by the client with backoff, not failed.
func TestClientRetriesThrottling(t *testing.T) {
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		if r.Form.Get("Action") != "RegisterTargets" {
			http.Error(w, "unexpected "+url.QueryEscape(r.Form.Get("Action")), 500)
			return
		}
		if n.Add(1) <= 2 {
			w.WriteHeader(400)
			fmt.Fprint(w, `<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message></Error><RequestId>1</RequestId></ErrorResponse>`)
			return
		}
		fmt.Fprint(w, `<RegisterTargetsResponse xmlns="http://elasticloadbalancing.amazonaws.com/doc/2015-12-01/"><RegisterTargetsResult/><ResponseMetadata><RequestId>2</RequestId></ResponseMetadata></RegisterTargetsResponse>`)
	}))
	defer srv.Close()
	c, err := NewClient(context.Background(), Config{Region: "us-east-1", Endpoint: srv.URL, AccessKeyID: "x", SecretAccessKey: "y", BaseDelay: time.Millisecond, MaxDelay: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := New(c).Register(context.Background(), tg, []core.Target{{IP: "198.18.0.10", Port: 80}}); err != nil {
		t.Fatalf("register after two throttles: %v", err)
	}
	if got := n.Load(); got != 3 {
		t.Errorf("attempts = %d, want 3", got)
	}
}
